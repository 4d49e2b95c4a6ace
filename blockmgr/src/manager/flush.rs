//! Write-back to the Blob tier: one queue, drained by one task in segment-sized batches
//! (a GiB of blocks costs a few PUTs, not one per block; the task is flush_worker.rs).
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
//! [`NodeError::Backpressure`].
//!
//! [`Durability::WriteBack`]: super::Durability::WriteBack

use std::{
    collections::{BTreeMap, HashSet, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::NodeError;
use kvtier_tiers::{BlobTier, BlockKey};
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::{Durability, Inner};
use crate::backoff::Backoff;
use crate::index::Entry;

/// The pause before retrying a failed batch (or export): 100 ms doubling, at most 30 s.
pub(crate) const RETRY: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
/// SSD eviction candidates looked at per pressed size class.
pub(super) const DEMOTE_SCAN: usize = 4096;

/// What the flusher is asked to do, in order.
#[derive(Debug, Default)]
pub(super) struct Queue {
    pub(super) keys: VecDeque<(BlockKey, Instant)>,
    /// Keys queued or in a batch being flushed: never queued twice.
    pub(super) members: HashSet<BlockKey>,
    /// Keys of a batch in flight queued again (unreadable this time): they stay members.
    pub(super) requeued: HashSet<BlockKey>,
    /// Members deleted meanwhile: a copy their flush writes must go again.
    pub(super) deleted: HashSet<BlockKey>,
    /// Block size -> bytes of SSD use over the demotion threshold, since the last look.
    pub(super) pressed: BTreeMap<u64, u64>,
}

/// The flush queue and its limits. Shared by the manager (which queues) and the flush task.
#[derive(Debug)]
pub(super) struct Flusher {
    pub(super) blob: Arc<BlobTier>,
    pub(super) queue: Mutex<Queue>,
    /// New work queued.
    pub(super) wake: Notify,
    /// Blocks reached Blob (write-back puts waiting for room look again).
    pub(super) progress: Notify,
    /// Bytes of write-back puts admitted but not yet in the index.
    pub(super) admitted: Mutex<u64>,
    /// Most unflushed bytes.
    pub(super) limit: u64,
    pub(super) wait: Duration,
    pub(super) linger: Duration,
    pub(super) segment_size: u64,
    pub(super) demote_above: f64,
    pub(super) concurrency: usize,
    pub(super) last_error: Mutex<Option<String>>,
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
    pub(super) fn requeue(&self, key: BlockKey) {
        let mut q = self.queue.lock();
        q.requeued.insert(key.clone());
        q.keys.push_back((key, Instant::now()));
        drop(q);
        self.wake.notify_one();
    }

    /// A batch is done with `keys`: later asks queue them again.
    pub(super) fn done(&self, keys: &[BlockKey]) {
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

    pub(super) fn take_deleted(&self, key: &BlockKey) -> bool {
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
        if self.role(key) != super::Role::Record || !self.flushable(key) {
            return false;
        }
        if let Some(exports) = self.exports() {
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
            match (self.exports(), self.role(&key)) {
                (Some(exports), super::Role::Record) => exports.enqueue(key),
                (Some(_), super::Role::Piece) => {}
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
    pub(super) async fn admit(&self, durability: Durability, len: u64) -> Result<Option<Admitted<'_>>, NodeError> {
        match (&self.flusher, durability) {
            (Some(flusher), Durability::WriteBack) => self.admit_write_back(flusher, len).await.map(Some),
            _ => Ok(None),
        }
    }

    async fn admit_write_back<'a>(&'a self, flusher: &'a Flusher, len: u64) -> Result<Admitted<'a>, NodeError> {
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
                    return Err(NodeError::Backpressure {
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
