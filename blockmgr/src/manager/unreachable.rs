//! Blocks no prefix lookup can reach: when a block leaves the node (no tier holds it), the
//! blocks after it in the prefix chains lookups revealed can no longer be hit here (a lookup
//! stops at the first absent block; when the engine puts that parent again, it recomputes
//! and puts the children too). Keeping them only spends memory and SSD, so they go, and
//! their own children after them. Never a write-back block Blob lacks, never one on its way
//! to Blob, never a pinned one, and never while the parent is back.

use std::sync::{Arc, Weak};

use kvtier_tiers::{BlockKey, TierExt, TierKind};
use tokio::sync::mpsc;

use super::Inner;

/// A child to drop, and the parent that left.
pub(super) type Orphan = (BlockKey, BlockKey);

/// Starts the task that drops unreachable blocks, one at a time. It holds the manager
/// weakly and ends when the manager is dropped.
pub(super) fn spawn_worker(inner: &Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Orphan>) {
    let weak: Weak<Inner> = Arc::downgrade(inner);
    tokio::spawn(async move {
        while let Some((child, parent)) = rx.recv().await {
            let Some(inner) = weak.upgrade() else { break };
            inner.drop_unreachable(&child, &parent).await;
            inner.background.finish();
        }
    });
}

impl Inner {
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
        let kept = entry.unflushed() || entry.tiers.has(TierKind::Blob) || to_blob || self.policy.is_pinned(key);
        if self.index.get(parent).is_some() || kept {
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
