//! A block arriving piece by piece (`Manager::begin_put` .. `finish_put`), and the
//! guards that give back arena reservations and transfer budget.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use crate::NodeError;
use bytes::{Bytes, BytesMut};
use kvtier_tiers::{BlockKey, Error as TierError, Reservation};
use tokio::sync::OwnedSemaphorePermit;

use super::Durability;

/// Where the bytes of an incoming block are being written.
pub(super) enum Sink {
    Arena(Reservation, ReservedBytes),
    Heap(BytesMut, OwnedSemaphorePermit),
}

/// Returns reserved arena bytes to the manager's count on drop.
pub(super) struct ReservedBytes(pub(super) Arc<AtomicU64>, pub(super) u64);

impl Drop for ReservedBytes {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::Relaxed);
    }
}

/// A block being received. Dropping it abandons the block and frees its space.
pub struct PutWriter {
    pub(super) key: BlockKey,
    pub(super) len: u64,
    pub(super) expected_crc32c: Option<u32>,
    pub(super) durability: Durability,
    pub(super) crc32c: u32,
    pub(super) written: u64,
    pub(super) sink: Sink,
    /// Where the other copies go, with a cluster.
    pub(super) route: Option<Box<super::replicas::Route>>,
}

impl fmt::Debug for PutWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PutWriter({} {}/{} bytes)", self.key, self.written, self.len)
    }
}

impl PutWriter {
    /// Appends bytes; refuses bytes past the declared length.
    pub fn write(&mut self, data: &[u8]) -> Result<(), NodeError> {
        let end = self.written + data.len() as u64;
        if end > self.len {
            return Err(NodeError::Tier(TierError::InvalidSize {
                key: self.key.to_string(),
                size: end,
                max: self.len,
            }));
        }
        match &mut self.sink {
            Sink::Arena(r, _) => r.write(data)?,
            Sink::Heap(buf, _) => buf.extend_from_slice(data),
        }
        self.crc32c = kvtier_tiers::crc32c_append(self.crc32c, data);
        self.written = end;
        Ok(())
    }

    /// The block's key.
    pub fn key(&self) -> &BlockKey {
        &self.key
    }

    /// Declared length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for a zero-length block (never: they are refused).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes received so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// True once every declared byte arrived.
    pub fn is_complete(&self) -> bool {
        self.written == self.len
    }

    /// Where the block's bytes go in the CPU arena, when they go there (see
    /// [`super::Manager::begin_put_in_arena`]).
    pub fn arena_offset(&self) -> Option<u64> {
        match &self.sink {
            Sink::Arena(r, _) => Some(r.arena_offset()),
            Sink::Heap(..) => None,
        }
    }

    /// Declares the block's bytes written through the shared arena mapping. With `verify`
    /// (or when the client declared no checksum) the checksum is computed over the bytes now
    /// in the slot, so a declared one that disagrees fails the commit; without, the declared
    /// checksum is taken as is and a wrong one only shows when the block is read back.
    /// `declared` replaces the checksum given when the put began, if any.
    pub fn mark_filled(&mut self, declared: Option<u32>, verify: bool) -> Result<(), NodeError> {
        let Sink::Arena(reservation, _) = &mut self.sink else {
            return Err(NodeError::Tier(TierError::Unsupported {
                tier: "manager".into(),
                what: format!("{}: the block is not in the shared arena", self.key),
            }));
        };
        reservation.mark_filled();
        self.written = self.len;
        self.expected_crc32c = declared.or(self.expected_crc32c);
        self.crc32c = match self.expected_crc32c {
            Some(declared) if !verify => declared,
            _ => kvtier_tiers::crc32c(reservation.as_slice()),
        };
        Ok(())
    }
}

/// Wraps bytes so that a transfer-budget permit is held until the last clone is dropped.
pub(super) struct Budgeted(
    pub(super) Bytes,
    #[expect(dead_code, reason = "held for its Drop")] pub(super) OwnedSemaphorePermit,
);

impl AsRef<[u8]> for Budgeted {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}
