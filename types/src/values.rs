//! What a get, a lookup, a presence check and a conditional commit answer.

use kvtier_tiers::TierKind;
use serde::Serialize;

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

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Looked {
    /// The tier of each key of the longest present prefix.
    pub tiers: Vec<TierKind>,
    /// The expected microseconds to load each of them (the node's learned read speed per tier).
    pub load_us: Vec<u32>,
    /// Whether they are pinned until the lease ends or a get reads each.
    pub pinned: bool,
}

impl Looked {
    /// How many leading blocks load no slower than `max_load_us` (all of them for `None`):
    /// the prefix worth loading ends at the first block slower to load than to recompute.
    /// (`kvtier.loadable_prefix` is the same cut for the Python connectors.)
    pub fn loadable(&self, max_load_us: Option<u32>) -> usize {
        self.load_us.iter().take_while(|&&us| max_load_us.is_none_or(|max| us <= max)).count()
    }
}

/// A stored block: its length, and the fastest tier holding it on the node that answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presence {
    /// The block's length in bytes.
    pub length: u64,
    /// The fastest tier holding it.
    pub tier: TierKind,
}

/// What a commit requires of the path's current version (S3's conditional writes), decided
/// by the path's primary under the path's lock: of writers racing through any members, the
/// condition holds for one at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CommitIf {
    /// Nothing: the commit replaces whatever version there is.
    #[default]
    Any,
    /// No live version (`If-None-Match: *`).
    Absent,
    /// The live version is this one (`If-Match` with its ETag).
    Current {
        /// The version's generation.
        generation: u64,
        /// Its bytes' CRC-32C.
        crc32c: u32,
    },
}

impl CommitIf {
    /// From its three wire fields (`if_absent`, `if_generation`, `if_crc32c`: a put's
    /// `PutObjectOpen`, a member's `CommitObjectRequest`); a generation wins over `if_absent`.
    pub fn from_wire(if_absent: bool, if_generation: Option<u64>, if_crc32c: u32) -> Self {
        match (if_generation, if_absent) {
            (Some(generation), _) => CommitIf::Current { generation, crc32c: if_crc32c },
            (None, true) => CommitIf::Absent,
            (None, false) => CommitIf::Any,
        }
    }

    /// Its three wire fields (see [`CommitIf::from_wire`]).
    pub fn to_wire(self) -> (bool, Option<u64>, u32) {
        match self {
            CommitIf::Any => (false, None, 0),
            CommitIf::Absent => (true, None, 0),
            CommitIf::Current { generation, crc32c } => (false, Some(generation), crc32c),
        }
    }

    /// Whether a path whose live version has `live`'s (generation, CRC-32C) meets it
    /// (`None`: no live version).
    pub fn holds(self, live: Option<(u64, u32)>) -> bool {
        match self {
            CommitIf::Any => true,
            CommitIf::Absent => live.is_none(),
            CommitIf::Current { generation, crc32c } => live == Some((generation, crc32c)),
        }
    }
}
