//! Host-memory tier: a fixed, page-aligned arena cut into slab slots.
//!
//! The arena is one `memfd` mapping (anonymous memory where memfd is unavailable) of exactly
//! the configured capacity, so memory use cannot grow past it. Blocks live in slots chosen by
//! [`crate::slab`]; block bytes never pass through the heap allocator. Slots are reference
//! counted: a reader holds its slot until it drops the returned `Bytes`, so eviction or
//! deletion never frees memory that is still being read, and reads are zero-copy.
//!
//! The memfd is kept so that the local data plane (`kvtier_blockmgr::shm`) can hand the same
//! mapping to clients on the host. It is sealed against resizing: a client holding the fd
//! could otherwise truncate it and crash the server with SIGBUS on its next access.

use std::{
    fmt,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
};

use bytes::Bytes;
use dashmap::{DashMap, mapref::entry::Entry};
use futures::future::BoxFuture;

use crate::{
    Block, BlockKey, BlockMeta, Error, PutStatus, Result, Tier, TierKind, TierUsage, human_bytes,
    slab::{Reclaim, SlabAllocator, SlabLayout, SlotAddr},
};

/// Builds a [`CpuTier`].
#[derive(Debug, Clone)]
pub struct CpuTierBuilder {
    capacity: u64,
    region_size: u64,
    max_block_size: u64,
    mlock: bool,
    prefault: bool,
}

impl CpuTierBuilder {
    /// An arena of `capacity` bytes (rounded down to whole regions).
    pub fn new(capacity: u64) -> Self {
        CpuTierBuilder { capacity, region_size: 64 << 20, max_block_size: 64 << 20, mlock: false, prefault: true }
    }

    /// Bytes per slab region; each region serves one size class at a time. Default 64 MiB.
    pub fn with_region_size(mut self, bytes: u64) -> Self {
        self.region_size = bytes;
        self
    }

    /// Largest block accepted. Default 64 MiB.
    pub fn with_max_block_size(mut self, bytes: u64) -> Self {
        self.max_block_size = bytes;
        self
    }

    /// Locks the arena into RAM (`mlock`), failing the build if the memlock limit is too
    /// low. Default false.
    pub fn with_mlock(mut self, mlock: bool) -> Self {
        self.mlock = mlock;
        self
    }

    /// Touches every page of the arena when it is built, so that puts never pay first-touch
    /// page faults (they cost a put of a fresh 2 MiB slot about as much as the copy itself)
    /// and a memory limit too small for the arena fails at startup, not under load.
    /// Default true.
    pub fn with_prefault(mut self, prefault: bool) -> Self {
        self.prefault = prefault;
        self
    }

    /// Maps the arena.
    pub fn build(self) -> Result<CpuTier> {
        let layout = SlabLayout::new("cpu", self.capacity, self.region_size, 0, 0, self.max_block_size)?;
        let mapping = Mapping::new(layout.capacity(), self.mlock, self.prefault)?;
        let slots = layout.regions as usize * layout.max_slots_per_region() as usize;
        let arena = Arc::new(Arena {
            refs: (0..slots).map(|_| AtomicU32::new(0)).collect(),
            alloc: SlabAllocator::new(layout),
            mapping,
        });
        Ok(CpuTier { arena, map: DashMap::new(), max_block_size: self.max_block_size })
    }
}

/// The mapped memory: raw (never handed out as a reference to the whole), since who may
/// touch which bytes is governed by slot ownership (writers own a slot exclusively until
/// commit; committed slots are read-only) and by the processes sharing the memfd.
#[derive(Debug)]
struct Mapping {
    map: memmap2::MmapRaw,
    memfd: Option<OwnedFd>,
}

impl Mapping {
    fn new(len: u64, mlock: bool, prefault: bool) -> Result<Self> {
        let len = usize::try_from(len).map_err(|_| Error::config("cpu.capacity", "larger than the address space"))?;
        let memfd = create_memfd(len);
        let mut options = memmap2::MmapOptions::new();
        options.len(len);
        if prefault {
            options.populate();
        }
        let mapped = match &memfd {
            Some(fd) => options.map_raw(fd.as_raw_fd()),
            None => options.map_anon().map(memmap2::MmapRaw::from),
        };
        let map = mapped.map_err(|source| Error::Io {
            tier: "cpu".into(),
            op: "mmap",
            path: "memfd:kvtier-cpu".into(),
            offset: None,
            source,
        })?;
        // Failure only loses the hint.
        let _ = map.advise(memmap2::Advice::HugePage);
        if mlock && let Err(source) = map.lock() {
            return Err(Error::config(
                "cpu.mlock",
                format!(
                    "mlock of {} failed ({source}); raise RLIMIT_MEMLOCK (ulimit -l) or set mlock = false",
                    human_bytes(len as u64)
                ),
            ));
        }
        Ok(Mapping { map, memfd })
    }

    /// The first byte of the mapping.
    fn base(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }
}

fn create_memfd(len: usize) -> Option<OwnedFd> {
    sealed_memfd(c"kvtier-cpu", len)
        .inspect_err(|e| tracing::warn!(error = %e, "no sealed memfd; the CPU arena will be private anonymous memory"))
        .ok()
}

/// A memfd of exactly `len` bytes, sealed against shrinking and growing: a process it is
/// handed to can map it but never truncate it under the server's mapping (SIGBUS).
pub fn sealed_memfd(name: &std::ffi::CStr, len: usize) -> std::io::Result<OwnedFd> {
    // SAFETY: the name is a valid NUL-terminated string.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sizing our own memfd.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: sealing our own memfd.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

struct Arena {
    mapping: Mapping,
    alloc: SlabAllocator,
    /// Per-slot reference counts: the map's entry holds one, each reader one more.
    refs: Box<[AtomicU32]>,
}

impl fmt::Debug for Arena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Arena").field("mapping", &self.mapping).field("alloc", &self.alloc).finish_non_exhaustive()
    }
}

impl Arena {
    fn slot_ptr(&self, addr: SlotAddr) -> *mut u8 {
        let offset = self.alloc.layout().slot_offset(addr) as usize;
        debug_assert!(offset + self.alloc.layout().class_size(addr.class) as usize <= self.mapping.map.len());
        // SAFETY: the offset lies inside the mapping (slab layout invariant).
        unsafe { self.mapping.base().add(offset) }
    }
}

/// A counted reference to one slot holding `len` valid bytes.
struct SlotRef {
    arena: Arc<Arena>,
    addr: SlotAddr,
    len: usize,
}

impl SlotRef {
    /// Takes a fresh slot for `len` bytes (reference count 1).
    fn alloc(arena: &Arc<Arena>, len: usize) -> Option<SlotRef> {
        let al = arena.alloc.alloc(len as u64)?;
        let i = arena.alloc.layout().slot_index(al.addr);
        arena.refs[i].store(1, Ordering::Release);
        Some(SlotRef { arena: arena.clone(), addr: al.addr, len })
    }

    fn share(&self) -> SlotRef {
        let i = self.arena.alloc.layout().slot_index(self.addr);
        self.arena.refs[i].fetch_add(1, Ordering::Relaxed);
        SlotRef { arena: self.arena.clone(), addr: self.addr, len: self.len }
    }

    /// The slot's bytes, writable. Only for a slot not yet visible to anyone else.
    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: a fresh slot is owned exclusively by its writer until it is committed.
        unsafe { std::slice::from_raw_parts_mut(self.arena.slot_ptr(self.addr), self.len) }
    }
}

impl AsRef<[u8]> for SlotRef {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: committed slots are never written again while any reference is held.
        unsafe { std::slice::from_raw_parts(self.arena.slot_ptr(self.addr), self.len) }
    }
}

impl Drop for SlotRef {
    fn drop(&mut self) {
        let i = self.arena.alloc.layout().slot_index(self.addr);
        if self.arena.refs[i].fetch_sub(1, Ordering::AcqRel) == 1 {
            self.arena.alloc.free(self.addr);
        }
    }
}

impl fmt::Debug for SlotRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "slot({:?}, {} bytes)", self.addr, self.len)
    }
}

#[derive(Debug)]
struct Stored {
    slot: SlotRef,
    crc32c: u32,
}

/// Space taken in the arena for a block that is still being written (see
/// [`CpuTier::reserve`]). Dropping it without committing frees the space.
pub struct Reservation {
    slot: SlotRef,
    written: usize,
}

impl Reservation {
    /// Appends bytes. Fails if they would run past the reserved length.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        let end = self.written + data.len();
        if end > self.slot.len {
            return Err(Error::InvalidSize {
                key: "(reservation)".into(),
                size: end as u64,
                max: self.slot.len as u64,
            });
        }
        self.slot.as_mut_slice()[self.written..end].copy_from_slice(data);
        self.written = end;
        Ok(())
    }

    /// Bytes reserved.
    pub fn len(&self) -> usize {
        self.slot.len
    }

    /// True if the reservation is for zero bytes (never: empty blocks are refused).
    pub fn is_empty(&self) -> bool {
        self.slot.len == 0
    }

    /// Bytes written so far.
    pub fn written(&self) -> usize {
        self.written
    }

    /// Where the slot lies in the arena (see [`CpuTier::memfd`]).
    pub fn arena_offset(&self) -> u64 {
        self.slot.arena.alloc.layout().slot_offset(self.slot.addr)
    }

    /// Declares every byte written by someone who shares the arena's mapping (a local
    /// client of the shm data plane) rather than through [`Reservation::write`].
    pub fn mark_filled(&mut self) {
        self.written = self.slot.len;
    }

    /// The bytes written so far.
    pub fn as_slice(&self) -> &[u8] {
        &self.slot.as_ref()[..self.written]
    }
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reservation({} of {} bytes)", self.written, self.slot.len)
    }
}

/// The host-memory tier. See the module docs.
#[derive(Debug)]
pub struct CpuTier {
    arena: Arc<Arena>,
    map: DashMap<BlockKey, Stored>,
    max_block_size: u64,
}

impl CpuTier {
    fn no_space(&self, required: u64) -> Error {
        Error::NoSpace { tier: self.to_string(), capacity: self.capacity(), used: self.arena.alloc.usage().0, required }
    }

    fn check_size(&self, key: &BlockKey, len: u64) -> Result<()> {
        crate::check_block_size(key, len, self.max_block_size)
    }

    /// Bytes of memory the arena maps.
    pub fn capacity(&self) -> u64 {
        self.arena.alloc.layout().capacity()
    }

    /// Arena bytes a block of `len` bytes occupies: its slot size.
    pub fn footprint(&self, len: u64) -> u64 {
        let layout = self.arena.alloc.layout();
        layout.class_for(len).map_or(len, |c| layout.class_size(c))
    }

    /// The arena's memfd, for sharing the mapping with local clients (None when the arena is
    /// private anonymous memory).
    pub fn memfd(&self) -> Option<BorrowedFd<'_>> {
        self.arena.mapping.memfd.as_ref().map(|fd| fd.as_fd())
    }

    /// Bytes of the arena's mapping (what a client maps from [`CpuTier::memfd`]).
    pub fn mapping_len(&self) -> u64 {
        self.arena.mapping.map.len() as u64
    }

    /// The offset in the arena of `bytes`, when they lie inside it (a block this tier
    /// returned, or a reservation's bytes); None for bytes elsewhere.
    pub fn arena_offset(&self, bytes: &[u8]) -> Option<u64> {
        let base = self.arena.mapping.base() as usize;
        let start = bytes.as_ptr() as usize;
        let inside = start >= base && start + bytes.len() <= base + self.arena.mapping.map.len();
        inside.then(|| (start - base) as u64)
    }

    /// Takes arena space for a block of `len` bytes that the caller will write piece by
    /// piece (a block arriving over the network), then [`CpuTier::commit`]. Fails with
    /// [`Error::NoSpace`] when no slot is free.
    pub fn reserve(&self, key: &BlockKey, len: u64) -> Result<Reservation> {
        self.check_size(key, len)?;
        let slot = SlotRef::alloc(&self.arena, len as usize).ok_or_else(|| self.no_space(len))?;
        Ok(Reservation { slot, written: 0 })
    }

    /// Makes a fully written reservation visible as `key`. If the key is already present
    /// the reservation is released and the answer is [`PutStatus::Existed`].
    pub fn commit(&self, key: BlockKey, reservation: Reservation, crc32c: u32) -> Result<PutStatus> {
        if reservation.written != reservation.slot.len {
            return Err(Error::InvalidSize {
                key: key.to_string(),
                size: reservation.written as u64,
                max: reservation.slot.len as u64,
            });
        }
        Ok(self.insert(key, reservation.slot, crc32c))
    }

    fn insert(&self, key: BlockKey, slot: SlotRef, crc32c: u32) -> PutStatus {
        match self.map.entry(key) {
            Entry::Occupied(_) => PutStatus::Existed,
            Entry::Vacant(v) => {
                v.insert(Stored { slot, crc32c });
                PutStatus::Stored
            }
        }
    }

    fn put_one(&self, block: &Block) -> Result<PutStatus> {
        self.check_size(&block.key, block.len())?;
        if self.map.contains_key(&block.key) {
            return Ok(PutStatus::Existed);
        }
        let mut reservation = self.reserve(&block.key, block.len())?;
        reservation.write(&block.data)?;
        self.commit(block.key.clone(), reservation, block.crc32c)
    }

    fn get_one(&self, key: &BlockKey) -> Option<Block> {
        let stored = self.map.get(key)?;
        let data = Bytes::from_owner(stored.slot.share());
        Some(Block::with_crc32c(key.clone(), data, stored.crc32c))
    }
}

impl fmt::Display for CpuTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cpu({})", human_bytes(self.capacity()))
    }
}

impl Tier for CpuTier {
    fn kind(&self) -> TierKind {
        TierKind::Cpu
    }

    fn put_batch<'a>(&'a self, blocks: &'a [Block]) -> BoxFuture<'a, Vec<Result<PutStatus>>> {
        Box::pin(async move { blocks.iter().map(|b| self.put_one(b)).collect() })
    }

    fn get_batch<'a>(&'a self, keys: &'a [BlockKey]) -> BoxFuture<'a, Vec<Result<Option<Block>>>> {
        Box::pin(async move { keys.iter().map(|k| Ok(self.get_one(k))).collect() })
    }

    fn contains_batch<'a>(&'a self, keys: &'a [BlockKey]) -> BoxFuture<'a, Result<Vec<bool>>> {
        Box::pin(async move { Ok(keys.iter().map(|k| self.map.contains_key(k)).collect()) })
    }

    fn delete_batch<'a>(&'a self, keys: &'a [BlockKey]) -> BoxFuture<'a, Vec<Result<bool>>> {
        Box::pin(async move { keys.iter().map(|k| Ok(self.map.remove(k).is_some())).collect() })
    }

    fn usage(&self) -> BoxFuture<'_, Result<TierUsage>> {
        let (used, _) = self.arena.alloc.usage();
        let usage = TierUsage { capacity: self.capacity(), used, blocks: self.map.len() as u64 };
        Box::pin(async move { Ok(usage) })
    }

    fn blocks(&self) -> BoxFuture<'_, Result<Vec<BlockMeta>>> {
        Box::pin(async move {
            Ok(self
                .map
                .iter()
                .map(|e| BlockMeta { key: e.key().clone(), len: e.slot.len as u64, crc32c: e.crc32c, durable: false })
                .collect())
        })
    }

    fn eviction_candidates(&self, size: u64, max: usize) -> Vec<BlockKey> {
        let matches: Box<dyn Fn(SlotAddr) -> bool> = match self.arena.alloc.reclaim_for(size) {
            Reclaim::Class(c) => Box::new(move |a| a.class == c),
            Reclaim::Region(r) => Box::new(move |a| a.region == r),
            Reclaim::Nothing => return Vec::new(),
        };
        self.map.iter().filter(|e| matches(e.slot.addr)).take(max).map(|e| e.key().clone()).collect()
    }
}

#[cfg(test)]
mod tests;
