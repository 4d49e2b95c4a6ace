//! Building a manager: its tiers from the config (or the caller's), the index recovered
//! from SSD and Blob, and the background work started (demotion, flush, export, resync).

use std::{
    sync::{Arc, atomic::AtomicU64},
    time::Instant,
};

use kvtier_tiers::{BlobTier, BlobTierBuilder, CpuTier, CpuTierBuilder, SsdTierBuilder, Tier};
use tokio::sync::{Semaphore, mpsc};

use super::{
    Background, Hooks, Inner, LOCK_STRIPES, Limits, Manager, Role, blob, flush, flush_worker, movement, unreachable,
};
use crate::{
    Config, Error, Metrics,
    flight::{KeyLocks, SingleFlight},
    index::Index,
    policy::{NodePolicy, PolicyKind},
    tasks::Tasks,
};

/// The tiers a node is built over.
pub(crate) struct Tiers {
    cpu: CpuTier,
    ssd: Option<Arc<dyn Tier>>,
    blob: Option<Arc<BlobTier>>,
}

impl Tiers {
    /// Every tier as `config` sets it.
    pub(crate) async fn from_config(config: &Config) -> Result<Tiers, Error> {
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
        Ok(Tiers { cpu, ssd, blob: blob_tier(config)? })
    }

    /// The caller's CPU and slow tiers, no Blob tier.
    pub(crate) fn given(cpu: CpuTier, ssd: Option<Arc<dyn Tier>>) -> Tiers {
        Tiers { cpu, ssd, blob: None }
    }

    /// The caller's CPU and slow tiers, the Blob tier `config` names.
    pub(crate) fn given_with_blob(cpu: CpuTier, ssd: Arc<dyn Tier>, config: &Config) -> Result<Tiers, Error> {
        Ok(Tiers { cpu, ssd: Some(ssd), blob: blob_tier(config)? })
    }

    /// Whether write-back blocks flush to Blob (there are an SSD and a Blob tier).
    pub(crate) fn flushes(&self) -> bool {
        self.ssd.is_some() && self.blob.is_some()
    }
}

impl Manager {
    /// Builds the tiers from `config`, recovers the SSD tier's blocks into the index and
    /// starts the background work. Every key is a plain block: named objects are opened
    /// with [`crate::Objects::open`], which builds its node. Must run inside a tokio runtime.
    pub async fn open(config: &Config, metrics: Metrics) -> Result<Self, Error> {
        let tiers = Tiers::from_config(config).await?;
        Self::build(tiers, config, metrics, None, Tasks::default(), None).await
    }

    /// Assembles a manager over tiers built by the caller (tests use a [`kvtier_tiers::MemoryTier`]
    /// as the slow tier).
    pub async fn with_tiers(
        cpu: CpuTier,
        ssd: Option<Arc<dyn Tier>>,
        config: &Config,
        metrics: Metrics,
    ) -> Result<Self, Error> {
        Self::build(Tiers::given(cpu, ssd), config, metrics, None, Tasks::default(), None).await
    }

    /// Builds a node over `tiers`, its members reached through `dialer` instead of TCP when
    /// given (the cluster simulation of `kvtier-bench sim` runs many nodes in one process),
    /// its background work on `tasks`, the layer above told what it asks through `hooks`.
    pub(crate) async fn build(
        tiers: Tiers,
        config: &Config,
        metrics: Metrics,
        dialer: Option<crate::cluster::Dialer>,
        tasks: Tasks,
        hooks: Option<Arc<dyn Hooks>>,
    ) -> Result<Self, Error> {
        let Tiers { cpu, ssd, blob } = tiers;
        let cluster = crate::cluster::Cluster::from_config(config, metrics.clone(), dialer)?;
        let (demote_tx, demote_rx) = mpsc::unbounded_channel();
        let (orphans_tx, orphans_rx) = mpsc::unbounded_channel();
        let background = Arc::new(Background::default());
        let listener_tx = demote_tx.clone();
        let (queue, listener_bg) = (metrics.demotion_queue.clone(), background.clone());
        let (namespaces, roles) = (config.clone(), hooks.clone());
        let policy = NodePolicy::new(
            cpu.capacity(),
            move |key, read| {
                queue.inc();
                listener_bg.start();
                // The receiver lives as long as the manager; a send after shutdown is moot.
                let _ = listener_tx.send((key, read));
            },
            move |key| policy_of(&namespaces, roles.as_deref(), key),
        );
        let cpu_capacity = cpu.capacity();
        let flusher = match (&ssd, &blob) {
            (Some(ssd), Some(blob)) => {
                let capacity = ssd.usage().await?.capacity;
                Some(Arc::new(flush::Flusher::new(blob.clone(), capacity, config)))
            }
            _ => None,
        };
        let inner = Arc::new(Inner {
            cpu: Arc::new(cpu),
            ssd,
            blob,
            flusher: flusher.clone(),
            hooks,
            blob_deletes: super::blob_deletes::BlobDeletes::open(
                config.in_data_dir(std::path::Path::new("blob-deletes")),
            ),
            config: config.clone(),
            index: Index::default(),
            policy,
            locks: KeyLocks::new(LOCK_STRIPES),
            ownership: parking_lot::Mutex::new(None),
            copies_in_flight: Default::default(),
            flushed_ahead: moka::sync::Cache::builder()
                .max_capacity(65_536)
                .time_to_live(std::time::Duration::from_secs(300))
                .build(),
            ssd_reads: SingleFlight::new(tasks.clone()),
            blob_reads: SingleFlight::new(tasks.clone()),
            read_slots: Semaphore::new(config.ssd.max_concurrent_reads),
            transfer: Arc::new(Semaphore::new(config.server.transfer_budget.0 as usize)),
            reserved: Arc::new(AtomicU64::new(0)),
            demote_tx,
            orphans_tx,
            pinned_orphans: Default::default(),
            read_speeds: Default::default(),
            background,
            tasks,
            metrics,
            namespaces: Default::default(),
            limits: Limits {
                max_block_size: config.max_block_size.0,
                transfer_budget: config.server.transfer_budget.0,
                reserve_limit: cpu_capacity / 4,
            },
            started: Instant::now(),
            cluster: cluster.clone(),
        });
        inner.rebuild_index().await?;
        let blob_loaded = inner.load_blob().await?;
        movement::spawn_demotion_worker(&inner, demote_rx, config.cpu.demotion_concurrency);
        unreachable::spawn_worker(&inner, orphans_rx);
        if let Some(flusher) = flusher {
            // Write-back blocks on SSD that Blob lacks (a kill -9 before their flush).
            let unflushed = inner.forget_write_back_of_cache_only();
            if !unflushed.is_empty() {
                tracing::info!(blocks = unflushed.len(), bytes = inner.index.unflushed(), "queueing unflushed blocks");
            }
            for key in unflushed {
                inner.queue_flush(key, true);
            }
            flush_worker::spawn_flusher(&inner, flusher);
        }
        let blob_loaded_late = (!blob_loaded).then(|| blob::spawn_blob_loader(&inner));
        if inner.blob.is_some() {
            blob::spawn_held_delete_retries(&inner);
        }
        if let Some(blob) = &inner.blob {
            blob::spawn_compaction(&inner.tasks, blob, config.blob.compact_interval, config.blob.compact_below);
        }
        if let Some(cluster) = &cluster {
            cluster.join_etcd(config, &inner.tasks).await?;
        }
        let manager = Manager { inner, cluster, here_only: false };
        if let Some(hooks) = &manager.inner.hooks {
            hooks.clone().started(&manager, blob_loaded_late).await;
        }
        manager.spawn_resync(config.cluster.resync_interval, config.cluster.orphan_after);
        Ok(manager)
    }
}

/// The Blob tier `config` names, if any.
fn blob_tier(config: &Config) -> Result<Option<Arc<BlobTier>>, Error> {
    let Some(url) = config.blob_url() else { return Ok(None) };
    let tier = BlobTierBuilder::new(url)
        .options(config.blob.options.clone())
        .segment_size(config.blob.segment_size.0)
        .max_block_size(config.max_block_size.0)
        .retries(kvtier_tiers::Retries { max_retries: config.blob.retries, timeout: config.blob.retry_timeout })
        .build()?;
    Ok(Some(Arc::new(tier)))
}

/// The memory policy of `key`: its namespace's, else its role's (`kv` for blocks,
/// `checkpoint` for named objects' chunks and manifests).
fn policy_of(config: &Config, hooks: Option<&dyn Hooks>, key: &kvtier_tiers::BlockKey) -> PolicyKind {
    let role = hooks.map_or(Role::Block, |hooks| hooks.role(key));
    config.namespace(key.namespace.as_str()).policy.unwrap_or_else(|| role.policy())
}
