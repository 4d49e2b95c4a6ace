//! What a node answers a store operation with: a tier's failure, or one of the node's own.

use kvtier_tiers::Error as TierError;

/// What went wrong with a put, get, delete or object operation on a node (or, through it, its
/// cluster). A tier's failures stay typed inside [`NodeError::Tier`]; the node adds what only
/// a node with replicas, write-back and commits can say. Every front end (gRPC, S3, lm://,
/// Python) classes it through [`crate::wire::code_of`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// A tier refused or failed the request (a bad key or size, a full tier, damaged bytes,
    /// a disk or Blob error).
    #[error(transparent)]
    Tier(#[from] TierError),

    /// Writes that must reach a slower tier are further behind than allowed (backpressure):
    /// the caller should retry later. Nothing was stored.
    #[error(
        "{tier}: backpressure: {waiting} bytes wait to be flushed (limit {limit}); retry later{}",
        cause.as_ref().map(|c| format!(" (the last flush failed: {c})")).unwrap_or_default()
    )]
    Backpressure {
        /// The tier being written to.
        tier: String,
        /// Bytes waiting.
        waiting: u64,
        /// The configured limit.
        limit: u64,
        /// Why the flush is behind, when a flush failed.
        cause: Option<String>,
    },

    /// Fewer nodes than the write quorum stored a block: the put is not acknowledged (the
    /// copies that were made stay, and a retry completes them).
    #[error("{key}: stored on {stored} of the {wanted} nodes the write quorum needs ({failures})")]
    Quorum {
        /// The block.
        key: String,
        /// Copies stored.
        stored: usize,
        /// Copies needed.
        wanted: usize,
        /// What each failed copy said, by node.
        failures: String,
    },

    /// A commit failed and was undone on every node it had reached: nothing of it remains
    /// or can appear later, so the write definitely did not happen (a retry is a new write).
    #[error("{what}: not committed ({cause})")]
    NotCommitted {
        /// What was being committed.
        what: String,
        /// Why it failed.
        cause: String,
    },

    /// None of the nodes that could answer was reachable.
    #[error("{what}: no node that holds it answered ({failures})")]
    Unreachable {
        /// What was asked.
        what: String,
        /// What each node said, by node.
        failures: String,
    },

    /// The node is shutting down.
    #[error("{what}: closed")]
    Closed {
        /// What was closed.
        what: String,
    },
}

impl NodeError {
    /// A request the node refuses before doing anything (a malformed key, path or range).
    pub fn invalid(reason: impl Into<String>) -> NodeError {
        NodeError::Tier(TierError::InvalidKey { reason: reason.into() })
    }

    /// The tier's error, when it is one.
    pub fn as_tier(&self) -> Option<&TierError> {
        match self {
            NodeError::Tier(e) => Some(e),
            _ => None,
        }
    }
}
