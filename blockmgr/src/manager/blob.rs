//! The Blob tier in the manager: what it holds is indexed at start (so a node with an empty
//! disk serves every block under its prefix), and a block found only there is read through
//! (one GET per key however many readers ask at once) and cached in memory on the way back.

use std::{sync::Arc, time::Duration};

use kvtier_tiers::{BlobTier, BlockKey, Error as TierError, Tier, TierExt, TierKind};

use super::{Budgeted, Inner};
use crate::{
    Error, GetOutcome, MissReason,
    index::{Entry, TierSet},
    tasks::Tasks,
};

impl Inner {
    /// Replays the Blob tier's records and indexes its blocks. Answers false when the store
    /// cannot be reached (it is then loaded in the background, see [`spawn_blob_loader`]);
    /// a refusal (wrong credentials, a missing container) is an error: the node should not
    /// start on a broken configuration.
    pub(super) async fn load_blob(&self) -> Result<bool, Error> {
        let Some(blob) = &self.blob else { return Ok(true) };
        match blob.load().await {
            Ok(()) => {
                self.apply_held_blob_deletes().await;
                self.index_blob().await?;
                Ok(true)
            }
            Err(e) if e.is_unreachable() => {
                tracing::warn!(
                    tier = %blob,
                    error = %e,
                    "Blob is unreachable at start: serving the local tiers; write-back blocks wait on SSD until it answers"
                );
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes `key`'s Blob copy, if any. One that cannot be deleted now (Blob down, or not
    /// loaded yet) is held on disk and retried (see `blob_deletes.rs`), so a copy a restart
    /// finds does not come back.
    pub(super) async fn delete_from_blob(&self, key: &BlockKey) {
        let Some(blob) = &self.blob else { return };
        if blob.is_loaded() {
            match blob.delete(key).await {
                Ok(_) => return,
                Err(e) => tracing::warn!(%key, error = %e, "deleting the Blob copy failed; held and retried"),
            }
        }
        self.blob_deletes.hold(key).await;
    }

    /// Makes the held Blob deletes it can (the tier loaded): how many are still held.
    pub(super) async fn apply_held_blob_deletes(&self) -> usize {
        let Some(blob) = &self.blob else { return 0 };
        let held = self.blob_deletes.keys();
        if held.is_empty() || !blob.is_loaded() {
            return held.len();
        }
        let results = blob.delete_batch(&held).await;
        let done: Vec<BlockKey> =
            held.iter().zip(&results).filter(|(_, r)| r.is_ok()).map(|(k, _)| k.clone()).collect();
        if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
            tracing::warn!(blocks = held.len() - done.len(), error = %e, "held Blob deletes failed again; retrying later");
        }
        self.blob_deletes.drop_keys(&done).await;
        self.blob_deletes.len()
    }

    /// Indexes the Blob tier's blocks. Runs after SSD recovery: a block in both keeps both
    /// copies; where the two differ (a key stored again locally) the local one wins.
    pub(super) async fn index_blob(&self) -> Result<(), Error> {
        let Some(blob) = &self.blob else { return Ok(()) };
        let blocks = blob.blocks().await?;
        // A copy whose delete is still held is not indexed: it is deleted, not lost.
        let held = self.blob_deletes.set();
        for b in blocks.iter().filter(|b| !held.contains(&b.key)) {
            match self.index.get(&b.key) {
                Some(e) if e.len == b.len && e.crc32c == b.crc32c => {
                    self.index.set_tiers(&b.key, e.tiers.with(TierKind::Blob));
                }
                Some(_) => {}
                None => {
                    let entry = Entry::new(b.len, b.crc32c, TierSet::of(TierKind::Blob));
                    self.index.insert(b.key.clone(), entry);
                }
            }
        }
        tracing::info!(blocks = blocks.len(), tier = %blob, "blob blocks indexed");
        Ok(())
    }

    /// One Blob read of `key` (callers coalesce through single flight). A good copy is
    /// cached in memory, then returned; a bad or vanished one leaves the index.
    pub(super) async fn read_blob(self: Arc<Self>, key: BlockKey) -> GetOutcome {
        let blob = self.blob.clone().expect("indexed in Blob implies a Blob tier");
        let Some(entry) = self.index.get(&key) else { return GetOutcome::not_found() };
        // A flight that ended just before this one started has cached the block already.
        if entry.tiers.has(TierKind::Cpu)
            && let Ok(Some(block)) = self.cpu.get(&key).await
        {
            return GetOutcome::Hit { block, tier: TierKind::Cpu };
        }
        let Ok(budget) = self.transfer.clone().acquire_many_owned(self.budget_permits(entry.len)).await else {
            return GetOutcome::not_found();
        };
        self.metrics.tier_reads.with_label_values(&["blob"]).inc();
        match blob.get(&key).await {
            Ok(Some(block)) if !self.is_current(&block) => GetOutcome::not_found(),
            Ok(Some(block)) => {
                // Cached before the flight ends (unlike an SSD hit, promoted in the
                // background): a get arriving after it finds memory, not a second GET.
                self.promote(block.clone(), TierKind::Blob).await;
                let data = bytes::Bytes::from_owner(Budgeted(block.data, budget));
                let block = kvtier_tiers::Block::with_crc32c(key, data, block.crc32c);
                GetOutcome::Hit { block, tier: TierKind::Blob }
            }
            Ok(None) => {
                self.drop_blob_copy(&key).await;
                GetOutcome::Miss { reason: MissReason::NotFound, message: format!("{key}: no longer in {blob}") }
            }
            Err(e @ TierError::ChecksumMismatch { .. }) => {
                self.metrics.checksum_failures.with_label_values(&["blob"]).inc();
                tracing::warn!(error = %e, "dropping a corrupt Blob copy");
                self.drop_blob_copy(&key).await;
                GetOutcome::Miss { reason: MissReason::ChecksumMismatch, message: e.to_string() }
            }
            Err(e) => {
                tracing::warn!(%key, error = %e, "Blob read failed");
                GetOutcome::Miss { reason: MissReason::Error, message: e.to_string() }
            }
        }
    }

    async fn drop_blob_copy(&self, key: &BlockKey) {
        let _guard = self.locks.lock(key).await;
        if let Some(entry) = self.index.get(key) {
            let left = entry.tiers.without(TierKind::Blob);
            self.index.set_tiers(key, left); // none left: removed
            // A write-back block still held locally must reach Blob again.
            if entry.durable && !left.is_empty() {
                self.queue_flush(key.clone(), true);
            }
        }
    }
}

/// Loads the Blob tier of a node that started while the store was unreachable: retries with
/// backoff (1 s to 30 s), then applies the deletes made meanwhile, indexes what Blob holds
/// and wakes the flusher. The receiver hears when it is done (the catalog then learns the
/// manifests only Blob holds).
pub(super) fn spawn_blob_loader(inner: &Arc<Inner>) -> tokio::sync::oneshot::Receiver<()> {
    let weak = Arc::downgrade(inner);
    let (loaded, heard) = tokio::sync::oneshot::channel();
    let tasks = inner.tasks.clone();
    inner.tasks.spawn(async move {
        let mut backoff = crate::backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let mut pause = backoff.next_pause();
        loop {
            if !tasks.pause(pause).await {
                return;
            }
            pause = backoff.next_pause();
            let Some(inner) = weak.upgrade() else { return };
            let blob = inner.blob.clone().expect("a loader implies a Blob tier");
            if let Err(e) = blob.load().await {
                tracing::warn!(tier = %blob, error = %e, "Blob still unreachable; next try in {pause:?}");
                continue;
            }
            inner.apply_held_blob_deletes().await;
            if let Err(e) = inner.index_blob().await {
                tracing::warn!(tier = %blob, error = %e, "indexing Blob after it came back failed");
            }
            if let Some(flusher) = &inner.flusher {
                flusher.wake();
            }
            tracing::info!(tier = %blob, "Blob reachable again: loaded");
            let _ = loaded.send(());
            return;
        }
    });
    heard
}

/// Retries the held Blob deletes every few seconds while there are any. Holds the manager
/// weakly: it ends with it (the deletes stay held on disk).
pub(super) fn spawn_held_delete_retries(inner: &Arc<Inner>) {
    let weak = Arc::downgrade(inner);
    let tasks = inner.tasks.clone();
    inner.tasks.spawn(async move {
        while tasks.pause(Duration::from_secs(5)).await {
            let Some(inner) = weak.upgrade() else { return };
            if inner.blob_deletes.len() > 0 {
                inner.apply_held_blob_deletes().await;
            }
        }
    });
}

/// Compacts the Blob tier every `interval` (0: never), rewriting segments less than
/// `below` live. Holds the tier weakly: it ends with the manager.
pub(super) fn spawn_compaction(tasks: &Tasks, blob: &Arc<BlobTier>, interval: Duration, below: f64) {
    if interval.is_zero() {
        return;
    }
    let weak = Arc::downgrade(blob);
    let stop = tasks.clone();
    tasks.spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while stop.unless_stopped(ticks.tick()).await.is_some() {
            let Some(blob) = weak.upgrade() else { return };
            match blob.compact(below).await {
                Ok(c) if c.segments_removed + c.deletions_removed + c.orphans_removed > 0 => {
                    tracing::info!(tier = %blob, ?c, "blob compaction");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(tier = %blob, error = %e, "blob compaction failed; next try in {interval:?}"),
            }
        }
    });
}
