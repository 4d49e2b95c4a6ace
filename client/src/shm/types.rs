//! What the shm client answers: errors, and per-block outcomes of its operations.

use std::io;

use kvtier_tiers::TierKind;
use tonic::Code;

use kvtier_types::MissReason;

/// What went wrong talking to the shm data plane.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    /// The socket failed or the server closed it.
    #[error("shm socket {path}: {source}")]
    Io {
        /// The socket path.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The server refused the request; the message is the server's.
    #[error("kvtier refused the shm request ({code:?}): {message}")]
    Refused {
        /// The gRPC-style code.
        code: Code,
        /// The server's message.
        message: String,
    },
    /// The server answered something this client does not understand.
    #[error("shm protocol: {0}")]
    Protocol(String),
}

/// Outcome of one block of a put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShmPut {
    /// Stored; the fastest tier now holding it.
    Stored(TierKind),
    /// The key was already stored: a no-op.
    Existed,
    /// Not stored, and why. `ResourceExhausted` means no shared memory was free: send the
    /// block over gRPC instead.
    Failed {
        /// The code.
        code: Code,
        /// The server's message.
        message: String,
    },
}

/// Outcome of one key of a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShmGet {
    /// Copied into the caller's buffer: its length, and the tier it came from.
    Hit {
        /// Bytes copied.
        len: usize,
        /// Where the block was.
        tier: TierKind,
    },
    /// Not read, and why.
    Miss {
        /// Why.
        reason: MissReason,
        /// Details.
        message: String,
    },
    /// The block exists, but the server had no shared memory free to hold a copy of it
    /// (it is on SSD): read it over gRPC instead.
    NoRoom {
        /// The server's message.
        message: String,
    },
}

/// A slot this session holds in the arena: an allocation to fill and commit, or a pinned
/// block to read and release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShmSlot {
    /// The session's handle for commit / release.
    pub handle: u64,
    /// Byte offset in the arena mapping.
    pub offset: u64,
    /// Bytes of the block.
    pub len: u64,
}

/// Outcome of one block of an [`ShmClient::alloc`](super::ShmClient::alloc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShmAlloc {
    /// A slot to write the block's bytes into, then commit (or release to abandon).
    Slot(ShmSlot),
    /// The key is already stored: nothing to write.
    Existed,
    /// No slot, and why. `ResourceExhausted`: no shared memory was free.
    Failed {
        /// The code.
        code: Code,
        /// The server's message.
        message: String,
    },
}

/// Outcome of one key of an [`ShmClient::pin`](super::ShmClient::pin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShmPin {
    /// Held in the arena until released; the tier it was found in.
    Pinned {
        /// Where it is.
        slot: ShmSlot,
        /// The tier it was read from.
        tier: TierKind,
    },
    /// Not pinned: a miss, or a block without room in the arena.
    Not(ShmGet),
    /// Not pinned now because this session holds too much or others' reservations fill the
    /// arena: ask again after releasing.
    Again,
}
