//! The block manager: one node's tiers behind one batched API.
//!
//! Block path (see docs/architecture.md):
//! - **put**: bytes land in the CPU arena (streamed straight into a reserved slot when
//!   they arrive over the network), the policy admits them, the index records them. With
//!   [`Durability::LocalDisk`] the block is also on SSD before the put is acknowledged.
//!   When memory is full the block goes to SSD directly.
//! - **eviction**: the namespace's policy picks victims (policy/); the demotion queue writes each to SSD (unless a copy
//!   is already there) and only then frees its memory. A full SSD drops its oldest blocks.
//! - **get**: memory hits are zero-copy; SSD hits are read once however many callers ask
//!   (single flight), verified against their checksum, and promoted to memory.
//! - **lookup** reads the index (the longest present prefix and each block's tier) and
//!   teaches the policy the request's prefix chain.

mod arena;
mod blob;
mod blob_deletes;
mod cluster_reads;
mod deletes;
mod flush;
mod flush_worker;
mod handoff;
mod hooks;
mod in_flight;
mod lookup;
mod movement;
mod namespaces;
mod open;
mod presence;
mod replicas;
mod resync;
mod stats;
mod store;
mod types;
mod unreachable;
mod writer;

use self::writer::{Budgeted, Sink};
pub use self::{
    arena::{ArenaPin, PinOutcome},
    cluster_reads::MemberAnswer,
    resync::ResyncReport,
    types::{GetOutcome, PutOutcome},
    writer::PutWriter,
};
pub(crate) use self::{
    flush::RETRY,
    hooks::{ExportQueue, Hooks, Role},
    open::Tiers,
    replicas::WeakManager,
};
use kvtier_types::{Durability, MissReason, NamespaceStats, Stats, TierStats};

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use crate::NodeError;
use bytes::BytesMut;
use kvtier_tiers::{BlobTier, Block, BlockKey, CpuTier, Error as TierError, Tier, TierExt, TierKind};
use tokio::sync::{Semaphore, mpsc};

use crate::{
    Config, Metrics,
    flight::{KeyLocks, SingleFlight},
    index::Index,
    policy::NodePolicy,
    tasks::Tasks,
};

/// Per-key lock stripes. Unit tests use one, so every key shares a lock with every other:
/// a path that waited for a second key while holding one would hang there, and every
/// eviction takes the same-stripe path.
const LOCK_STRIPES: usize = if cfg!(test) { 1 } else { 1024 };

/// Manager settings taken from [`Config`].
#[derive(Debug, Clone)]
struct Limits {
    max_block_size: u64,
    /// Bytes of the transfer budget.
    transfer_budget: u64,
    /// Most bytes of CPU slots held by puts still receiving data.
    reserve_limit: u64,
}

pub(crate) struct Inner {
    cpu: Arc<CpuTier>,
    ssd: Option<Arc<dyn Tier>>,
    blob: Option<Arc<BlobTier>>,
    /// Write-back to Blob; present when there are both an SSD and a Blob tier.
    flusher: Option<Arc<flush::Flusher>>,
    /// The layer above (named objects): what its keys are, and what it must hear.
    hooks: Option<Arc<dyn Hooks>>,
    /// Deletes of Blob copies not made yet (Blob down, or not loaded), held on disk.
    blob_deletes: blob_deletes::BlobDeletes,
    config: Config,
    index: Index,
    policy: NodePolicy,
    locks: KeyLocks,
    /// Write-back keys another owner said Blob has before this node's copy of them arrived
    /// (a `Peer/Flushed` that overtook the put carrying the copy), with the CRC-32C of the
    /// bytes Blob has: the copy, when it comes with those bytes, needs no flush. Bounded, and
    /// forgotten after five minutes or a delete.
    flushed_ahead: moka::sync::Cache<BlockKey, u32>,
    /// Copies sent on after their put's write quorum held, still under way: a delete of
    /// their key waits for them (in_flight.rs).
    copies_in_flight: Arc<in_flight::CopiesInFlight>,
    /// Owners of the keys held here, placed once per member list and key set (resync.rs).
    ownership: parking_lot::Mutex<Option<Arc<resync::Ownership>>>,
    ssd_reads: SingleFlight<GetOutcome>,
    blob_reads: SingleFlight<GetOutcome>,
    read_slots: Semaphore,
    transfer: Arc<Semaphore>,
    reserved: Arc<AtomicU64>,
    /// Blocks memory's order pushed out, each with whether it was read there.
    demote_tx: mpsc::UnboundedSender<(BlockKey, bool)>,
    /// Read speeds per tier, for the load costs lookups report (lookup.rs).
    read_speeds: lookup::ReadSpeeds,
    /// Blocks a departed prefix parent left unreachable (unreachable.rs).
    orphans_tx: mpsc::UnboundedSender<unreachable::Orphan>,
    /// Unreachable blocks kept only because a lookup had them pinned: dropped when a get
    /// releases the pin (unreachable.rs).
    pinned_orphans: parking_lot::Mutex<std::collections::HashMap<BlockKey, BlockKey>>,
    background: Arc<Background>,
    /// Every task the node starts: [`Manager::shutdown`] joins them.
    tasks: Tasks,
    metrics: Metrics,
    /// Which namespaces have counters of their own.
    namespaces: namespaces::NamespaceLabels,
    limits: Limits,
    started: Instant,
    /// The other nodes (also on a [`Manager::here_only`]): who flushes which block.
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// The block manager. Cloning shares it.
#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
    /// The other nodes, when there are any (see replicas.rs).
    cluster: Option<Arc<crate::cluster::Cluster>>,
    /// A handle serving a member's request ([`Manager::here_only`]): it acts on this node
    /// alone, but judges as a member (see [`Manager::membership`]).
    here_only: bool,
}

impl fmt::Debug for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager")
            .field("cpu", &self.inner.cpu.to_string())
            .field("ssd", &self.inner.ssd.as_ref().map(|s| s.to_string()))
            .field("blocks", &self.inner.index.len())
            .finish()
    }
}

impl Manager {
    /// The metrics this manager updates.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Largest block accepted.
    pub fn max_block_size(&self) -> u64 {
        self.inner.limits.max_block_size
    }

    /// Bytes per chunk of a named object: 16 MiB, or the largest block if smaller.
    pub(crate) fn object_chunk_size(&self) -> u64 {
        self.inner.limits.max_block_size.min(16 << 20)
    }

    /// Every indexed key whose key bytes start with `prefix` (named objects' manifests).
    pub(crate) fn keys_with_prefix(&self, prefix: &[u8]) -> Vec<BlockKey> {
        self.inner.index.keys_where(|k| k.key.as_bytes().starts_with(prefix))
    }

    /// Stores a block whose bytes are already in hand, on this node only. The work runs in
    /// its own task: a caller that gives up never leaves a put half done.
    pub(crate) async fn put_here(&self, block: Block, durability: Durability) -> Result<PutOutcome, NodeError> {
        let inner = self.inner.clone();
        inner.check_size(&block.key, block.len())?;
        inner.check_durability(&block.key, durability)?;
        let namespace = block.key.namespace.clone();
        detached(&self.inner.tasks, async move {
            let result = async {
                // Room in the unflushed budget is waited for before the key's lock: the
                // flush that makes room takes key locks.
                let _admitted = inner.admit(durability, block.len()).await?;
                let _guard = inner.locks.lock(&block.key).await;
                match inner.index.get(&block.key) {
                    Some(e) => inner.existing(&block.key, e, durability, block.crc32c).await,
                    None => inner.store(block, durability).await,
                }
            }
            .await;
            inner.count_put(&namespace, &result);
            result
        })
        .await
    }

    /// Starts a put whose bytes arrive piece by piece. The bytes go straight into a CPU
    /// slot when one is free (within a quarter of the arena); otherwise into a buffer paid
    /// for from the transfer budget, waiting for budget if needed (backpressure).
    pub async fn begin_put(
        &self,
        key: BlockKey,
        len: u64,
        expected_crc32c: Option<u32>,
        durability: Durability,
    ) -> Result<PutWriter, NodeError> {
        let inner = &self.inner;
        let (durability, route) = self.route(&key, durability);
        inner.check_size(&key, len)?;
        inner.check_durability(&key, durability)?;
        let sink = match inner.try_reserve(&key, len) {
            Some(sink) => sink,
            None => {
                let permit = inner
                    .transfer
                    .clone()
                    .acquire_many_owned(inner.budget_permits(len))
                    .await
                    .map_err(|_| NodeError::Closed { what: "the node".into() })?;
                Sink::Heap(BytesMut::with_capacity(len as usize), permit)
            }
        };
        Ok(PutWriter { key, len, expected_crc32c, durability, crc32c: 0, written: 0, sink, route })
    }

    /// Completes a put started with [`Manager::begin_put`]: verifies length and checksum,
    /// then stores the block as [`Manager::put`] does (copies on other owners included).
    /// The commit starts at once, in its own task (so a stream can receive the next block
    /// meanwhile); the future yields its result.
    pub fn finish_put(
        &self,
        mut writer: PutWriter,
    ) -> impl Future<Output = Result<PutOutcome, NodeError>> + Send + 'static {
        let me = self.clone();
        detached(&self.inner.tasks, async move {
            let (route, key) = (writer.route.take(), writer.key.clone());
            let result = me.inner.finish(writer).await;
            me.inner.count_put(&key.namespace, &result);
            if result.is_ok() {
                me.stored(&key).await;
            }
            let Some(route) = route else { return result };
            let block = if result.is_ok() { me.copy_for_peers(&key).await } else { None };
            me.replicate(route, block, result).await
        })
    }

    /// Reads one block from the fastest tier of this node holding it.
    pub(crate) async fn get_here(&self, key: &BlockKey) -> GetOutcome {
        let inner = &self.inner;
        let started = Instant::now();
        // A block may move between tiers while we look. Every move finishes under the key's
        // lock before the index changes, so when what we find disagrees with the index we
        // wait for that lock once, then look again.
        for _ in 0..4 {
            let Some(entry) = inner.index.get(key) else { break };
            if entry.tiers.has(TierKind::Cpu)
                && let Ok(Some(block)) = inner.cpu.get(key).await
            {
                inner.policy.touch(key);
                inner.unpin(key);
                inner.count_hit(key, TierKind::Cpu, block.len(), started);
                return GetOutcome::Hit { block, tier: TierKind::Cpu };
            }
            // Below memory: SSD, else Blob (read through), one read per key at a time.
            let (flights, tier) = match entry.tiers {
                t if t.has(TierKind::Ssd) => (&inner.ssd_reads, TierKind::Ssd),
                t if t.has(TierKind::Blob) && inner.blob.is_some() => (&inner.blob_reads, TierKind::Blob),
                _ => {
                    drop(inner.locks.lock(key).await);
                    continue;
                }
            };
            let (me, owned) = (self.inner.clone(), key.clone());
            let outcome = flights
                .run(key, move || {
                    Box::pin(async move {
                        match tier {
                            TierKind::Ssd => me.read_ssd(owned).await,
                            _ => me.read_blob(owned).await,
                        }
                    })
                })
                .await;
            match &outcome {
                GetOutcome::Hit { block, tier } => {
                    inner.unpin(key);
                    inner.count_hit(key, *tier, block.len(), started)
                }
                GetOutcome::Miss { reason: MissReason::NotFound, .. } => {
                    drop(inner.locks.lock(key).await);
                    continue;
                }
                // A damaged SSD copy (dropped by now) of a block Blob also holds: read it there.
                GetOutcome::Miss { reason: MissReason::ChecksumMismatch, .. }
                    if tier == TierKind::Ssd && inner.index.get(key).is_some_and(|e| e.tiers.has(TierKind::Blob)) =>
                {
                    continue;
                }
                GetOutcome::Miss { reason, .. } => inner.count_miss(key, *reason),
            }
            return outcome;
        }
        inner.count_miss(key, MissReason::NotFound);
        GetOutcome::not_found()
    }

    /// Removes a block from every tier of this node, in its own task. Returns whether it
    /// was present.
    pub(crate) async fn delete_here(&self, key: &BlockKey) -> bool {
        let (inner, key) = (self.inner.clone(), key.clone());
        detached(&self.inner.tasks, async move {
            let _guard = inner.locks.lock(&key).await;
            inner.flushed_ahead.invalidate(&key);
            let Some(entry) = inner.index.remove(&key) else {
                // Blob not loaded yet: its copy is not indexed, but may be there.
                if inner.blob.as_ref().is_some_and(|b| !b.is_loaded()) {
                    inner.delete_from_blob(&key).await;
                }
                return Ok(false);
            };
            inner.policy.forget(&key);
            inner.policy.ssd_forget(&key);
            if entry.tiers.has(TierKind::Cpu) {
                let _ = inner.cpu.delete(&key).await;
            }
            if let (true, Some(ssd)) = (entry.tiers.has(TierKind::Ssd), &inner.ssd)
                && let Err(e) = ssd.delete(&key).await
            {
                tracing::warn!(%key, error = %e, "deleting the SSD copy failed");
            }
            // Whether or not the index places it there: a flush may have just written it.
            // (The tier sends nothing when it holds no copy.)
            inner.delete_from_blob(&key).await;
            if let Some(flusher) = &inner.flusher {
                flusher.deleted(&key, entry.unflushed());
                if let Some(exports) = inner.exports() {
                    exports.forget(&key);
                }
            }
            Ok(true)
        })
        .await
        .unwrap_or(false)
    }

    /// Waits until every background move (demotion, promotion) has finished.
    pub async fn settle(&self) {
        self.inner.background.wait_idle().await;
    }

    /// Stops the node's background work and waits for it: loops (flush, export, resync,
    /// demotion, membership, ...) end at their next wait, work under way (a flush attempt,
    /// a copy after the quorum, a put a caller gave up on) finishes; with etcd, this node
    /// leaves the member list at once rather than when its lease runs out. Call it after
    /// [`Manager::settle`] and [`Manager::persist_memory`]: what is still queued then (an
    /// unflushed block, an export) stays on disk and is queued again at the next start.
    pub async fn shutdown(&self) {
        self.inner.tasks.shutdown().await;
    }

    /// The node's tasks, for the layers that start their own.
    pub(crate) fn tasks(&self) -> &Tasks {
        &self.inner.tasks
    }

    /// Moves every block held only in memory to SSD (graceful shutdown), with progress.
    /// Returns how many were persisted.
    pub async fn persist_memory(&self) -> usize {
        movement::persist_memory(&self.inner).await
    }
}

/// Starts `work` in its own task now and returns a future of its result: the caller may
/// give up, the work is never cut short half way (a lock held, an index half updated, a
/// write in flight).
pub(crate) fn detached<T: Send + 'static>(
    tasks: &Tasks,
    work: impl Future<Output = Result<T, NodeError>> + Send + 'static,
) -> impl Future<Output = Result<T, NodeError>> + Send + 'static {
    let task = tasks.spawn(work);
    async move {
        task.await.unwrap_or_else(|e| {
            Err(NodeError::Tier(TierError::Generic { tier: "manager".into(), source: Box::new(e) }))
        })
    }
}

/// Counts background moves so that [`Manager::settle`] can wait for them.
#[derive(Debug, Default)]
struct Background {
    pending: AtomicU64,
    idle: tokio::sync::Notify,
}

impl Background {
    fn start(&self) {
        self.pending.fetch_add(1, Ordering::AcqRel);
    }

    fn finish(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    async fn wait_idle(&self) {
        loop {
            let idle = self.idle.notified();
            if self.pending.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

#[cfg(test)]
mod policy_tests;
#[cfg(test)]
mod tests;
