//! The catalog at start: rebuilt from the manifests a node holds.

use std::collections::{HashMap, HashSet};

use kvtier_tiers::{BlockKey, Namespace};

use super::Objects;
use super::{ObjectInfo, chunk_id, is_manifest_key, manifest_key};
use crate::GetOutcome;
use crate::keys::{CHUNK, MANIFEST};

impl Objects {
    /// Once Blob, unreachable at start, is loaded: learns the manifests only Blob holds (this
    /// node's own segments), which the catalog rebuilt at start could not see. Without it a
    /// version kept only there (a delete marker above all, its SSD copy evicted) was missing
    /// until the next start, and a stale copy of the version before, handed to the node
    /// meanwhile, took its place and was flushed anew: a deleted file came back in the
    /// 1000-fault run. It holds the manager weakly.
    pub(crate) fn spawn_learn_when_blob_loads(&self, loaded: tokio::sync::oneshot::Receiver<()>) {
        let (weak, tasks) = (self.downgrade(), self.node.tasks().clone());
        self.node.tasks().spawn(async move {
            if !matches!(tasks.unless_stopped(loaded).await, Some(Ok(()))) {
                return;
            }
            let Some(manager) = weak.upgrade() else { return };
            let keys: Vec<_> = manager
                .node
                .keys_with_prefix(MANIFEST)
                .into_iter()
                .filter(|k| manager.node.only_in_own_blob(k))
                .collect();
            tracing::info!(
                manifests = keys.len(),
                "objects: learning the manifests only Blob holds (loaded after the start)"
            );
            manager.spawn_learn_unread(keys);
        });
    }

    /// Learns `keys`, manifests this node holds, as each can be read: those whose read failed
    /// (Blob out of reach for a moment) are tried again with backoff (1 s to 30 s) for as
    /// long as the index holds them. The catalog rebuilt at start once skipped such a
    /// manifest until the next start: a delete marker among them let a stale copy of the
    /// deleted version take its place (the 1000-fault run). It holds the manager weakly.
    pub(crate) fn spawn_learn_unread(&self, mut keys: Vec<BlockKey>) {
        if keys.is_empty() {
            return;
        }
        let (weak, tasks) = (self.downgrade(), self.node.tasks().clone());
        self.node.tasks().spawn(async move {
            let mut backoff =
                crate::backoff::Backoff::new(std::time::Duration::from_secs(1), std::time::Duration::from_secs(30));
            loop {
                let Some(manager) = weak.upgrade() else { return };
                let mut unread = Vec::new();
                for key in keys {
                    match manager.node.get_here(&key).await {
                        GetOutcome::Hit { .. } => manager.learn_manifest(&key).await,
                        // Gone meanwhile (deleted, dropped as damaged): nothing to learn.
                        _ if !manager.node.holds(&key) => {}
                        _ => unread.push(key),
                    }
                }
                if unread.is_empty() {
                    return;
                }
                let pause = backoff.next_pause();
                tracing::warn!(
                    manifests = unread.len(),
                    "objects: manifests held here cannot be read yet; next try in {pause:?}"
                );
                keys = unread;
                drop(manager);
                if !tasks.pause(pause).await {
                    return;
                }
            }
        });
    }

    /// Rebuilds the catalog from the manifests in the index (after a restart). The highest
    /// generation of a path wins; older ones (a crash mid-commit) are removed, and so are
    /// chunks no manifest names (an upload cut short by a crash).
    pub(crate) async fn rebuild_catalog(&self) {
        let mut newest: HashMap<(Namespace, String), ObjectInfo> = HashMap::new();
        let mut stale = Vec::new();
        let mut unread = Vec::new();
        for key in self.node.keys_with_prefix(MANIFEST) {
            let GetOutcome::Hit { block, .. } = self.node.get_here(&key).await else {
                unread.push(key);
                continue;
            };
            let Ok(info) = serde_json::from_slice::<ObjectInfo>(&block.data) else {
                tracing::warn!(%key, "objects: skipping a manifest that does not parse");
                continue;
            };
            let slot = (key.namespace.clone(), info.path.clone());
            match newest.get(&slot) {
                Some(have) if have.generation >= info.generation => stale.push((slot.0, info)),
                _ => {
                    if let Some(older) = newest.insert(slot.clone(), info) {
                        stale.push((slot.0, older));
                    }
                }
            }
        }
        for (ns, info) in stale {
            let keep = newest.get(&(ns.clone(), info.path.clone()));
            self.remove_generation_keeping(&ns, &info, keep).await;
        }
        if !newest.is_empty() {
            tracing::info!(objects = newest.len(), "objects: catalog rebuilt");
        }
        *self.catalog.objects.write() = newest.clone();
        let unread: Vec<BlockKey> = unread.into_iter().filter(|k| self.node.holds(k)).collect();
        let some_unread = !unread.is_empty();
        self.spawn_learn_unread(unread);
        if self.node.cluster().is_some() || some_unread {
            // Chunks and manifests live on different owners: a chunk without a manifest
            // here is normal. Orphans are left to a cluster-wide sweep. (Nor is a chunk an
            // orphan while a manifest that may name it could not be read.)
            return;
        }
        let live: HashSet<(Namespace, u64)> = newest
            .iter()
            .flat_map(|((ns, _), info)| info.chunk_ids().into_iter().map(move |id| (ns.clone(), id)))
            .collect();
        let mut orphans = 0usize;
        for key in self.node.keys_with_prefix(CHUNK) {
            let Some(id) = chunk_id(&key) else { continue };
            if !live.contains(&(key.namespace.clone(), id)) {
                self.node.delete(&key).await;
                orphans += 1;
            }
        }
        if orphans > 0 {
            tracing::info!(chunks = orphans, "objects: removed chunks of uploads that never committed");
        }
    }
}

impl super::Catalog {
    /// The manifest keys of the delete markers in the catalog.
    pub(crate) fn marker_keys(&self) -> std::collections::HashSet<kvtier_tiers::BlockKey> {
        let objects = self.objects.read();
        objects.iter().filter(|(_, i)| i.deleted).map(|((ns, _), i)| manifest_key(ns, &i.path, i.generation)).collect()
    }

    /// A manifest just deleted on this node: the catalog drops the version it names. (An
    /// undone commit's primary teaches the owners the version before it again.)
    pub(crate) fn forget_manifest(&self, key: &BlockKey) {
        if !is_manifest_key(key) {
            return;
        }
        self.objects.write().retain(|(ns, path), info| {
            let forgotten = *ns == key.namespace && manifest_key(ns, path, info.generation) == *key;
            // A delete marker leaving a catalog is how a deleted file can come back: said
            // every time (the fault runs' evidence when one does).
            if forgotten && info.deleted {
                tracing::info!(%ns, %path, generation = info.generation,
                    "objects: a delete marker left the catalog (its manifest was deleted here)");
            }
            !forgotten
        });
    }
}
