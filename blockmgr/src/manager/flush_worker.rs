//! The flush worker: takes batches off the flush queue (flush.rs), reads them from SSD and
//! stores them in Blob, retrying with back-off, up to `blob.flush_concurrency` batches at once.

use std::{
    collections::HashSet,
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use kvtier_tiers::{Block, BlockKey, Tier, TierExt, TierKind};

use crate::tasks::Tasks;

use super::{
    Inner, Role,
    flush::{DEMOTE_SCAN, Flusher, RETRY},
};
use crate::index::{Entry, TierSet};

/// Starts the flush task: it forms batches and runs up to `blob.flush_concurrency` of them
/// at once. Every task holds the manager weakly (strongly only while it works, not while
/// it waits), so all end once the manager is dropped; at shutdown the batch under way is
/// tried once more at most, and what is left stays unflushed on SSD for the next start.
pub(super) fn spawn_flusher(inner: &Arc<Inner>, flusher: Arc<Flusher>) {
    let weak: Weak<Inner> = Arc::downgrade(inner);
    let slots = Arc::new(tokio::sync::Semaphore::new(flusher.concurrency));
    let tasks = inner.tasks.clone();
    inner.tasks.spawn(async move {
        while let Some(Ok(slot)) = tasks.unless_stopped(slots.clone().acquire_owned()).await {
            let work = flusher.wake.notified();
            let Some(inner) = weak.upgrade() else { return };
            let batch = take_batch(&inner, &flusher).await;
            drop(inner);
            if batch.is_empty() {
                drop(slot);
                // Woken by new work; the timeout notices a dropped manager.
                let _ = tasks.unless_stopped(tokio::time::timeout(Duration::from_secs(1), work)).await;
                continue;
            }
            let (weak, flusher, stop) = (weak.clone(), flusher.clone(), tasks.clone());
            tasks.spawn(async move {
                let keys: Vec<BlockKey> = batch.iter().map(|(k, _)| k.clone()).collect();
                flush_batch(&weak, &flusher, &stop, batch).await;
                flusher.done(&keys);
                drop(slot);
            });
        }
    });
}

/// Reads a batch and stores it in Blob, retrying what fails with exponential backoff until
/// it succeeds or the manager is gone or shutting down (what is left then stays unflushed
/// on SSD, and the next start queues it again).
async fn flush_batch(weak: &Weak<Inner>, flusher: &Flusher, tasks: &Tasks, batch: Vec<(BlockKey, Entry)>) {
    let Some(inner) = weak.upgrade() else { return };
    let mut pending = read_batch(&inner, flusher, batch).await;
    drop(inner);
    if pending.is_empty() {
        // Nothing readable (every key moved or failed): do not spin on a requeue.
        tasks.pause(Duration::from_millis(100)).await;
        return;
    }
    let mut failures = 0u32;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        pending = flush_once(&inner, flusher, pending).await;
        drop(inner);
        if pending.is_empty() {
            return;
        }
        failures += 1;
        if !tasks.pause(RETRY.pause_after(failures)).await {
            return;
        }
    }
}

/// Up to a segment's worth of keys to flush. A batch short of a full segment waits for
/// more keys until `linger` after its first: with a backlog (Blob slower than the writes)
/// every segment is full, so a GiB costs the fewest PUTs.
async fn take_batch(inner: &Inner, flusher: &Flusher) -> Vec<(BlockKey, Entry)> {
    if !flusher.blob.is_loaded() {
        return Vec::new(); // nothing may be written before the replay (see spawn_blob_loader)
    }
    let mut batch = Vec::new();
    let mut bytes = 0;
    let mut deadline = None;
    loop {
        let more = flusher.wake.notified();
        fill_from_pressure(inner, flusher);
        let mut full = false;
        {
            let mut q = flusher.queue.lock();
            while let Some((key, _)) = q.keys.front().cloned() {
                let Some(entry) = inner.index.get(&key).filter(|e| wants_flush(inner, &key, e)) else {
                    q.keys.pop_front();
                    q.members.remove(&key);
                    q.deleted.remove(&key);
                    continue;
                };
                if !batch.is_empty() && bytes + entry.len > flusher.segment_size {
                    full = true;
                    break;
                }
                q.keys.pop_front(); // still a member until its batch is done
                bytes += entry.len;
                batch.push((key, entry));
            }
        }
        inner.metrics.flush_queue.set(flusher.backlog().0 as i64);
        if batch.is_empty() || full || bytes >= flusher.segment_size {
            return batch;
        }
        let deadline = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + flusher.linger);
        if tokio::time::Instant::now() >= deadline {
            return batch;
        }
        let _ = tokio::time::timeout_at(deadline, more).await;
    }
}

/// Whether `key` still needs to go to a segment in Blob: indexed locally, not in Blob,
/// flushable.
fn wants_flush(inner: &Inner, key: &BlockKey, e: &Entry) -> bool {
    !e.tiers.has(TierKind::Blob)
        && (e.tiers.has(TierKind::Cpu) || e.tiers.has(TierKind::Ssd))
        && inner.flushable(key)
        && !inner.exports().is_some_and(|exports| match inner.role(key) {
            // An object's chunks reach Blob in its file (objects/export.rs), never in
            // segments; a write-back manifest only once that file is there (a manifest in a
            // segment first would tell its export there is nothing left to do).
            Role::Piece => true,
            Role::Record => e.durable && !exports.is_exported(key),
            Role::Block => false,
        })
}

/// Queues, for each pressed size, the SSD blocks Blob lacks among the first `over` bytes of
/// what eviction takes next.
fn fill_from_pressure(inner: &Inner, flusher: &Flusher) {
    let pressed = std::mem::take(&mut flusher.queue.lock().pressed);
    let Some(ssd) = &inner.ssd else { return };
    for (len, over) in pressed {
        let mut covered = 0;
        // The order eviction will take them in (see Inner::evict_ssd): the SSD order's
        // victims of this size, then the tier's by layout.
        let pinned = |k: &BlockKey| inner.index.is_unflushed(k);
        let first = inner.ssd_victims_for(len, over.div_ceil(len.max(1)) as usize + 8, &|_| false);
        let seen: HashSet<BlockKey> = first.iter().cloned().collect();
        let then = ssd.eviction_candidates_keeping(len, DEMOTE_SCAN, &pinned).into_iter().filter(|k| !seen.contains(k));
        for key in first.iter().cloned().chain(then) {
            if covered >= over {
                break;
            }
            let Some(e) = inner.index.get(&key) else { continue };
            if e.unflushed() {
                // Write-back: its own flush (or its object's export) is queued, on the node
                // that flushes it; no other copy goes to Blob (each byte once). A copy
                // another owner flushes frees nothing here yet: look past it.
                if inner.flushes(&key) {
                    covered += e.len;
                    inner.queue_flush(key, true);
                }
            } else if e.tiers.has(TierKind::Ssd) && wants_flush(inner, &key, &e) {
                covered += e.len;
                flusher.enqueue(key);
            } else {
                covered += e.len; // in Blob already, or never going there: evictable as is
            }
        }
    }
}

/// The bytes of each key, from memory when there, else SSD. A key that moved meanwhile is
/// queued again; one whose only copy turned out damaged is gone (and said so).
async fn read_batch(inner: &Arc<Inner>, flusher: &Flusher, batch: Vec<(BlockKey, Entry)>) -> Vec<Block> {
    let reads = batch.into_iter().map(|(key, entry)| async move {
        let read = if entry.tiers.has(TierKind::Cpu) {
            inner.cpu.get(&key).await
        } else {
            inner.ssd.as_ref().expect("indexed on SSD implies an SSD tier").get(&key).await
        };
        (key, read)
    });
    let mut blocks = Vec::new();
    for (key, read) in futures::future::join_all(reads).await {
        match read {
            Ok(Some(block)) if inner.is_current(&block) => blocks.push(block),
            // Moved between tiers, deleted, replaced, or unreadable: look again if still wanted.
            other => {
                if let Err(e) = &other {
                    tracing::error!(%key, error = %e, "flush: reading the local copy failed");
                }
                inner.forget_vanished_ssd_copy(&key).await;
                if inner.index.get(&key).is_some_and(|e| wants_flush(inner, &key, &e)) {
                    flusher.requeue(key);
                }
            }
        }
    }
    blocks
}

/// One attempt to store `blocks` in Blob. Returns those still to store.
async fn flush_once(inner: &Arc<Inner>, flusher: &Flusher, mut blocks: Vec<Block>) -> Vec<Block> {
    let started = Instant::now();
    // Deleted (or stored again with other bytes) since the last attempt: not ours to write.
    blocks.retain(|b| inner.is_current(b));
    // Blob holding a key the index does not place there holds another version of it (left
    // by a delete that failed): Blob keeps the first copy of a key, so that one goes first.
    let keys: Vec<BlockKey> = blocks.iter().map(|b| b.key.clone()).collect();
    let held = flusher.blob.contains_batch(&keys).await.unwrap_or_default();
    let stale: Vec<BlockKey> = keys.into_iter().zip(held).filter(|(_, h)| *h).map(|(k, _)| k).collect();
    if !stale.is_empty() {
        tracing::warn!(blocks = stale.len(), "flush: replacing Blob copies of other versions of these keys");
        if let Some(Err(e)) = flusher.blob.delete_batch(&stale).await.into_iter().find(|r| r.is_err()) {
            *flusher.last_error.lock() = Some(e.to_string());
            inner.metrics.flush_errors.inc();
            return blocks;
        }
    }
    // Stored again: a delete held for an older copy of these keys must not take the new one.
    let keys: Vec<BlockKey> = blocks.iter().map(|b| b.key.clone()).collect();
    inner.blob_deletes.drop_keys(&keys).await;
    let results = flusher.blob.put_batch(&blocks).await;
    let mut failed = Vec::new();
    let mut stored = Vec::new();
    for (block, result) in blocks.into_iter().zip(results) {
        match result {
            Ok(_) => stored.push(block),
            Err(e) => {
                *flusher.last_error.lock() = Some(e.to_string());
                failed.push((block, e));
            }
        }
    }
    if let Some((_, e)) = failed.first() {
        inner.metrics.flush_errors.inc();
        tracing::warn!(blocks = failed.len(), error = %e, "flush to Blob failed; retrying with backoff");
    } else {
        *flusher.last_error.lock() = None;
    }
    // Counted before the index says so: whoever sees a block flushed sees it counted.
    let bytes: u64 = stored.iter().map(|b| b.len()).sum();
    inner.metrics.flushed_blocks.inc_by(stored.len() as u64);
    inner.metrics.flushed_bytes.inc_by(bytes);
    for block in &stored {
        inner.flushed(block, flusher.take_deleted(&block.key)).await;
    }
    inner.tell_owners_flushed(&stored);
    if !stored.is_empty() {
        inner.metrics.latency.with_label_values(&["flush_batch"]).observe(started.elapsed().as_secs_f64());
        flusher.progress.notify_waiters();
    }
    failed.into_iter().map(|(b, _)| b).collect()
}

impl Inner {
    /// Records that Blob holds `block`. One evicted while it was being flushed is indexed
    /// in Blob again (the demotion's point); one deleted, or stored again with other bytes,
    /// must not outlive that in Blob: its copy is deleted there.
    async fn flushed(&self, block: &Block, deleted: bool) {
        if let Some(exports) = self.exports() {
            exports.forget(&block.key); // a manifest: its export is done with
        }
        let _guard = self.locks.lock(&block.key).await;
        match self.index.get(&block.key) {
            Some(e) if self.is_current(block) => {
                self.index.set_tiers(&block.key, e.tiers.with(TierKind::Blob));
                if !e.durable {
                    self.metrics.demotions.with_label_values(&["ssd", "blob"]).inc();
                }
            }
            None if !deleted => {
                let entry = Entry::new(block.len(), block.crc32c, TierSet::of(TierKind::Blob));
                self.index.insert(block.key.clone(), entry);
                self.metrics.demotions.with_label_values(&["ssd", "blob"]).inc();
            }
            // Deleted (or replaced) while its flush was in flight: the copy just written goes,
            // held and retried if Blob refuses now.
            _ => self.delete_from_blob(&block.key).await,
        }
    }
}
