//! Building a manager: its tiers from the config (or the caller's), the index recovered
//! from SSD and Blob, and the background work started (demotion, flush, export, resync).

use std::{
    sync::{Arc, atomic::AtomicU64},
    time::Instant,
};

use kvtier_tiers::{BlobTier, BlobTierBuilder, CpuTier, CpuTierBuilder, SsdTierBuilder, Tier};
use tokio::sync::{Semaphore, mpsc};

use super::{Background, Inner, LOCK_STRIPES, Limits, Manager, blob, flush, flush_worker, movement, unreachable};
use crate::{
    Config, Error, Metrics,
    flight::{KeyLocks, SingleFlight},
    index::Index,
    policy::{NodePolicy, PolicyKind},
};

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
        Self::assemble(cpu, ssd, blob_tier(config)?, config, metrics, None).await
    }

    /// Assembles a manager over tiers built by the caller (tests use a [`kvtier_tiers::MemoryTier`]
    /// as the slow tier).
    pub async fn with_tiers(
        cpu: CpuTier,
        ssd: Option<Arc<dyn Tier>>,
        config: &Config,
        metrics: Metrics,
    ) -> Result<Self, Error> {
        Self::assemble(cpu, ssd, None, config, metrics, None).await
    }

    /// Assembles a manager over a CPU and a slow tier built by the caller, its Blob tier
    /// from `config`, that reaches the other members through `dialer` instead of TCP (the
    /// cluster simulation of `kvtier-bench sim` runs many such nodes in one process).
    pub async fn with_transport(
        cpu: CpuTier,
        ssd: Arc<dyn Tier>,
        config: &Config,
        metrics: Metrics,
        dialer: crate::cluster::Dialer,
    ) -> Result<Self, Error> {
        Self::assemble(cpu, Some(ssd), blob_tier(config)?, config, metrics, Some(dialer)).await
    }

    async fn assemble(
        cpu: CpuTier,
        ssd: Option<Arc<dyn Tier>>,
        blob: Option<Arc<BlobTier>>,
        config: &Config,
        metrics: Metrics,
        dialer: Option<crate::cluster::Dialer>,
    ) -> Result<Self, Error> {
        let cluster = crate::cluster::Cluster::from_config(config, metrics.clone(), dialer)?;
        let (demote_tx, demote_rx) = mpsc::unbounded_channel();
        let (orphans_tx, orphans_rx) = mpsc::unbounded_channel();
        let background = Arc::new(Background::default());
        let tasks = crate::tasks::Tasks::default();
        let listener_tx = demote_tx.clone();
        let (queue, listener_bg) = (metrics.demotion_queue.clone(), background.clone());
        let namespaces = config.clone();
        let policy = NodePolicy::new(
            cpu.capacity(),
            move |key, read| {
                queue.inc();
                listener_bg.start();
                // The receiver lives as long as the manager; a send after shutdown is moot.
                let _ = listener_tx.send((key, read));
            },
            move |key| policy_of(&namespaces, key),
        );
        let cpu_capacity = cpu.capacity();
        let flusher = match (&ssd, &blob) {
            (Some(ssd), Some(blob)) => {
                let capacity = ssd.usage().await?.capacity;
                Some(Arc::new(flush::Flusher::new(blob.clone(), capacity, config)))
            }
            _ => None,
        };
        let exports = match (&flusher, config.objects_url()) {
            (Some(_), Some(url)) => {
                let retries =
                    kvtier_tiers::Retries { max_retries: config.blob.retries, timeout: config.blob.retry_timeout };
                let options: Vec<(String, String)> = config.blob.options.clone().into_iter().collect();
                let blobs = kvtier_tiers::ObjectBlobs::open(&url, &options, retries)?;
                Some(Arc::new(crate::objects::Exports::new(
                    blobs,
                    config.blob.export_concurrency,
                    // How long a commit can still be undone: see Manager::settled.
                    4 * config.cluster.peer_timeout,
                    tasks.clone(),
                )))
            }
            _ => None,
        };
        let inner = Arc::new(Inner {
            cpu: Arc::new(cpu),
            ssd,
            blob,
            flusher: flusher.clone(),
            exports,
            blob_deletes: super::blob_deletes::BlobDeletes::open(
                config.in_data_dir(std::path::Path::new("blob-deletes")),
            ),
            config: config.clone(),
            index: Index::default(),
            policy,
            locks: KeyLocks::new(LOCK_STRIPES),
            ownership: parking_lot::Mutex::new(None),
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
        let manager = Manager {
            inner,
            catalog: Arc::new(crate::objects::Catalog::new(config.cluster.delete_marker_ttl)),
            cluster,
            here_only: false,
        };
        manager.rebuild_catalog().await;
        if let Some(loaded) = blob_loaded_late {
            manager.spawn_learn_when_blob_loads(loaded);
        }
        manager.spawn_exporter();
        manager.spawn_version_upkeep();
        if manager.cluster.is_none() {
            // Exported objects' chunks read as write-back again after a restart (the SSD
            // keeps the mark); a cluster does this after each resync, asking the members.
            manager.release_what_blob_has().await;
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

/// The memory policy of `key`: its namespace's, else `kv` for blocks and `checkpoint` for
/// named objects' chunks and manifests.
fn policy_of(config: &Config, key: &kvtier_tiers::BlockKey) -> PolicyKind {
    config.namespace(key.namespace.as_str()).policy.unwrap_or(match crate::keys::is_object_key(key) {
        true => PolicyKind::Checkpoint,
        false => PolicyKind::Kv,
    })
}
