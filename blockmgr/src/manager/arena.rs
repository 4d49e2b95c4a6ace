//! The manager's side of the shared-memory data plane: puts whose bytes a local client
//! writes straight into a CPU slot, and pins that hold a block in the arena while a client
//! copies it out. The session protocol around them lives in [`crate::shm`].

use std::time::{Duration, Instant};

use crate::NodeError;
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

/// What [`Manager::pin_batch`] did with one key.
#[derive(Debug)]
pub enum PinOutcome {
    /// Held in the arena until the pin is dropped.
    Pinned(ArenaPin),
    /// Not found, or unreadable: the miss a get would return.
    Miss(GetOutcome),
    /// Present on SSD, but no arena slot could be had to hold a copy; read it another way
    /// (gRPC streams it without the arena).
    NoRoom(String),
    /// Not tried (the batch reached its byte budget) or moved while pinned: ask again once
    /// the pins held are released.
    Later,
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
    /// demoted to SSD) for up to `wait`; then it fails with [`NodeError::Tier(TierError::NoSpace)`], and the
    /// client sends the block over gRPC instead.
    pub async fn begin_put_in_arena(
        &self,
        key: BlockKey,
        len: u64,
        expected_crc32c: Option<u32>,
        durability: Durability,
        wait: Duration,
        holding: bool,
    ) -> Result<PutWriter, NodeError> {
        let (durability, route) = self.route(&key, durability);
        self.inner.check_size(&key, len)?;
        self.inner.check_durability(&key, durability)?;
        let sink = self.reserve_in_arena(&key, len, wait, holding).await?;
        Ok(PutWriter { key, len, expected_crc32c, durability, crc32c: 0, written: 0, sink, route })
    }

    /// Reserves an arena slot for `len` bytes of `key`. When none is free, memory is
    /// reclaimed (blocks demoted to SSD) and the reservation retried for up to `wait`. A
    /// caller `holding` reservations of its own does not wait while reservations are what
    /// fills the arena: callers each holding part of a batch while waiting for the rest
    /// would hold each other up until every wait ran out.
    async fn reserve_in_arena(
        &self,
        key: &BlockKey,
        len: u64,
        wait: Duration,
        holding: bool,
    ) -> Result<Sink, NodeError> {
        let inner = &self.inner;
        let deadline = Instant::now() + wait;
        let mut asked = false;
        loop {
            if let Some(sink) = inner.try_reserve(key, len) {
                return Ok(sink);
            }
            if !asked {
                movement::reclaim_cpu(inner, len);
                asked = true;
            }
            let reserved = inner.reserved.load(std::sync::atomic::Ordering::Relaxed);
            let by_reservations = reserved + inner.cpu.footprint(len) > inner.limits.reserve_limit;
            if Instant::now() >= deadline || (holding && by_reservations) {
                return Err(NodeError::Tier(TierError::NoSpace {
                    tier: inner.cpu.to_string(),
                    capacity: inner.cpu.capacity(),
                    used: inner.reserved.load(std::sync::atomic::Ordering::Relaxed),
                    required: inner.cpu.footprint(len),
                }));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Holds `keys` in the arena for a local client, in order, until `budget` bytes are
    /// held: a block in memory is pinned where it is (zero copies); one on SSD gets a slot
    /// reserved first and is then read and copied into it (the reads run concurrently).
    /// A copy waits up to `wait` for memory to be reclaimed (not while reservations, this
    /// batch's among them, are what fills the arena); once a slot cannot be had, the keys
    /// left that need one are [`PinOutcome::NoRoom`], so no SSD read is made for a block
    /// there is no room to hold. Keys past the budget are [`PinOutcome::Later`].
    pub async fn pin_batch(&self, keys: &[BlockKey], budget: u64, wait: Duration) -> Vec<PinOutcome> {
        let mut outcomes: Vec<PinOutcome> = Vec::with_capacity(keys.len());
        let mut copies = Vec::new();
        let (mut held, mut room) = (0u64, None::<String>);
        for (i, key) in keys.iter().enumerate() {
            let entry = self.inner.index.get(key);
            if let Some(e) = &entry
                && held > 0
                && held + e.len > budget
            {
                outcomes.push(PinOutcome::Later);
                continue;
            }
            // Not in the index (a miss, counted by the get) or in memory: no slot needed.
            let Some(entry) = entry.filter(|e| !e.tiers.has(TierKind::Cpu)) else {
                let outcome = self.pin_hit(key, self.get(key).await, None);
                if let PinOutcome::Pinned(p) = &outcome {
                    held += p.len;
                }
                outcomes.push(outcome);
                continue;
            };
            if let Some(why) = &room {
                outcomes.push(PinOutcome::NoRoom(why.clone()));
                continue;
            }
            // What this batch holds may be what fills the arena; the client frees it by
            // copying out and releasing.
            match self.reserve_in_arena(key, entry.len, wait, held > 0).await {
                Ok(sink) => {
                    held += entry.len;
                    copies.push((i, entry.len, sink));
                    outcomes.push(PinOutcome::Later); // replaced below
                }
                Err(e) => {
                    let why = format!("{key}: no shared memory free to hold a copy of the block: {e}");
                    room = Some(why.clone());
                    outcomes.push(PinOutcome::NoRoom(why));
                }
            }
        }
        let reads = copies.into_iter().map(|(i, len, sink)| async move {
            let key = &keys[i];
            (i, self.pin_hit(key, self.get(key).await, Some((len, sink))))
        });
        for (i, outcome) in futures::future::join_all(reads).await {
            outcomes[i] = outcome;
        }
        outcomes
    }

    /// Pins what a get found: where it lies if it is in the arena, else a copy into the
    /// slot reserved for it (`room`: the length reserved and the slot).
    fn pin_hit(&self, key: &BlockKey, found: GetOutcome, room: Option<(u64, Sink)>) -> PinOutcome {
        let (block, tier) = match found {
            GetOutcome::Hit { block, tier } => (block, tier),
            miss => return PinOutcome::Miss(miss),
        };
        let (len, crc32c) = (block.len(), block.crc32c);
        if let Some(offset) = self.inner.cpu.arena_offset(&block.data) {
            return PinOutcome::Pinned(ArenaPin { offset, len, crc32c, tier, _hold: Hold::Resident(block) });
        }
        // A block that left memory (or was rewritten with another length) since the index
        // was read: the client asks again.
        let Some((_, sink)) = room.filter(|(reserved, _)| *reserved == len) else { return PinOutcome::Later };
        let mut copy = PutWriter {
            key: key.clone(),
            len,
            expected_crc32c: None,
            durability: Durability::Cache,
            crc32c: 0,
            written: 0,
            sink,
            route: None,
        };
        if let Err(e) = copy.write(&block.data) {
            return PinOutcome::Miss(GetOutcome::Miss { reason: MissReason::Error, message: e.to_string() });
        }
        let offset = match &copy.sink {
            Sink::Arena(r, _) => r.arena_offset(),
            Sink::Heap(..) => unreachable!("reserve_in_arena only returns arena sinks"),
        };
        PinOutcome::Pinned(ArenaPin { offset, len, crc32c, tier, _hold: Hold::Copy(copy) })
    }
}
