//! The manager's public value types: durability, outcomes, stats.

use kvtier_tiers::{Block, PutStatus, TierKind};
use serde::Serialize;

/// When a put is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Once in the fastest tier with room (possibly memory only).
    #[default]
    Cache,
    /// Once on the SSD tier: survives a kill -9 of the server.
    LocalDisk,
    /// Once on the SSD tier, then flushed to the Blob tier in the background; the node
    /// keeps a local copy until Blob has one (across restarts).
    WriteBack,
}

impl std::str::FromStr for Durability {
    type Err = String;

    /// `cache`, `local_disk` (or `disk`), `write_back`; `Err` says what is accepted.
    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "cache" => Ok(Durability::Cache),
            "local_disk" | "disk" => Ok(Durability::LocalDisk),
            "write_back" => Ok(Durability::WriteBack),
            other => Err(format!("durability {other:?}: use \"cache\", \"local_disk\" or \"write_back\"")),
        }
    }
}

impl Durability {
    /// Whether the put is acknowledged only once on SSD.
    pub fn on_disk(self) -> bool {
        matches!(self, Durability::LocalDisk | Durability::WriteBack)
    }

    /// The name used in configuration, the CLI and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Cache => "cache",
            Durability::LocalDisk => "local_disk",
            Durability::WriteBack => "write_back",
        }
    }
}

/// Result of a put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutOutcome {
    /// Stored, or already present (a no-op).
    pub status: PutStatus,
    /// The fastest tier now holding the block.
    pub tier: TierKind,
}

/// Why a get found nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MissReason {
    /// No tier holds the key.
    NotFound,
    /// The only copy failed its checksum and was dropped.
    ChecksumMismatch,
    /// A tier failed to read it.
    Error,
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

/// Usage and counters of one tier.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TierStats {
    /// Which tier (serialized as `cpu`, `ssd`).
    #[serde(serialize_with = "serialize_tier")]
    pub tier: TierKind,
    /// Identity, e.g. `ssd(/var/lib/kvtier/ssd)`.
    pub name: String,
    /// Capacity in bytes.
    pub capacity_bytes: u64,
    /// Allocated bytes.
    pub used_bytes: u64,
    /// Blocks held.
    pub blocks: u64,
    /// Gets served from this tier.
    pub hits: u64,
    /// Block bytes read from it.
    pub bytes_read: u64,
    /// Block bytes written to it.
    pub bytes_written: u64,
    /// Blocks removed from it to make room.
    pub evictions: u64,
}

fn serialize_tier<S: serde::Serializer>(tier: &TierKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(tier.as_str())
}

/// Node-wide usage and counters.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Stats {
    /// Server version.
    pub version: String,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// Per tier, fastest first.
    pub tiers: Vec<TierStats>,
    /// Blocks in the index.
    pub index_blocks: u64,
    /// Blocks put (stored or already present).
    pub puts: u64,
    /// Blocks asked for.
    pub gets: u64,
    /// Gets served.
    pub hits: u64,
    /// Gets not served.
    pub misses: u64,
    /// Blocks moved to a slower tier.
    pub demotions: u64,
    /// Blocks copied to a faster tier.
    pub promotions: u64,
    /// Copies that failed their checksum.
    pub checksum_failures: u64,
    /// Blocks that left the node to make room or after an error.
    pub dropped: u64,
    /// Bytes written with write-back durability that Blob does not hold yet.
    pub unflushed_bytes: u64,
    /// Blocks waiting in the flush queue.
    pub flush_queue: u64,
    /// Blocks flushed to Blob since start.
    pub flushed_blocks: u64,
    /// Per namespace, busiest first (namespaces beyond the first 1024 seen share `other`).
    pub namespaces: Vec<NamespaceStats>,
}

/// One namespace's counters on this node.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct NamespaceStats {
    /// The namespace (or `other`).
    pub namespace: String,
    /// Blocks put (stored or already present).
    pub puts: u64,
    /// Gets served.
    pub hits: u64,
    /// Gets not served.
    pub misses: u64,
    /// Block bytes served.
    pub bytes_read: u64,
}
