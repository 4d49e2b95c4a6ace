//! Write-back to the Blob tier: one queue, drained by one task in segment-sized batches
//! (a GiB of blocks costs a few PUTs, not one per block).
//!
//! Two kinds of blocks go through it:
//! - **write-back** blocks ([`Durability::WriteBack`]) are on SSD when acknowledged and are
//!   queued at once. Until Blob has them they are not evictable from SSD; the SSD slot
//!   header marks them, so after a `kill -9` those Blob lacks are queued again at start.
//! - **demoted** blocks: once SSD use passes `blob.demote_above`, the blocks SSD eviction
//!   would take next for the size being written (the SSD order's victims, then the tier's
//!   by region), as many bytes as use is over that mark, are copied to Blob ahead of their
//!   eviction, so eviction drops copies Blob holds.
//!   A cache block that eviction reaches first (the flush fell behind) is dropped as before:
//!   it is a cache.
//!
//! Namespaces configured `cache_only` never reach Blob. A failed batch is retried with
//! exponential backoff until it succeeds; meanwhile write-back puts go on until
//! `blob.max_unflushed` bytes wait, then wait up to `blob.flush_wait` and fail with
//! [`TierError::Backpressure`].
//!
//! [`Durability::WriteBack`]: super::Durability::WriteBack

use std::{
    collections::{BTreeMap, HashSet, VecDeque},
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use kvtier_tiers::{BlobTier, Block, BlockKey, Error as TierError, Tier, TierExt, TierKind};
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::{Durability, Inner};
use crate::index::{Entry, TierSet};

/// Longest pause between retries of a failed batch (or export).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The pause before the retry that follows `failures` failures: 100 ms doubling, at most
/// [`MAX_BACKOFF`].
pub(crate) fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100).saturating_mul(1 << failures.min(9)).min(MAX_BACKOFF)
}
/// SSD eviction candidates looked at per pressed size class.
const DEMOTE_SCAN: usize = 4096;

/// What the flusher is asked to do, in order.
#[derive(Debug, Default)]
struct Queue {
    keys: VecDeque<(BlockKey, Instant)>,
    /// Keys queued or in a batch being flushed: never queued twice.
    members: HashSet<BlockKey>,
    /// Keys of a batch in flight queued again (unreadable this time): they stay members.
    requeued: HashSet<BlockKey>,
    /// Members deleted meanwhile: a copy their flush writes must go again.
    deleted: HashSet<BlockKey>,
    /// Block size -> bytes of SSD use over the demotion threshold, since the last look.
    pressed: BTreeMap<u64, u64>,
}

/// The flush queue and its limits. Shared by the manager (which queues) and the flush task.
#[derive(Debug)]
pub(super) struct Flusher {
    blob: Arc<BlobTier>,
    queue: Mutex<Queue>,
    /// New work queued.
    wake: Notify,
    /// Blocks reached Blob (write-back puts waiting for room look again).
    progress: Notify,
    /// Bytes of write-back puts admitted but not yet in the index.
    admitted: Mutex<u64>,
    /// Most unflushed bytes.
    limit: u64,
    wait: Duration,
    linger: Duration,
    segment_size: u64,
    demote_above: f64,
    concurrency: usize,
    last_error: Mutex<Option<String>>,
}

impl Flusher {
    pub(super) fn new(blob: Arc<BlobTier>, ssd_capacity: u64, config: &crate::Config) -> Self {
        Flusher {
            blob,
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            progress: Notify::new(),
            admitted: Mutex::new(0),
            limit: ((ssd_capacity as f64 * config.blob.max_unflushed) as u64).max(config.max_block_size.0),
            wait: config.blob.flush_wait,
            linger: config.blob.flush_linger,
            segment_size: config.blob.segment_size.0,
            demote_above: config.blob.demote_above,
            concurrency: config.blob.flush_concurrency,
            last_error: Mutex::new(None),
        }
    }

    /// Queues `key` unless it is queued or being flushed already.
    pub(super) fn enqueue(&self, key: BlockKey) {
        let mut q = self.queue.lock();
        if q.members.insert(key.clone()) {
            q.keys.push_back((key, Instant::now()));
            drop(q);
            self.wake.notify_one();
        }
    }

    /// Queues again a key of a batch being flushed (it could not be read this time).
    fn requeue(&self, key: BlockKey) {
        let mut q = self.queue.lock();
        q.requeued.insert(key.clone());
        q.keys.push_back((key, Instant::now()));
        drop(q);
        self.wake.notify_one();
    }

    /// A batch is done with `keys`: later asks queue them again.
    fn done(&self, keys: &[BlockKey]) {
        let mut q = self.queue.lock();
        for key in keys {
            if !q.requeued.remove(key) {
                q.members.remove(key);
                q.deleted.remove(key);
            }
        }
    }

    /// `key` was deleted (it was `unflushed`): a flush of it in flight must not leave a
    /// copy behind, and puts waiting for room may find some.
    pub(super) fn deleted(&self, key: &BlockKey, unflushed: bool) {
        {
            let mut q = self.queue.lock();
            if q.members.contains(key) {
                q.deleted.insert(key.clone());
            }
        }
        if unflushed {
            self.progress.notify_waiters();
        }
    }

    fn take_deleted(&self, key: &BlockKey) -> bool {
        self.queue.lock().deleted.remove(key)
    }

    /// SSD is `used`/`capacity` full after a write of `len` bytes: past the threshold, ask
    /// for that class's oldest blocks, as many bytes as use is over it, to be in Blob.
    pub(super) fn pressure(&self, len: u64, used: u64, capacity: u64) {
        let mark = (capacity as f64 * self.demote_above) as u64;
        if self.demotes() && used > mark {
            let over = used - mark;
            let previous = self.queue.lock().pressed.insert(len, over);
            if previous.is_none() {
                self.wake.notify_one();
            }
        }
    }

    /// Looks at the queue again (Blob came back).
    pub(super) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Whether SSD blocks are demoted to Blob ahead of eviction.
    pub(super) fn demotes(&self) -> bool {
        self.demote_above < 1.0
    }

    /// Blocks queued, and how long the oldest has waited.
    pub(super) fn backlog(&self) -> (usize, Duration) {
        let q = self.queue.lock();
        (q.keys.len(), q.keys.front().map(|(_, t)| t.elapsed()).unwrap_or_default())
    }
}

/// Room for one write-back put in the unflushed budget; given back when dropped (by then
/// the index counts the block, or the put failed).
pub(super) struct Admitted<'a> {
    flusher: &'a Flusher,
    len: u64,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        *self.flusher.admitted.lock() -= self.len;
        self.flusher.progress.notify_waiters();
    }
}

impl Inner {
    /// Queues the flush of a block just stored (its key's lock held), unless another owner
    /// already said Blob has it (a `Flushed` that overtook this copy): then the copy is
    /// released at once instead of pinned until a reconciliation.
    pub(super) fn queue_new_flush(&self, key: BlockKey, durable: bool) {
        if durable
            && let Some(crc32c) = self.flushed_ahead.remove(&key)
            && let Some(e) = self.index.get(&key).filter(|e| e.crc32c == crc32c)
        {
            if !self.keep_in_own_segments(&key) {
                self.index.insert(key, Entry { durable: false, ..e });
            }
            return;
        }
        self.queue_flush(key, durable);
    }

    /// Where another owner flushed an object's manifest (its export done): this node keeps
    /// its own copy in its own segments instead of letting it become evictable, and says
    /// whether it queued that flush (with a Blob tier; not for a `cache_only` namespace).
    /// Why: the flush is once per block, so the only durable copy of a version was in the
    /// primary's segments, and each other owner's went with an eviction and a restart or a
    /// wiped disk. Once the primary was down or no owner any more, no owner knew the
    /// version: a delete marker lost so let a stale copy of the deleted version back (the
    /// 1000-fault run). A manifest is a few hundred bytes; a segment write per batch of them.
    pub(super) fn keep_in_own_segments(&self, key: &BlockKey) -> bool {
        let Some(flusher) = &self.flusher else { return false };
        if !crate::objects::is_manifest_key(key) || !self.flushable(key) {
            return false;
        }
        if let Some(exports) = &self.exports {
            exports.exported(key); // its file is in Blob: its segment may follow
        }
        flusher.enqueue(key.clone());
        true
    }

    /// Queues a write-back block just stored for its flush.
    /// With objects' files in Blob, a manifest's flush first exports its object, and a
    /// chunk is flushed by that export, never into a segment.
    pub(super) fn queue_flush(&self, key: BlockKey, durable: bool) {
        if let (true, Some(flusher)) = (durable, &self.flusher)
            && self.flushes(&key)
        {
            match &self.exports {
                Some(exports) if crate::objects::is_manifest_key(&key) => exports.enqueue(key),
                Some(_) if crate::objects::is_chunk_key(&key) => {}
                _ => flusher.enqueue(key),
            }
        }
    }

    /// The write-back blocks Blob lacks (what a start queues), less those of namespaces
    /// configured cache_only since they were written: those can never be flushed, so they
    /// become cache blocks (said once per start) rather than pin SSD space for ever.
    pub(super) fn forget_write_back_of_cache_only(&self) -> Vec<BlockKey> {
        let (flushable, stuck): (Vec<_>, Vec<_>) =
            self.index.unflushed_keys().into_iter().partition(|k| self.flushable(k));
        if !stuck.is_empty() {
            tracing::warn!(
                blocks = stuck.len(),
                "write-back blocks of namespaces now cache_only will not be flushed; they are cache blocks now"
            );
        }
        for key in stuck {
            if let Some(e) = self.index.get(&key) {
                self.index.insert(key, Entry { durable: false, ..e });
            }
        }
        flushable
    }

    /// Whether blocks of `key`'s namespace may go to Blob.
    pub(super) fn flushable(&self, key: &BlockKey) -> bool {
        !self.config.namespace(key.namespace.as_str()).cache_only
    }

    /// For a write-back put, waits (up to `blob.flush_wait`) until `len` bytes fit under the
    /// unflushed limit, or fails with backpressure. Other puts need no room. Never called
    /// with a key's lock held: the flush that makes room takes key locks.
    pub(super) async fn admit(&self, durability: Durability, len: u64) -> Result<Option<Admitted<'_>>, TierError> {
        match (&self.flusher, durability) {
            (Some(flusher), Durability::WriteBack) => self.admit_write_back(flusher, len).await.map(Some),
            _ => Ok(None),
        }
    }

    async fn admit_write_back<'a>(&'a self, flusher: &'a Flusher, len: u64) -> Result<Admitted<'a>, TierError> {
        let deadline = tokio::time::Instant::now() + flusher.wait;
        loop {
            let progress = flusher.progress.notified();
            {
                let mut admitted = flusher.admitted.lock();
                let waiting = self.index.unflushed() + *admitted;
                // A lone block larger than the limit still goes (it would never fit).
                if waiting + len <= flusher.limit || waiting == 0 {
                    *admitted += len;
                    return Ok(Admitted { flusher, len });
                }
                if tokio::time::Instant::now() >= deadline {
                    self.metrics.flush_backpressure.inc();
                    return Err(TierError::Backpressure {
                        tier: flusher.blob.to_string(),
                        waiting,
                        limit: flusher.limit,
                        cause: flusher.last_error.lock().clone(),
                    });
                }
            }
            let _ = tokio::time::timeout_at(deadline, progress).await;
        }
    }
}

/// Starts the flush task: it forms batches and runs up to `blob.flush_concurrency` of them
/// at once. Every task holds the manager weakly (strongly only while it works, not while
/// it waits), so all end once the manager is dropped.
pub(super) fn spawn_flusher(inner: &Arc<Inner>, flusher: Arc<Flusher>) {
    let weak: Weak<Inner> = Arc::downgrade(inner);
    let slots = Arc::new(tokio::sync::Semaphore::new(flusher.concurrency));
    tokio::spawn(async move {
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else { return };
            let work = flusher.wake.notified();
            let Some(inner) = weak.upgrade() else { return };
            let batch = take_batch(&inner, &flusher).await;
            drop(inner);
            if batch.is_empty() {
                drop(slot);
                // Woken by new work; the timeout notices a dropped manager.
                let _ = tokio::time::timeout(Duration::from_secs(1), work).await;
                continue;
            }
            let (weak, flusher) = (weak.clone(), flusher.clone());
            tokio::spawn(async move {
                let keys: Vec<BlockKey> = batch.iter().map(|(k, _)| k.clone()).collect();
                flush_batch(&weak, &flusher, batch).await;
                flusher.done(&keys);
                drop(slot);
            });
        }
    });
}

/// Reads a batch and stores it in Blob, retrying what fails with exponential backoff until
/// it succeeds or the manager is gone (what is left then stays unflushed on SSD, and the
/// next start queues it again).
async fn flush_batch(weak: &Weak<Inner>, flusher: &Flusher, batch: Vec<(BlockKey, Entry)>) {
    let Some(inner) = weak.upgrade() else { return };
    let mut pending = read_batch(&inner, flusher, batch).await;
    drop(inner);
    if pending.is_empty() {
        // Nothing readable (every key moved or failed): do not spin on a requeue.
        tokio::time::sleep(Duration::from_millis(100)).await;
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
        tokio::time::sleep(backoff(failures)).await;
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
        && !inner.exports.as_ref().is_some_and(|exports| {
            // An object's chunks reach Blob in its file (objects/export.rs), never in
            // segments; a write-back manifest only once that file is there (a manifest in a
            // segment first would tell its export there is nothing left to do).
            crate::objects::is_chunk_key(key)
                || (e.durable && crate::objects::is_manifest_key(key) && !exports.is_exported(key))
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
        if let Some(exports) = &self.exports {
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
