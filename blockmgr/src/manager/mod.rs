//! The block manager: one node's tiers behind one batched API.
//!
//! Block path (see docs/architecture.md):
//! - **put**: bytes land in the CPU arena (streamed straight into a reserved slot when
//!   they arrive over the network), moka admits them, the index records them. With
//!   [`Durability::LocalDisk`] the block is also on SSD before the put is acknowledged.
//!   When memory is full the block goes to SSD directly.
//! - **eviction**: moka picks victims; the demotion queue writes each to SSD (unless a copy
//!   is already there) and only then frees its memory. A full SSD drops its oldest blocks.
//! - **get**: memory hits are zero-copy; SSD hits are read once however many callers ask
//!   (single flight), verified against their checksum, and promoted to memory.
//! - **lookup** reads only the index: the longest present prefix and each block's tier.

mod arena;
mod blob;
mod movement;
mod types;
mod writer;

use self::writer::{Budgeted, ReservedBytes, Sink};
pub use self::{
    arena::{ArenaPin, PinOutcome},
    types::{Durability, GetOutcome, MissReason, PutOutcome, Stats, TierStats},
    writer::PutWriter,
};

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use bytes::BytesMut;
use kvtier_tiers::{
    BlobTier, BlobTierBuilder, Block, BlockKey, CpuTier, CpuTierBuilder, Error as TierError, PutStatus, SsdTierBuilder,
    Tier, TierExt, TierKind,
};
use tokio::sync::{Semaphore, mpsc};

use crate::{
    Config, Error, Metrics,
    flight::{KeyLocks, SingleFlight},
    index::{Entry, Index, TierSet},
    policy::CpuPolicy,
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
    index: Index,
    policy: CpuPolicy,
    locks: KeyLocks,
    ssd_reads: SingleFlight<GetOutcome>,
    blob_reads: SingleFlight<GetOutcome>,
    read_slots: Semaphore,
    transfer: Arc<Semaphore>,
    reserved: Arc<AtomicU64>,
    demote_tx: mpsc::UnboundedSender<BlockKey>,
    background: Arc<Background>,
    metrics: Metrics,
    limits: Limits,
    started: Instant,
}

/// The block manager. Cloning shares it.
#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
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
    /// Builds the tiers from `config`, recovers the SSD tier's blocks into the index and
    /// starts the demotion worker. Must run inside a tokio runtime.
    pub async fn open(config: &Config, metrics: Metrics) -> Result<Self, Error> {
        config.validate()?;
        let cpu = CpuTierBuilder::new(config.cpu.capacity.0)
            .with_region_size(config.cpu.region_size.0)
            .with_max_block_size(config.max_block_size.0)
            .with_mlock(config.cpu.mlock)
            .with_prefault(config.cpu.prefault)
            .build()?;
        let ssd: Option<Arc<dyn Tier>> = if config.ssd.enabled {
            let tier = SsdTierBuilder::new(config.in_data_dir(&config.ssd.dir), config.ssd.capacity.0)
                .with_region_size(config.ssd.region_size.0)
                .with_max_block_size(config.max_block_size.0)
                .with_direct_io(config.ssd.direct_io)
                .with_sync_writes(config.ssd.sync_writes)
                .build()
                .await?;
            Some(Arc::new(tier))
        } else {
            None
        };
        let blob = match config.blob_url() {
            None => None,
            Some(url) => {
                let tier = BlobTierBuilder::new(url)
                    .options(config.blob.options.clone())
                    .segment_size(config.blob.segment_size.0)
                    .max_block_size(config.max_block_size.0)
                    .open()
                    .await?;
                Some(Arc::new(tier))
            }
        };
        Self::assemble(cpu, ssd, blob, config, metrics).await
    }

    /// Assembles a manager over tiers built by the caller (tests use a [`kvtier_tiers::MemoryTier`]
    /// as the slow tier).
    pub async fn with_tiers(
        cpu: CpuTier,
        ssd: Option<Arc<dyn Tier>>,
        config: &Config,
        metrics: Metrics,
    ) -> Result<Self, Error> {
        Self::assemble(cpu, ssd, None, config, metrics).await
    }

    async fn assemble(
        cpu: CpuTier,
        ssd: Option<Arc<dyn Tier>>,
        blob: Option<Arc<BlobTier>>,
        config: &Config,
        metrics: Metrics,
    ) -> Result<Self, Error> {
        let (demote_tx, demote_rx) = mpsc::unbounded_channel();
        let background = Arc::new(Background::default());
        let listener_tx = demote_tx.clone();
        let (queue, listener_bg) = (metrics.demotion_queue.clone(), background.clone());
        let policy = CpuPolicy::new(cpu.capacity(), move |key| {
            queue.inc();
            listener_bg.start();
            // The receiver lives as long as the manager; a send after shutdown is moot.
            let _ = listener_tx.send(key);
        });
        let cpu_capacity = cpu.capacity();
        let inner = Arc::new(Inner {
            cpu: Arc::new(cpu),
            ssd,
            blob,
            index: Index::default(),
            policy,
            locks: KeyLocks::new(LOCK_STRIPES),
            ssd_reads: SingleFlight::new(),
            blob_reads: SingleFlight::new(),
            read_slots: Semaphore::new(config.ssd.max_concurrent_reads),
            transfer: Arc::new(Semaphore::new(config.server.transfer_budget.0 as usize)),
            reserved: Arc::new(AtomicU64::new(0)),
            demote_tx,
            background,
            metrics,
            limits: Limits {
                max_block_size: config.max_block_size.0,
                transfer_budget: config.server.transfer_budget.0,
                reserve_limit: cpu_capacity / 4,
            },
            started: Instant::now(),
        });
        inner.rebuild_index().await?;
        inner.index_blob().await?;
        movement::spawn_demotion_worker(&inner, demote_rx, config.cpu.demotion_concurrency);
        Ok(Manager { inner })
    }

    /// The metrics this manager updates.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Largest block accepted.
    pub fn max_block_size(&self) -> u64 {
        self.inner.limits.max_block_size
    }

    /// Stores a block whose bytes are already in hand. The work runs in its own task:
    /// a caller that gives up never leaves a put half done.
    pub async fn put(&self, block: Block, durability: Durability) -> Result<PutOutcome, TierError> {
        let inner = self.inner.clone();
        inner.check_size(&block.key, block.len())?;
        inner.check_durability(durability)?;
        detached(async move {
            let result = {
                let _guard = inner.locks.lock(&block.key).await;
                match inner.index.get(&block.key) {
                    Some(e) => Ok(inner.existed(e)),
                    None => inner.store(block, durability).await,
                }
            };
            inner.count_put(&result);
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
    ) -> Result<PutWriter, TierError> {
        let inner = &self.inner;
        inner.check_size(&key, len)?;
        inner.check_durability(durability)?;
        let sink = match inner.try_reserve(&key, len) {
            Some(sink) => sink,
            None => {
                let permit = inner
                    .transfer
                    .clone()
                    .acquire_many_owned(inner.budget_permits(len))
                    .await
                    .map_err(|_| TierError::Closed { tier: "manager".into() })?;
                Sink::Heap(BytesMut::with_capacity(len as usize), permit)
            }
        };
        Ok(PutWriter { key, len, expected_crc32c, durability, crc32c: 0, written: 0, sink })
    }

    /// Completes a put started with [`Manager::begin_put`]: verifies length and checksum,
    /// then stores the block as [`Manager::put`] does. The commit starts at once, in its own
    /// task (so a stream can receive the next block meanwhile); the future yields its result.
    pub fn finish_put(
        &self,
        writer: PutWriter,
    ) -> impl Future<Output = Result<PutOutcome, TierError>> + Send + 'static {
        let inner = self.inner.clone();
        detached(async move {
            let result = inner.finish(writer).await;
            inner.count_put(&result);
            result
        })
    }

    /// Reads one block from the fastest tier holding it.
    pub async fn get(&self, key: &BlockKey) -> GetOutcome {
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
                inner.count_hit(TierKind::Cpu, block.len(), started);
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
                GetOutcome::Hit { block, tier } => inner.count_hit(*tier, block.len(), started),
                GetOutcome::Miss { reason: MissReason::NotFound, .. } => {
                    drop(inner.locks.lock(key).await);
                    continue;
                }
                GetOutcome::Miss { reason, .. } => inner.count_miss(*reason),
            }
            return outcome;
        }
        inner.count_miss(MissReason::NotFound);
        GetOutcome::not_found()
    }

    /// The tier of each key in the longest present prefix of `keys`. Reads only the index.
    pub fn lookup(&self, keys: &[BlockKey]) -> Vec<TierKind> {
        keys.iter().map_while(|k| self.inner.index.get(k).and_then(|e| e.tiers.fastest())).collect()
    }

    /// Removes a block from every tier, in its own task. Returns whether it was present.
    pub async fn delete(&self, key: &BlockKey) -> bool {
        let (inner, key) = (self.inner.clone(), key.clone());
        detached(async move {
            let _guard = inner.locks.lock(&key).await;
            let Some(entry) = inner.index.remove(&key) else { return Ok(false) };
            inner.policy.forget(&key);
            if entry.tiers.has(TierKind::Cpu) {
                let _ = inner.cpu.delete(&key).await;
            }
            if let (true, Some(ssd)) = (entry.tiers.has(TierKind::Ssd), &inner.ssd)
                && let Err(e) = ssd.delete(&key).await
            {
                tracing::warn!(%key, error = %e, "deleting the SSD copy failed");
            }
            if let (true, Some(blob)) = (entry.tiers.has(TierKind::Blob), &inner.blob)
                && let Err(e) = blob.delete(&key).await
            {
                tracing::warn!(%key, error = %e, "deleting the Blob copy failed");
            }
            Ok(true)
        })
        .await
        .unwrap_or(false)
    }

    /// Usage and counters.
    pub async fn stats(&self) -> Stats {
        self.inner.stats().await
    }

    /// Refreshes the tier gauges (before a Prometheus scrape).
    pub async fn refresh_gauges(&self) {
        let inner = &self.inner;
        for tier in inner.tiers() {
            if let Ok(u) = tier.usage().await {
                let label = tier.kind().as_str();
                let capacity = i64::try_from(u.capacity).unwrap_or(i64::MAX); // Blob: unbounded
                inner.metrics.tier_capacity.with_label_values(&[label]).set(capacity);
                inner.metrics.tier_used.with_label_values(&[label]).set(u.used as i64);
                inner.metrics.tier_blocks.with_label_values(&[label]).set(u.blocks as i64);
            }
        }
        inner.metrics.index_blocks.set(inner.index.len() as i64);
    }

    /// Applies moka's pending evictions and waits until every background move (demotion,
    /// promotion) has finished.
    pub async fn settle(&self) {
        self.inner.policy.run_pending();
        self.inner.background.wait_idle().await;
    }

    /// Moves every block held only in memory to SSD (graceful shutdown), with progress.
    /// Returns how many were persisted.
    pub async fn persist_memory(&self) -> usize {
        movement::persist_memory(&self.inner).await
    }
}

impl Inner {
    fn check_size(&self, key: &BlockKey, len: u64) -> Result<(), TierError> {
        kvtier_tiers::check_block_size(key, len, self.limits.max_block_size)
    }

    fn check_durability(&self, durability: Durability) -> Result<(), TierError> {
        if durability == Durability::LocalDisk && self.ssd.is_none() {
            return Err(TierError::Unsupported {
                tier: "manager".into(),
                what: "durability local_disk needs an SSD tier (ssd.enabled = false)".into(),
            });
        }
        Ok(())
    }

    /// Transfer-budget permits for `len` bytes: a block larger than the whole budget takes
    /// all of it (it then moves alone) rather than waiting forever.
    fn budget_permits(&self, len: u64) -> u32 {
        len.min(self.limits.transfer_budget).min(u32::MAX as u64) as u32
    }

    fn tiers(&self) -> Vec<Arc<dyn Tier>> {
        let mut tiers: Vec<Arc<dyn Tier>> = vec![self.cpu.clone()];
        tiers.extend(self.ssd.clone());
        tiers.extend(self.blob.clone().map(|b| b as Arc<dyn Tier>));
        tiers
    }

    fn existed(&self, e: Entry) -> PutOutcome {
        PutOutcome { status: PutStatus::Existed, tier: e.tiers.fastest().unwrap_or(TierKind::Cpu) }
    }

    /// Rebuilds the index from the slow tier's blocks after a restart.
    async fn rebuild_index(&self) -> Result<(), Error> {
        if let Some(ssd) = &self.ssd {
            let blocks = ssd.blocks().await?;
            for b in &blocks {
                self.index
                    .insert(b.key.clone(), Entry { len: b.len, crc32c: b.crc32c, tiers: TierSet::of(TierKind::Ssd) });
            }
            tracing::info!(blocks = blocks.len(), tier = %ssd, "index rebuilt");
        }
        Ok(())
    }

    fn try_reserve(&self, key: &BlockKey, len: u64) -> Option<Sink> {
        let footprint = self.cpu.footprint(len);
        let before = self.reserved.fetch_add(footprint, Ordering::Relaxed);
        let guard = ReservedBytes(self.reserved.clone(), footprint);
        if before + footprint > self.limits.reserve_limit {
            return None;
        }
        self.cpu.reserve(key, len).ok().map(|r| Sink::Arena(r, guard))
    }

    async fn finish(&self, writer: PutWriter) -> Result<PutOutcome, TierError> {
        let PutWriter { key, len, expected_crc32c, durability, crc32c, written, sink } = writer;
        if written != len {
            return Err(TierError::InvalidSize { key: key.to_string(), size: written, max: len });
        }
        if let Some(expected) = expected_crc32c.filter(|&e| e != crc32c) {
            return Err(TierError::ChecksumMismatch {
                tier: "ingress".into(),
                key: key.to_string(),
                location: "the bytes received".into(),
                expected,
                actual: crc32c,
            });
        }
        let _guard = self.locks.lock(&key).await;
        if let Some(e) = self.index.get(&key) {
            return Ok(self.existed(e));
        }
        match sink {
            Sink::Arena(reservation, _reserved) => {
                self.cpu.commit(key.clone(), reservation, crc32c)?;
                self.index.insert(key.clone(), Entry { len, crc32c, tiers: TierSet::of(TierKind::Cpu) });
                self.admitted(&key, len);
                if durability == Durability::LocalDisk {
                    let block = self.cpu.get(&key).await?.expect("committed under our lock");
                    if let Err(e) = self.write_ssd(block).await {
                        self.index.remove(&key);
                        self.policy.forget(&key);
                        let _ = self.cpu.delete(&key).await;
                        return Err(e);
                    }
                    self.index.set_tiers(&key, TierSet::of(TierKind::Cpu).with(TierKind::Ssd));
                }
                Ok(PutOutcome { status: PutStatus::Stored, tier: TierKind::Cpu })
            }
            Sink::Heap(buf, _permit) => self.store(Block::with_crc32c(key, buf.freeze(), crc32c), durability).await,
        }
    }

    /// Places a new block (the caller holds its lock and saw it absent).
    async fn store(&self, block: Block, durability: Durability) -> Result<PutOutcome, TierError> {
        let (key, len, crc32c) = (block.key.clone(), block.len(), block.crc32c);
        let entry = |tiers| Entry { len, crc32c, tiers };
        if durability == Durability::LocalDisk {
            self.write_ssd(block.clone()).await?;
            let in_memory = self.put_cpu(&block).await;
            let tiers = TierSet::of(TierKind::Ssd);
            let tiers = if in_memory { tiers.with(TierKind::Cpu) } else { tiers };
            self.index.insert(key, entry(tiers));
            return Ok(PutOutcome { status: PutStatus::Stored, tier: tiers.fastest().expect("ssd is set") });
        }
        if self.put_cpu(&block).await {
            self.index.insert(key, entry(TierSet::of(TierKind::Cpu)));
            return Ok(PutOutcome { status: PutStatus::Stored, tier: TierKind::Cpu });
        }
        // Memory is full: write around it.
        if self.ssd.is_none() {
            return Err(TierError::NoSpace {
                tier: self.cpu.to_string(),
                capacity: self.cpu.capacity(),
                used: self.cpu.usage().await.map(|u| u.used).unwrap_or(0),
                required: len,
            });
        }
        self.write_ssd(block).await?;
        self.index.insert(key, entry(TierSet::of(TierKind::Ssd)));
        Ok(PutOutcome { status: PutStatus::Stored, tier: TierKind::Ssd })
    }

    /// Copies a block into memory and admits it. False when memory is full.
    async fn put_cpu(&self, block: &Block) -> bool {
        for attempt in 0..2 {
            match self.cpu.put(block.clone()).await {
                Ok(_) => {
                    self.admitted(&block.key, block.len());
                    return true;
                }
                Err(e) if e.is_no_space() && attempt == 0 => self.policy.run_pending(),
                Err(e) if e.is_no_space() => movement::reclaim_cpu(self, block.len()),
                Err(e) => {
                    tracing::warn!(key = %block.key, error = %e, "cpu put failed");
                    return false;
                }
            }
        }
        false
    }

    /// Records a block of `len` bytes that just entered memory: moka weighs it, the
    /// written-bytes counter counts it.
    fn admitted(&self, key: &BlockKey, len: u64) {
        self.policy.admit(key.clone(), self.cpu.footprint(len));
        self.metrics.bytes_written.with_label_values(&["cpu"]).inc_by(len);
    }

    fn count_put(&self, result: &Result<PutOutcome, TierError>) {
        let label = match result {
            Ok(PutOutcome { status: PutStatus::Stored, .. }) => "stored",
            Ok(PutOutcome { status: PutStatus::Existed, .. }) => "existed",
            Err(_) => "error",
        };
        self.metrics.puts.with_label_values(&[label]).inc();
    }

    fn count_hit(&self, tier: TierKind, len: u64, started: Instant) {
        self.metrics.hits.with_label_values(&[tier.as_str()]).inc();
        self.metrics.bytes_read.with_label_values(&[tier.as_str()]).inc_by(len);
        let op = match tier {
            TierKind::Cpu => "get_cpu",
            TierKind::Ssd => "get_ssd",
            _ => "get_other",
        };
        self.metrics.latency.with_label_values(&[op]).observe(started.elapsed().as_secs_f64());
    }

    fn count_miss(&self, reason: MissReason) {
        let label = match reason {
            MissReason::NotFound => "not_found",
            MissReason::ChecksumMismatch => "checksum_mismatch",
            MissReason::Error => "error",
        };
        self.metrics.misses.with_label_values(&[label]).inc();
    }

    async fn stats(&self) -> Stats {
        let m = &self.metrics;
        let mut tiers = Vec::new();
        for tier in self.tiers() {
            let label = tier.kind().as_str();
            let usage = tier.usage().await.unwrap_or_default();
            tiers.push(TierStats {
                tier: tier.kind(),
                name: tier.to_string(),
                capacity_bytes: usage.capacity,
                used_bytes: usage.used,
                blocks: usage.blocks,
                hits: m.hits.with_label_values(&[label]).get(),
                bytes_read: m.bytes_read.with_label_values(&[label]).get(),
                bytes_written: m.bytes_written.with_label_values(&[label]).get(),
                evictions: m.evictions.with_label_values(&[label]).get(),
            });
        }
        use prometheus::core::Collector;
        let sum = |c: &prometheus::IntCounterVec| -> u64 {
            c.collect().iter().flat_map(|f| f.get_metric()).map(|m| m.get_counter().get_value() as u64).sum()
        };
        let hits = sum(&m.hits);
        let misses = sum(&m.misses);
        Stats {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_seconds: self.started.elapsed().as_secs(),
            tiers,
            index_blocks: self.index.len() as u64,
            puts: m.puts.with_label_values(&["stored"]).get() + m.puts.with_label_values(&["existed"]).get(),
            gets: hits + misses,
            hits,
            misses,
            demotions: sum(&m.demotions),
            promotions: sum(&m.promotions),
            checksum_failures: sum(&m.checksum_failures),
            dropped: m.dropped.get(),
        }
    }
}

/// Starts `work` in its own task now and returns a future of its result: the caller may
/// give up, the work is never cut short half way (a lock held, an index half updated, a
/// write in flight).
fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<T, TierError>> + Send + 'static,
) -> impl Future<Output = Result<T, TierError>> + Send + 'static {
    let task = tokio::spawn(work);
    async move { task.await.unwrap_or_else(|e| Err(TierError::Generic { tier: "manager".into(), source: Box::new(e) })) }
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
mod tests;
