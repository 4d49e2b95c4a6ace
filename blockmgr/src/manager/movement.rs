//! Moving blocks between tiers: demotion out of memory, eviction from SSD, promotion after
//! an SSD hit, and persisting memory on shutdown. Every move holds the key's lock from the
//! first look at the index to the last change of it.

use std::{
    sync::{Arc, Weak},
    time::Instant,
};

use crate::NodeError;
use futures::StreamExt;
use kvtier_tiers::{Block, BlockKey, Error as TierError, PutStatus, TierExt, TierKind};
use tokio::sync::{Semaphore, mpsc};

use super::{Budgeted, GetOutcome, Inner, MissReason};
use crate::index::TierSet;

/// How long an SSD write waits, at most [`MAX_BUSY_WAITS`] times, for eviction candidates
/// that another move holds.
const BUSY_WAIT: std::time::Duration = std::time::Duration::from_millis(2);
const MAX_BUSY_WAITS: u32 = 500;
/// Waits, at most, when an eviction round found nothing to take: the SSD's last blocks may
/// be on their way out under another writer (off the tier's lists, their space not yet
/// free). A full SSD whose blocks all must stay fails after these.
const MAX_EMPTY_WAITS: u32 = 50;

/// What one eviction round did.
struct Evicted {
    removed: usize,
    /// Candidates skipped because another move held their lock.
    busy: usize,
}

/// Starts the task that drains the demotion queue, `concurrency` blocks at a time. It
/// holds the manager weakly and ends when the manager is dropped or shuts down (what is
/// still queued then stays in memory: `persist_memory` ran before).
pub(super) fn spawn_demotion_worker(
    inner: &Arc<Inner>,
    mut rx: mpsc::UnboundedReceiver<(BlockKey, bool)>,
    concurrency: usize,
) {
    let weak: Weak<Inner> = Arc::downgrade(inner);
    let slots = Arc::new(Semaphore::new(concurrency));
    let tasks = inner.tasks.clone();
    inner.tasks.spawn(async move {
        while let Some(Some((key, read))) = tasks.unless_stopped(rx.recv()).await {
            let Ok(permit) = slots.clone().acquire_owned().await else { break };
            let Some(inner) = weak.upgrade() else { break };
            tasks.spawn(async move {
                inner.demote(&key, false, read).await;
                drop(permit);
                inner.metrics.demotion_queue.dec();
                inner.background.finish();
            });
        }
        // Shut down: what is left will not be moved, and must not hold `settle` up.
        rx.close();
        if let Some(inner) = weak.upgrade() {
            while rx.try_recv().is_ok() {
                inner.metrics.demotion_queue.dec();
                inner.background.finish();
            }
        }
    });
}

/// The arena has no slot for `len` bytes: name victims by arena layout and queue their
/// demotion. The policy keeps committed blocks under its target, but that target leaves no room
/// for slab classes competing for regions, or for the slots puts and pins hold reserved
/// (up to a quarter of the arena), so the policy alone would never free them. Skipped while
/// demotions are already under way, since those will free memory.
pub(super) fn reclaim_cpu(inner: &Inner, len: u64) {
    if inner.metrics.demotion_queue.get() > 0 {
        return;
    }
    for key in kvtier_tiers::Tier::eviction_candidates(&*inner.cpu, len, 4) {
        inner.policy.forget(&key);
        inner.metrics.demotion_queue.inc();
        inner.background.start();
        let _ = inner.demote_tx.send((key, false));
    }
}

/// Persists every memory-only block to SSD (graceful shutdown).
pub(super) async fn persist_memory(inner: &Arc<Inner>) -> usize {
    if inner.ssd.is_none() {
        return 0;
    }
    let keys = inner.index.memory_only();
    if keys.is_empty() {
        return 0;
    }
    tracing::info!(blocks = keys.len(), "persisting memory-only blocks to SSD before exit");
    let bar = inner.metrics.progress().start("persisting", keys.len() as u64);
    let started = Instant::now();
    let done = std::sync::atomic::AtomicUsize::new(0);
    futures::stream::iter(keys)
        .for_each_concurrent(8, |key| {
            let (bar, done) = (&bar, &done);
            async move {
                inner.demote(&key, true, false).await;
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                bar.advance(1);
            }
        })
        .await;
    drop(bar);
    let done = done.into_inner();
    tracing::info!(blocks = done, elapsed_ms = started.elapsed().as_millis() as u64, "memory persisted");
    done
}

impl Inner {
    /// Moves `key` out of memory: to SSD unless a copy is already there, then frees its
    /// memory. Unless `force`, a block the policy has re-admitted meanwhile stays. `read`: it
    /// was read in memory, which gives it a better place in the SSD's order.
    pub(super) async fn demote(&self, key: &BlockKey, force: bool, read: bool) {
        let _guard = self.locks.lock(key).await;
        let Some(entry) = self.index.get(key) else {
            // Deleted while queued; make sure no memory copy lingers.
            let _ = self.cpu.delete(key).await;
            return;
        };
        if !entry.tiers.has(TierKind::Cpu) || (!force && self.policy.contains(key)) {
            return;
        }
        let mut keep = entry.tiers.without(TierKind::Cpu);
        // A block read back from SSD kept its copy there (the SSD's order gave it another pass
        // for that read): leaving memory costs it no second write.
        if !entry.tiers.has(TierKind::Ssd)
            && self.ssd.is_some()
            && let Ok(Some(block)) = self.cpu.get(key).await
        {
            // A write-back block keeps its mark (it can be in memory only after its SSD copy
            // was found damaged): a restart must still know to flush it.
            match self.write_ssd(block.with_durable(entry.durable)).await {
                Ok(_) => {
                    keep = keep.with(TierKind::Ssd);
                    if read {
                        self.policy.ssd_touch(key);
                    }
                    self.metrics.demotions.with_label_values(&["cpu", "ssd"]).inc();
                }
                Err(e) => tracing::warn!(%key, error = %e, "demotion to SSD failed; the block is dropped"),
            }
        }
        let _ = self.cpu.delete(key).await;
        self.policy.forget(key);
        self.metrics.evictions.with_label_values(&["cpu"]).inc();
        self.index.set_tiers(key, keep);
        if keep.is_empty() {
            self.metrics.dropped.inc();
            self.left_node(key);
        }
    }

    /// Writes a block to SSD, evicting while it is full and eviction makes progress (see
    /// [`Inner::evict_ssd`]), and enters it in the SSD's order. The caller holds the block's
    /// lock and updates the index.
    pub(super) async fn write_ssd(&self, block: Block) -> Result<PutStatus, NodeError> {
        let ssd = self.ssd.as_ref().expect("callers check for an SSD tier");
        let len = block.len();
        // One eviction frees a slot when the class has a region (unless a concurrent writer
        // takes it first); when a region must be emptied for the class, rounds double up to
        // 64 blocks at a time. Doubling, not jumping: a burst evicts past the blocks already
        // demoted to Blob, and the extra ones are dropped.
        let mut batch = 1;
        let (mut waits, mut empty_waits) = (0, 0);
        loop {
            match ssd.put(block.clone()).await {
                Ok(status) => {
                    if status == PutStatus::Stored {
                        self.policy.ssd_admit(block.key.clone(), ssd.footprint(len), false);
                    }
                    self.metrics.bytes_written.with_label_values(&["ssd"]).inc_by(len);
                    if let Some(flusher) = &self.flusher
                        && let Ok(u) = ssd.usage().await
                    {
                        flusher.pressure(len, u.used, u.capacity);
                    }
                    return Ok(status);
                }
                Err(e) if e.is_no_space() => match self.evict_ssd(len, batch, &block.key).await {
                    // Each such round removes a block, so this ends.
                    Evicted { removed, .. } if removed > 0 => batch = (batch * 2).min(64),
                    // The only candidates are being moved right now. Their holders never wait
                    // for our lock, so they finish soon: wait a little rather than fail.
                    Evicted { busy, .. } if busy > 0 && waits < MAX_BUSY_WAITS => {
                        waits += 1;
                        tokio::time::sleep(BUSY_WAIT).await;
                    }
                    // Nothing to take: concurrent evictions may be freeing the last of it
                    // (the trace bench's writers saw puts refused at a full SSD).
                    Evicted { busy: 0, .. } if empty_waits < MAX_EMPTY_WAITS => {
                        empty_waits += 1;
                        tokio::time::sleep(BUSY_WAIT).await;
                    }
                    Evicted { .. } => return Err(e.into()),
                },
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Removes up to `max` SSD blocks to make room for one of `len` bytes, skipping (and
    /// counting) any whose lock is taken. First the SSD order's next victims of the same
    /// footprint (their places take the block); when it has none, the tier's candidates by
    /// layout (whole regions, the one whose newest block is oldest first), for a block no
    /// freed place fits. Write-back
    /// blocks Blob lacks are never taken; while blocks are being demoted to Blob, those
    /// Blob holds go first (dropping them loses nothing) and cache blocks Blob lacks only
    /// when no other will do. The window of candidates widens past what it skips. The
    /// caller holds `held`'s lock.
    async fn evict_ssd(&self, len: u64, max: usize, held: &BlockKey) -> Evicted {
        let ssd = self.ssd.as_ref().expect("callers check for an SSD tier");
        let (mut removed, mut busy) = (0, 0);
        for spare_cache in [true, false].into_iter().filter(|&spare| self.flusher_demotes() || !spare) {
            // Not `must_stay_on_ssd`: the policy checks pins itself, under its own lock.
            let candidates = self.ssd_victims_for(len, max + 8, &|k| k == held || self.index.is_unflushed(k));
            self.evict_from(&candidates, max, held, spare_cache, &mut removed, &mut busy).await;
            if removed == max {
                return Evicted { removed, busy };
            }
        }
        if removed > 0 || busy > 0 {
            return Evicted { removed, busy };
        }
        for spare_cache in [true, false].into_iter().filter(|&spare| self.flusher_demotes() || !spare) {
            let mut window = max + 8;
            // The SSD names regions without blocks that must stay first.
            let pinned = |k: &BlockKey| self.must_stay_on_ssd(k);
            loop {
                let candidates = ssd.eviction_candidates_keeping(len, window, &pinned);
                let (seen, skipped) =
                    self.evict_from(&candidates, max, held, spare_cache, &mut removed, &mut busy).await;
                if removed == max {
                    return Evicted { removed, busy };
                }
                if skipped == 0 || seen < window || window >= 1 << 12 {
                    break;
                }
                window *= 4;
            }
        }
        Evicted { removed, busy }
    }

    /// The SSD order's next `max` victims whose places a block of `len` bytes would take
    /// (of its footprint), none that `keep` names: the blocks SSD eviction takes first.
    /// `keep` must not call into the policy.
    pub(super) fn ssd_victims_for(&self, len: u64, max: usize, keep: &dyn Fn(&BlockKey) -> bool) -> Vec<BlockKey> {
        let Some(ssd) = &self.ssd else { return Vec::new() };
        let footprint = ssd.footprint(len);
        let other_size = |k: &BlockKey| self.index.get(k).is_some_and(|e| ssd.footprint(e.len) != footprint);
        self.policy.ssd_victims(max, &|k| other_size(k) || keep(k))
    }

    /// Whether blocks are being demoted to Blob ahead of SSD eviction.
    fn flusher_demotes(&self) -> bool {
        self.flusher.as_ref().is_some_and(|f| f.demotes())
    }

    /// Whether SSD eviction must pass `key` by: a write-back copy Blob lacks, or a block a
    /// lookup pinned.
    fn must_stay_on_ssd(&self, key: &BlockKey) -> bool {
        self.policy.is_pinned(key) || self.index.is_unflushed(key)
    }

    /// One pass of [`Inner::evict_ssd`] over `candidates`. Returns how many it looked at and
    /// how many it skipped as not evictable yet.
    async fn evict_from(
        &self,
        candidates: &[BlockKey],
        max: usize,
        held: &BlockKey,
        spare_cache: bool,
        removed: &mut usize,
        busy: &mut usize,
    ) -> (usize, usize) {
        let ssd = self.ssd.as_ref().expect("callers check for an SSD tier");
        let mut unflushed = 0;
        // Write-back blocks Blob lacks always stay; cache blocks Blob lacks stay in the
        // first pass when they will be demoted.
        let stays = |victim: &BlockKey| {
            self.must_stay_on_ssd(victim)
                || (spare_cache
                    && self.index.get(victim).is_some_and(|e| !e.tiers.has(TierKind::Blob) && self.flushable(victim)))
        };
        for victim in candidates {
            if *removed == max {
                break;
            }
            if victim == held || stays(victim) {
                unflushed += usize::from(victim != held);
                continue;
            }
            // A victim on the stripe we hold is already ours. Otherwise try_lock: never wait
            // for a second stripe while holding one (two evictors could deadlock).
            let _guard = match self.locks.same_stripe(victim, held) {
                true => None,
                false => match self.locks.try_lock(victim) {
                    Some(g) => Some(g),
                    None => {
                        *busy += 1;
                        continue;
                    }
                },
            };
            // Again under its lock: a write-back put holds it from its SSD write to its index entry.
            if stays(victim) {
                unflushed += 1;
                continue;
            }
            if !ssd.delete(victim).await.unwrap_or(false) {
                // Gone already (deleted, dropped as damaged): out of the SSD's order too.
                self.policy.ssd_forget(victim);
            } else {
                self.policy.ssd_evicted(victim);
                *removed += 1;
                self.metrics.evictions.with_label_values(&["ssd"]).inc();
                let tiers = self.index.get(victim).map_or(TierSet::EMPTY, |e| e.tiers.without(TierKind::Ssd));
                self.index.set_tiers(victim, tiers);
                if tiers.is_empty() {
                    self.metrics.dropped.inc();
                    self.left_node(victim);
                }
            }
        }
        (candidates.len(), unflushed)
    }

    /// One SSD read of `key` (callers coalesce through single flight). A good copy is
    /// returned and promoted to memory in the background; a bad one is dropped.
    pub(super) async fn read_ssd(self: Arc<Self>, key: BlockKey) -> GetOutcome {
        let ssd = self.ssd.clone().expect("indexed on SSD implies an SSD tier");
        let Some(entry) = self.index.get(&key) else { return GetOutcome::not_found() };
        let Ok(budget) = self.transfer.clone().acquire_many_owned(self.budget_permits(entry.len)).await else {
            return GetOutcome::not_found();
        };
        let Ok(_slot) = self.read_slots.acquire().await else { return GetOutcome::not_found() };
        self.metrics.tier_reads.with_label_values(&["ssd"]).inc();
        match ssd.get(&key).await {
            // The key was deleted and stored again with other bytes while we read: not it.
            Ok(Some(block)) if !self.is_current(&block) => GetOutcome::not_found(),
            Ok(Some(block)) => {
                self.policy.ssd_touch(&key);
                let me = self.clone();
                let copy = block.clone();
                self.background.start();
                self.tasks.spawn(async move {
                    me.promote(copy, TierKind::Ssd).await;
                    me.background.finish();
                });
                let data = bytes::Bytes::from_owner(Budgeted(block.data, budget));
                GetOutcome::Hit { block: Block::with_crc32c(key, data, block.crc32c), tier: TierKind::Ssd }
            }
            Ok(None) => {
                // The get then looks in the next tier (Blob) instead of asking SSD again.
                self.forget_vanished_ssd_copy(&key).await;
                GetOutcome::not_found()
            }
            Err(e @ TierError::ChecksumMismatch { .. }) => {
                self.metrics.checksum_failures.with_label_values(&["ssd"]).inc();
                tracing::warn!(error = %e, "dropping a corrupt SSD copy");
                let _guard = self.locks.lock(&key).await;
                if ssd.contains(&key).await.unwrap_or(false) {
                    // The tier already holds a newer copy (stored after the bad one): look again.
                    return GetOutcome::not_found();
                }
                if let Some(entry) = self.index.get(&key) {
                    self.index.set_tiers(&key, entry.tiers.without(TierKind::Ssd));
                }
                self.policy.ssd_forget(&key);
                GetOutcome::Miss { reason: MissReason::ChecksumMismatch, message: e.to_string() }
            }
            Err(e) => {
                tracing::warn!(%key, error = %e, "SSD read failed");
                GetOutcome::Miss { reason: MissReason::Error, message: e.to_string() }
            }
        }
    }

    /// Drops the index's SSD copy of `key` if the SSD tier no longer holds it (it dropped a
    /// damaged copy) without the index saying so. A mover updates both under the key's lock,
    /// which this waits for. A write-back block lost this way before reaching Blob is an
    /// error worth a loud log: an acknowledged block is gone.
    pub(super) async fn forget_vanished_ssd_copy(&self, key: &BlockKey) {
        let Some(ssd) = &self.ssd else { return };
        let _guard = self.locks.lock(key).await;
        if let Some(entry) = self.index.get(key)
            && entry.tiers.has(TierKind::Ssd)
            && !ssd.contains(key).await.unwrap_or(true)
        {
            let left = entry.tiers.without(TierKind::Ssd);
            if entry.unflushed() && left.is_empty() {
                self.metrics.lost_write_back.inc();
                tracing::error!(%key, "a write-back block's only copy was damaged on SSD before it reached Blob");
            }
            self.index.set_tiers(key, left); // none left: removed
            self.policy.ssd_forget(key);
        }
    }

    /// Whether `block` is the version the index has now (a read may race a delete and a
    /// put of the same key with other bytes).
    pub(super) fn is_current(&self, block: &Block) -> bool {
        self.index.get(&block.key).is_some_and(|e| e.len == block.len() && e.crc32c == block.crc32c)
    }

    /// Copies a hit from a slower tier (`from`) into memory, if it is still indexed without
    /// a memory copy and memory has room.
    pub(super) async fn promote(&self, block: Block, from: TierKind) {
        let _guard = self.locks.lock(&block.key).await;
        let Some(entry) = self.index.get(&block.key) else { return };
        if entry.tiers.has(TierKind::Cpu) || !self.is_current(&block) {
            return;
        }
        if let Ok(PutStatus::Stored) = self.cpu.put(block.clone()).await {
            self.index.set_tiers(&block.key, entry.tiers.with(TierKind::Cpu));
            self.admitted(&block.key, block.len());
            self.metrics.promotions.with_label_values(&[from.as_str(), "cpu"]).inc();
        }
    }
}
