//! What the layer above the node (named objects, objects/) tells it about its keys and
//! asks to hear. The node knows no object key encoding and no object type: it asks each
//! key's [`Role`], and calls these hooks at the points where a layer built from blocks must
//! act (a record stored or deleted here, the node started, a resync round done). A node
//! opened without them ([`Manager::open`]) treats every key as a plain block.

use std::{collections::HashSet, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use kvtier_tiers::BlockKey;

use super::Manager;
use crate::policy::PolicyKind;

/// What a key is to the layer above, and so how the node keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// A block like any other.
    Block,
    /// A record of the layer above (an object's manifest): replicated and kept like a
    /// [`Role::Piece`], learnt by the layer above when stored here ([`Hooks::stored`]) and
    /// forgotten when deleted, and kept by every owner in its own Blob segments (see
    /// `Inner::keep_in_own_segments`); with [`Hooks::exports`] its flush waits for its export.
    Record,
    /// A piece of something the layer above stores whole (an object's chunk): with
    /// [`Hooks::exports`] it reaches Blob in that whole's file, never in a segment.
    Piece,
}

/// How the node keeps a key when its namespace's config leaves it open.
impl Role {
    /// The layer above's (a record or a piece).
    pub(crate) fn is_above(self) -> bool {
        self != Role::Block
    }

    /// The memory policy.
    pub(crate) fn policy(self) -> PolicyKind {
        if self.is_above() { PolicyKind::Checkpoint } else { PolicyKind::Kv }
    }

    /// The number of copies.
    pub(crate) fn replicas(self) -> usize {
        if self.is_above() { 2 } else { 1 }
    }
}

/// The layer above's side of each point where the node hands over. Methods that act take
/// the node handle that reached the point (a member's request is served by a handle acting
/// here only), and the hooks themselves as an `Arc`, to build the layer's handle from both.
pub(crate) trait Hooks: Send + Sync + 'static {
    /// What `key` is.
    fn role(&self, key: &BlockKey) -> Role;

    /// The node is built, its index recovered; `blob_loaded` resolves once a Blob index
    /// that could not be read at start is loaded. Runs before the node serves anything
    /// and before its first resync.
    fn started<'a>(
        self: Arc<Self>,
        node: &'a Manager,
        blob_loaded: Option<tokio::sync::oneshot::Receiver<()>>,
    ) -> BoxFuture<'a, ()>;

    /// A [`Role::Record`] was stored here.
    fn stored<'a>(self: Arc<Self>, node: &'a Manager, key: &'a BlockKey) -> BoxFuture<'a, ()>;

    /// A block was deleted here.
    fn deleted(&self, key: &BlockKey);

    /// A resync round ended (after each one; once at start for a node alone).
    fn resynced<'a>(self: Arc<Self>, node: &'a Manager, orphan_after: Duration) -> BoxFuture<'a, ()>;

    /// Blocks whose Blob copy is the record of a delete: resync keeps their owners' copies
    /// even where they are evictable.
    fn kept_in_blob(&self) -> HashSet<BlockKey>;

    /// Whether the layer above writes its own files to Blob (object exports): then its
    /// pieces never go to segments, and a record's flush waits for its export.
    fn exports(&self) -> Option<&dyn ExportQueue>;
}

/// The layer above's queue of files to write to Blob, as the node's flusher sees it.
pub(crate) trait ExportQueue: Send + Sync {
    /// Queues the export of the record `key` (stored here write-back).
    fn enqueue(&self, key: BlockKey);
    /// The record `key`'s file is in Blob: its segment may follow.
    fn exported(&self, key: &BlockKey);
    /// Whether `key`'s file is in Blob, its own flush still to come.
    fn is_exported(&self, key: &BlockKey) -> bool;
    /// `key` is flushed, or gone: its export needs no memory any more.
    fn forget(&self, key: &BlockKey);
    /// Exports queued, and how long the oldest has waited.
    fn backlog(&self) -> (usize, Duration);
}

impl super::Inner {
    /// What `key` is to the layer above (a plain block without one).
    pub(super) fn role(&self, key: &BlockKey) -> Role {
        self.hooks.as_ref().map_or(Role::Block, |hooks| hooks.role(key))
    }

    /// The layer above's exports to Blob, if it makes any.
    pub(super) fn exports(&self) -> Option<&dyn ExportQueue> {
        self.hooks.as_ref()?.exports()
    }
}

impl Manager {
    /// Tells the layer above that `key` is stored here, if it is one of its records.
    pub(super) async fn stored(&self, key: &BlockKey) {
        if let Some(hooks) = &self.inner.hooks
            && hooks.role(key) == Role::Record
        {
            hooks.clone().stored(self, key).await;
        }
    }

    /// Tells the layer above that `key` was deleted here.
    pub(super) fn deleted(&self, key: &BlockKey) {
        if let Some(hooks) = &self.inner.hooks {
            hooks.deleted(key);
        }
    }
}
