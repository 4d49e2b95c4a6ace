//! Conversions between kvtier's types and the `kvtier.v1` wire types, in one place for the
//! server and the client alike.

use kvtier_proto::v1;
use kvtier_tiers::{Error as TierError, TierKind};
use tonic::{Code, Status};

use crate::{Durability, Looked, MissReason, NamespaceStats, NodeError, Stats, TierStats};

/// `data` cut into messages of at most `max` bytes (slices of it, no copy): a gRPC
/// message must stay under both sides' limit (16 MiB), and blocks and chunks may be larger.
pub fn pieces(data: bytes::Bytes, max: usize) -> impl Iterator<Item = bytes::Bytes> {
    let max = max.max(1);
    (0..data.len()).step_by(max).map(move |at| data.slice(at..(at + max).min(data.len())))
}

/// The wire enum of a tier.
pub fn tier_to_wire(kind: TierKind) -> v1::Tier {
    match kind {
        TierKind::Gpu => v1::Tier::Gpu,
        TierKind::Cpu | TierKind::Memory => v1::Tier::Cpu,
        TierKind::Ssd => v1::Tier::Ssd,
        TierKind::Blob => v1::Tier::Blob,
        TierKind::Remote => v1::Tier::Unspecified,
    }
}

/// The tier a wire enum value names (`None` for unspecified or unknown values).
pub fn tier_from_wire(value: i32) -> Option<TierKind> {
    match v1::Tier::try_from(value).ok()? {
        v1::Tier::Gpu => Some(TierKind::Gpu),
        v1::Tier::Cpu => Some(TierKind::Cpu),
        v1::Tier::Ssd => Some(TierKind::Ssd),
        v1::Tier::Blob => Some(TierKind::Blob),
        v1::Tier::Unspecified => None,
    }
}

/// Wire durability to ours; unknown values are an error naming the value.
pub fn durability_from_wire(value: i32) -> Result<Durability, Status> {
    match v1::Durability::try_from(value) {
        Ok(v1::Durability::Cache) => Ok(Durability::Cache),
        Ok(v1::Durability::LocalDisk) => Ok(Durability::LocalDisk),
        Ok(v1::Durability::WriteBack) => Ok(Durability::WriteBack),
        Err(_) => Err(Status::invalid_argument(format!("unknown durability {value}"))),
    }
}

/// Our durability on the wire.
pub fn durability_to_wire(d: Durability) -> v1::Durability {
    match d {
        Durability::Cache => v1::Durability::Cache,
        Durability::LocalDisk => v1::Durability::LocalDisk,
        Durability::WriteBack => v1::Durability::WriteBack,
    }
}

/// Miss reason on the wire.
pub fn miss_to_wire(reason: MissReason) -> v1::MissReason {
    match reason {
        MissReason::NotFound => v1::MissReason::NotFound,
        MissReason::ChecksumMismatch => v1::MissReason::ChecksumMismatch,
        MissReason::Error => v1::MissReason::Error,
    }
}

/// Miss reason from the wire (unknown values read as errors).
pub fn miss_from_wire(value: i32) -> MissReason {
    match v1::MissReason::try_from(value) {
        Ok(v1::MissReason::NotFound) => MissReason::NotFound,
        Ok(v1::MissReason::ChecksumMismatch) => MissReason::ChecksumMismatch,
        _ => MissReason::Error,
    }
}

/// An error a node answers with, as the gRPC code that tells the caller what to do (retry,
/// fix the request, give up).
pub trait Coded: std::fmt::Display {
    /// The code.
    fn code(&self) -> Code;
}

impl Coded for TierError {
    fn code(&self) -> Code {
        match self {
            TierError::InvalidKey { .. } | TierError::InvalidSize { .. } => Code::InvalidArgument,
            TierError::NoSpace { .. } => Code::ResourceExhausted,
            TierError::Io { source, .. } if source.raw_os_error() == Some(28 /* ENOSPC */) => Code::ResourceExhausted,
            TierError::ChecksumMismatch { .. } => Code::DataLoss,
            TierError::Config { .. } => Code::FailedPrecondition,
            TierError::Unsupported { .. } => Code::FailedPrecondition,
            _ => Code::Internal,
        }
    }
}

impl Coded for NodeError {
    fn code(&self) -> Code {
        match self {
            NodeError::Tier(e) => e.code(),
            NodeError::Backpressure { .. } => Code::ResourceExhausted,
            NodeError::Closed { .. }
            | NodeError::Quorum { .. }
            | NodeError::Unreachable { .. }
            | NodeError::NotCommitted { .. } => Code::Unavailable,
        }
    }
}

/// The gRPC code for a tier's or a node's error.
pub fn code_of(e: &impl Coded) -> Code {
    e.code()
}

/// A tier's or a node's error as a gRPC status carrying its message.
pub fn status_of(e: &impl Coded) -> Status {
    Status::new(e.code(), e.to_string())
}

/// The metadata key of an error's [`Outcome`] (on a failed object put).
pub const OUTCOME_HEADER: &str = "x-kvtier-outcome";

/// What a failed write did, as S3 tells a 4xx/503 (not done) from a 500 (may have been).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing was written and nothing will appear later: retry, or give up, freely.
    NotApplied,
    /// The commit may have landed, or may yet land (a node holding a copy of the manifest
    /// did not answer): read the object to know. A retry of the same bytes is safe: it
    /// writes them again as a newer version.
    Unknown,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::NotApplied => "not-applied",
            Outcome::Unknown => "unknown",
        }
    }

    /// The outcome a status says it had; `None` when it says none.
    pub fn of(status: &Status) -> Option<Outcome> {
        match status.metadata().get(OUTCOME_HEADER)?.to_str().ok()? {
            "not-applied" => Some(Outcome::NotApplied),
            "unknown" => Some(Outcome::Unknown),
            _ => None,
        }
    }

    /// The outcome of a commit that failed with `e`: not applied when it was refused before
    /// anything was stored or undone everywhere ([`NodeError::NotCommitted`]), else unknown
    /// (a copy of the manifest may stand on a node that did not answer).
    pub fn of_commit(e: &NodeError) -> Outcome {
        match e {
            NodeError::NotCommitted { .. }
            | NodeError::Backpressure { .. }
            | NodeError::Tier(
                TierError::InvalidKey { .. }
                | TierError::InvalidSize { .. }
                | TierError::Config { .. }
                | TierError::Unsupported { .. },
            ) => Outcome::NotApplied,
            _ => Outcome::Unknown,
        }
    }

    /// `status` saying it had this outcome.
    pub fn mark(self, mut status: Status) -> Status {
        status.metadata_mut().insert(OUTCOME_HEADER, tonic::metadata::MetadataValue::from_static(self.as_str()));
        status
    }
}

/// A per-block status on the wire.
pub fn block_status(result: Result<(), &NodeError>) -> v1::BlockStatus {
    match result {
        Ok(()) => v1::BlockStatus { code: Code::Ok as u32, message: String::new() },
        Err(e) => v1::BlockStatus { code: code_of(e) as u32, message: e.to_string() },
    }
}

impl From<TierStats> for v1::TierStats {
    fn from(t: TierStats) -> Self {
        v1::TierStats {
            tier: tier_to_wire(t.tier) as i32,
            name: t.name,
            capacity_bytes: t.capacity_bytes,
            used_bytes: t.used_bytes,
            blocks: t.blocks,
            hits: t.hits,
            bytes_read: t.bytes_read,
            bytes_written: t.bytes_written,
            evictions: t.evictions,
        }
    }
}

/// `Err` names an unknown tier value.
impl TryFrom<v1::TierStats> for TierStats {
    type Error = String;

    fn try_from(t: v1::TierStats) -> Result<Self, String> {
        Ok(TierStats {
            tier: tier_from_wire(t.tier).ok_or_else(|| format!("unknown tier {} in stats", t.tier))?,
            name: t.name,
            capacity_bytes: t.capacity_bytes,
            used_bytes: t.used_bytes,
            blocks: t.blocks,
            hits: t.hits,
            bytes_read: t.bytes_read,
            bytes_written: t.bytes_written,
            evictions: t.evictions,
        })
    }
}

impl From<NamespaceStats> for v1::NamespaceStats {
    fn from(n: NamespaceStats) -> Self {
        v1::NamespaceStats {
            namespace: n.namespace,
            puts: n.puts,
            hits: n.hits,
            misses: n.misses,
            bytes_read: n.bytes_read,
        }
    }
}

impl From<v1::NamespaceStats> for NamespaceStats {
    fn from(n: v1::NamespaceStats) -> Self {
        NamespaceStats {
            namespace: n.namespace,
            puts: n.puts,
            hits: n.hits,
            misses: n.misses,
            bytes_read: n.bytes_read,
        }
    }
}

impl From<Stats> for v1::StatsResponse {
    fn from(s: Stats) -> Self {
        v1::StatsResponse {
            version: s.version,
            uptime_seconds: s.uptime_seconds,
            tiers: s.tiers.into_iter().map(Into::into).collect(),
            index_blocks: s.index_blocks,
            puts: s.puts,
            gets: s.gets,
            hits: s.hits,
            misses: s.misses,
            demotions: s.demotions,
            promotions: s.promotions,
            checksum_failures: s.checksum_failures,
            dropped: s.dropped,
            unflushed_bytes: s.unflushed_bytes,
            flush_queue: s.flush_queue,
            flushed_blocks: s.flushed_blocks,
            namespaces: s.namespaces.into_iter().map(Into::into).collect(),
        }
    }
}

/// `Err` names an unknown tier value.
impl TryFrom<v1::StatsResponse> for Stats {
    type Error = String;

    fn try_from(s: v1::StatsResponse) -> Result<Self, String> {
        Ok(Stats {
            version: s.version,
            uptime_seconds: s.uptime_seconds,
            tiers: s.tiers.into_iter().map(TryInto::try_into).collect::<Result<_, String>>()?,
            index_blocks: s.index_blocks,
            puts: s.puts,
            gets: s.gets,
            hits: s.hits,
            misses: s.misses,
            demotions: s.demotions,
            promotions: s.promotions,
            checksum_failures: s.checksum_failures,
            dropped: s.dropped,
            unflushed_bytes: s.unflushed_bytes,
            flush_queue: s.flush_queue,
            flushed_blocks: s.flushed_blocks,
            namespaces: s.namespaces.into_iter().map(Into::into).collect(),
        })
    }
}

/// A lookup's answer on the wire.
pub fn looked_to_wire(looked: Looked) -> v1::LookupResponse {
    v1::LookupResponse {
        prefix_len: looked.tiers.len() as u32,
        tiers: looked.tiers.into_iter().map(|t| tier_to_wire(t) as i32).collect(),
        load_us: looked.load_us,
        pinned: looked.pinned,
    }
}

/// A lookup's answer from the wire.
pub fn looked_from_wire(r: v1::LookupResponse) -> Result<Looked, String> {
    let tiers = r
        .tiers
        .iter()
        .map(|&t| tier_from_wire(t).ok_or_else(|| format!("unknown tier {t} in a lookup answer")))
        .collect::<Result<Vec<_>, _>>()?;
    // A node from before load costs answers none: unknown, not free.
    let load_us = if r.load_us.len() == tiers.len() { r.load_us } else { vec![u32::MAX; tiers.len()] };
    Ok(Looked { tiers, load_us, pinned: r.pinned })
}
