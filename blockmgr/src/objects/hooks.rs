//! The objects layer's side of the node's hooks (manager/hooks.rs): which keys are its
//! manifests and chunks, what it learns when a manifest is stored or deleted here, the
//! work it starts with the node and after each resync round, and its export queue as the
//! node's flusher sees it.

use std::{collections::HashSet, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use kvtier_tiers::BlockKey;

use super::{Catalog, Exports, Objects, is_chunk_key, is_manifest_key};
use crate::{
    Manager,
    manager::{ExportQueue, Hooks, Role},
};

impl Catalog {
    /// The objects on `node` this catalog describes.
    fn on(self: Arc<Self>, node: &Manager) -> Objects {
        Objects { node: node.clone(), catalog: self }
    }
}

impl Hooks for Catalog {
    fn role(&self, key: &BlockKey) -> Role {
        if is_manifest_key(key) {
            Role::Record
        } else if is_chunk_key(key) {
            Role::Piece
        } else {
            Role::Block
        }
    }

    fn started<'a>(
        self: Arc<Self>,
        node: &'a Manager,
        blob_loaded: Option<tokio::sync::oneshot::Receiver<()>>,
    ) -> BoxFuture<'a, ()> {
        let objects = self.on(node);
        Box::pin(async move {
            objects.rebuild_catalog().await;
            if let Some(loaded) = blob_loaded {
                objects.spawn_learn_when_blob_loads(loaded);
            }
            objects.spawn_exporter();
            objects.spawn_version_upkeep();
            if objects.node.cluster().is_none() {
                // Exported objects' chunks read as write-back again after a restart (the SSD
                // keeps the mark); a cluster does this after each resync, asking the members.
                objects.release_what_blob_has().await;
            }
        })
    }

    fn stored<'a>(self: Arc<Self>, node: &'a Manager, key: &'a BlockKey) -> BoxFuture<'a, ()> {
        let objects = self.on(node);
        Box::pin(async move { objects.learn_manifest(key).await })
    }

    fn deleted(&self, key: &BlockKey) {
        self.forget_manifest(key);
    }

    fn resynced<'a>(self: Arc<Self>, node: &'a Manager, orphan_after: Duration) -> BoxFuture<'a, ()> {
        let objects = self.on(node);
        Box::pin(async move {
            objects.release_what_blob_has().await;
            objects.sweep_orphan_chunks(orphan_after).await;
        })
    }

    fn kept_in_blob(&self) -> HashSet<BlockKey> {
        self.marker_keys()
    }

    fn exports(&self) -> Option<&dyn ExportQueue> {
        self.exports.as_deref().map(|exports| exports as &dyn ExportQueue)
    }
}

impl ExportQueue for Exports {
    fn enqueue(&self, key: BlockKey) {
        Exports::enqueue(self, key);
    }

    fn exported(&self, key: &BlockKey) {
        Exports::exported(self, key);
    }

    fn is_exported(&self, key: &BlockKey) -> bool {
        Exports::is_exported(self, key)
    }

    fn forget(&self, key: &BlockKey) {
        Exports::forget(self, key);
    }

    fn backlog(&self) -> (usize, Duration) {
        Exports::backlog(self)
    }
}
