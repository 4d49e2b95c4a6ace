//! The manager's outcomes (its value types shared with clients are in `kvtier-types`).

use kvtier_tiers::{Block, PutStatus, TierKind};
use kvtier_types::MissReason;

/// Result of a put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutOutcome {
    /// Stored, or already present (a no-op).
    pub status: PutStatus,
    /// The fastest tier now holding the block.
    pub tier: TierKind,
}

/// Result of a get.
#[derive(Debug, Clone)]
pub enum GetOutcome {
    /// The block and the tier it was read from.
    Hit {
        /// The block.
        block: Block,
        /// Where it came from.
        tier: TierKind,
    },
    /// Nothing returned, and why.
    Miss {
        /// Why.
        reason: MissReason,
        /// Details for logs and clients.
        message: String,
    },
}

impl GetOutcome {
    pub(super) fn not_found() -> Self {
        GetOutcome::Miss { reason: MissReason::NotFound, message: "not found".into() }
    }
}
