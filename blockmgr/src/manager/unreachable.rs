//! Blocks no prefix lookup can reach: when a block leaves the node (no tier holds it), the
//! blocks after it in the prefix chains lookups revealed can no longer be hit here (a lookup
//! stops at the first absent block; when the engine puts that parent again, it recomputes
//! and puts the children too). Keeping them only spends memory and SSD, so they go, and
//! their own children after them. Never a write-back block Blob lacks, never one on its way
//! to Blob, and never while the parent is back; a pinned one goes when a get releases its
//! pin (a get releases one pin per block, in order, so a parent's can end before its
//! child's and the parent leave meanwhile).

use std::sync::{Arc, Weak};

use kvtier_tiers::{BlockKey, TierExt, TierKind};
use tokio::sync::mpsc;

use super::Inner;

/// A child to drop, and the parent that left.
pub(super) type Orphan = (BlockKey, BlockKey);

/// Pinned orphans remembered at most: past it, one stays until evicted.
const MAX_PINNED_ORPHANS: usize = 1 << 16;

/// Starts the task that drops unreachable blocks, one at a time. It holds the manager
/// weakly and ends when the manager is dropped or shuts down (what is left then is dropped
/// by eviction in its time).
pub(super) fn spawn_worker(inner: &Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Orphan>) {
    let weak: Weak<Inner> = Arc::downgrade(inner);
    let tasks = inner.tasks.clone();
    inner.tasks.spawn(async move {
        while let Some(Some((child, parent))) = tasks.unless_stopped(rx.recv()).await {
            let Some(inner) = weak.upgrade() else { break };
            inner.drop_unreachable(&child, &parent).await;
            inner.background.finish();
        }
        rx.close();
        if let Some(inner) = weak.upgrade() {
            while rx.try_recv().is_ok() {
                inner.background.finish();
            }
        }
    });
}

impl Inner {
    /// A get read `key`: its pin ends, and if only that pin kept it though its parent had
    /// left, it is queued to be dropped now.
    pub(super) fn unpin(&self, key: &BlockKey) {
        self.policy.unpin(key);
        let parent = self.pinned_orphans.lock().remove(key);
        if let Some(parent) = parent {
            self.background.start();
            if self.orphans_tx.send((key.clone(), parent)).is_err() {
                self.background.finish();
            }
        }
    }

    /// `key` left the node: queue the blocks its departure left unreachable.
    pub(super) fn left_node(&self, key: &BlockKey) {
        for child in self.policy.departed(key) {
            self.background.start();
            if self.orphans_tx.send((child, key.clone())).is_err() {
                self.background.finish();
            }
        }
    }

    async fn drop_unreachable(&self, key: &BlockKey, parent: &BlockKey) {
        let _guard = self.locks.lock(key).await;
        let Some(entry) = self.index.get(key) else { return };
        let to_blob = self.flusher.is_some() && self.flushable(key);
        let kept = entry.unflushed() || entry.tiers.has(TierKind::Blob) || to_blob;
        if self.index.get(parent).is_some() || kept {
            return;
        }
        if self.policy.is_pinned(key) {
            let mut waiting = self.pinned_orphans.lock();
            if waiting.len() < MAX_PINNED_ORPHANS {
                waiting.insert(key.clone(), parent.clone());
            }
            return;
        }
        self.policy.forget(key);
        self.policy.ssd_forget(key);
        if entry.tiers.has(TierKind::Cpu) {
            let _ = self.cpu.delete(key).await;
        }
        if let (true, Some(ssd)) = (entry.tiers.has(TierKind::Ssd), &self.ssd)
            && let Err(e) = ssd.delete(key).await
        {
            tracing::warn!(%key, error = %e, "dropping an unreachable block's SSD copy failed");
        }
        self.index.remove(key);
        self.metrics.unreachable_dropped.inc();
        self.left_node(key);
    }
}
