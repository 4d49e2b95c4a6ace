//! A node's usage and counters, as `Stats` answers them.

use kvtier_tiers::TierKind;
use serde::Serialize;

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
