//! The manager's side of the shared-memory data plane: puts whose bytes a local client
//! writes straight into a CPU slot, and pins that hold a block in the arena while a client
//! copies it out. The session protocol around them lives in [`crate::shm`].

use std::time::{Duration, Instant};

use kvtier_tiers::{Block, BlockKey, CpuTier, Error as TierError, TierKind};

use super::{Durability, GetOutcome, Manager, MissReason, PutWriter, movement, writer::Sink};

/// A block held in the CPU arena for a local client to read through the shared mapping.
/// The slot stays valid (never freed or reused) until this is dropped.
#[derive(Debug)]
pub struct ArenaPin {
    /// Offset of the block's bytes in the arena.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// CRC-32C of the bytes.
    pub crc32c: u32,
    /// The tier the block was found in.
    pub tier: TierKind,
    _hold: Hold,
}

/// What keeps a pinned slot alive.
#[derive(Debug)]
enum Hold {
    /// A block that lives in the arena: its bytes hold a slot reference.
    Resident(#[expect(dead_code, reason = "held for its Drop")] Block),
    /// A copy of a block from a slower tier in a reserved, never committed slot.
    Copy(#[expect(dead_code, reason = "held for its Drop")] PutWriter),
}

impl Manager {
    /// The CPU tier, whose arena the shm data plane shares.
    pub fn cpu_tier(&self) -> &CpuTier {
        &self.inner.cpu
    }

    /// Starts a put whose bytes a local client writes into a CPU slot through the shared
    /// mapping ([`PutWriter::arena_offset`]), then [`PutWriter::mark_filled`] and
    /// [`Manager::finish_put`]. When the arena has no free slot, memory is reclaimed (blocks
    /// demoted to SSD) for up to `wait`; then it fails with [`TierError::NoSpace`], and the
    /// client sends the block over gRPC instead.
    pub async fn begin_put_in_arena(
        &self,
        key: BlockKey,
        len: u64,
        expected_crc32c: Option<u32>,
        durability: Durability,
        wait: Duration,
    ) -> Result<PutWriter, TierError> {
        self.inner.check_size(&key, len)?;
        self.inner.check_durability(durability)?;
        let sink = self.reserve_in_arena(&key, len, wait).await?;
        Ok(PutWriter { key, len, expected_crc32c, durability, crc32c: 0, written: 0, sink })
    }

    /// Reserves an arena slot for `len` bytes of `key`. When none is free, memory is
    /// reclaimed (blocks demoted to SSD) and the reservation retried for up to `wait`.
    async fn reserve_in_arena(&self, key: &BlockKey, len: u64, wait: Duration) -> Result<Sink, TierError> {
        let inner = &self.inner;
        let deadline = Instant::now() + wait;
        let mut asked = false;
        loop {
            if let Some(sink) = inner.try_reserve(key, len) {
                return Ok(sink);
            }
            if Instant::now() >= deadline {
                return Err(TierError::NoSpace {
                    tier: inner.cpu.to_string(),
                    capacity: inner.cpu.capacity(),
                    used: inner.reserved.load(std::sync::atomic::Ordering::Relaxed),
                    required: inner.cpu.footprint(len),
                });
            }
            if !asked {
                inner.policy.run_pending();
                movement::reclaim_cpu(inner, len);
                asked = true;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Reads `key` and holds it in the arena for a local client: a block in memory is
    /// pinned where it is (zero copies); one from SSD is copied into a slot first, waiting
    /// up to `wait` for memory to be reclaimed. A miss (or no slot for the copy in time) is
    /// returned as the [`GetOutcome::Miss`] it is.
    pub async fn pin(&self, key: &BlockKey, wait: Duration) -> Result<ArenaPin, GetOutcome> {
        let (block, tier) = match self.get(key).await {
            GetOutcome::Hit { block, tier } => (block, tier),
            miss => return Err(miss),
        };
        let (len, crc32c) = (block.len(), block.crc32c);
        if let Some(offset) = self.inner.cpu.arena_offset(&block.data) {
            return Ok(ArenaPin { offset, len, crc32c, tier, _hold: Hold::Resident(block) });
        }
        let sink = self.reserve_in_arena(key, len, wait).await.map_err(|e| GetOutcome::Miss {
            reason: MissReason::Error,
            message: format!("{key}: no memory to pin a copy of the block read from {tier}: {e}"),
        })?;
        let mut copy = PutWriter {
            key: key.clone(),
            len,
            expected_crc32c: None,
            durability: Durability::Cache,
            crc32c: 0,
            written: 0,
            sink,
        };
        copy.write(&block.data).map_err(|e| GetOutcome::Miss { reason: MissReason::Error, message: e.to_string() })?;
        let offset = match &copy.sink {
            Sink::Arena(r, _) => r.arena_offset(),
            Sink::Heap(..) => unreachable!("try_reserve only returns arena sinks"),
        };
        Ok(ArenaPin { offset, len, crc32c, tier, _hold: Hold::Copy(copy) })
    }
}
