//! Local SSD tier: one preallocated slot file, O_DIRECT page-aligned I/O, a header per slot.
//!
//! Placement is the same slab scheme as the CPU arena ([`crate::slab`]); each slot is a
//! 4 KiB header followed by the block (format in `layout.rs`). A put writes header and data
//! in one call and is acknowledged only after the write returns, so after a `kill -9` the
//! headers rebuild the index (`recover.rs`) and every acknowledged block reads back. With
//! `sync_writes` the file is opened `O_DSYNC`, extending that to power loss.
//!
//! New blocks go into packed regions (slab/packed.rs): any size, one after another, so
//! mixed sizes (files' tail chunks) fill the SSD instead of each stranding a region.
//!
//! Invariants:
//! - A region's header is on disk before any slot in it is acknowledged.
//! - A freed slot's header is a tombstone on disk before the slot can be reused (zeroed in a
//!   class's region; in a packed region rewritten as deleted, keeping its length, so the
//!   chain recovery walks holds), so a deleted block does not return after a restart and a
//!   late tombstone never hits a new block.
//! - A read returns bytes only if the header it read names the key and generation the
//!   index expects and the data matches its CRC-32C; a mismatch drops the copy.

mod builder;
mod io;
mod layout;
mod recover;

pub use self::builder::SsdTierBuilder;

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use dashmap::{DashMap, mapref::entry::Entry};
use futures::future::BoxFuture;
use parking_lot::Mutex;

use self::{
    io::{BufPool, IoEngine, WriteData},
    layout::{DATA_START, HEADER, RegionHeader, SlotHeader},
};
use crate::{
    Block, BlockKey, BlockMeta, Error, PutStatus, Result, Tier, TierKind, TierUsage,
    slab::{Allocation, PACKED, PAGE, Reclaim, SlabAllocator, SlabLayout, SlotAddr},
};

/// Default region size: 64 MiB of data plus 1 MiB for slot and region headers.
pub const DEFAULT_REGION_SIZE: u64 = 65 << 20;

/// Name of the slot file inside the tier's directory.
pub const SLOT_FILE: &str = "slots.kvt";

/// Where a block sits and what its header says.
#[derive(Debug, Clone, Copy)]
struct SlotInfo {
    addr: SlotAddr,
    epoch: u64,
    generation: u64,
    len: u64,
    crc32c: u32,
    durable: bool,
}

/// The SSD tier. See the module docs.
pub struct SsdTier {
    name: String,
    dir: PathBuf,
    path: PathBuf,
    alloc: SlabAllocator,
    io: Arc<dyn IoEngine>,
    pool: Arc<BufPool>,
    store_id: u64,
    max_block_size: u64,
    direct_io: bool,
    map: DashMap<BlockKey, SlotInfo>,
    /// Per class: generation -> key, oldest first (eviction order).
    fifo: Vec<Mutex<BTreeMap<u64, BlockKey>>>,
    /// Per region: slot -> key (in the order they were written, in a packed region).
    by_region: Box<[Mutex<BTreeMap<u32, BlockKey>>]>,
    /// Per region: the epoch whose header is on disk.
    header_epoch: Box<[AtomicU64]>,
    region_locks: Box<[tokio::sync::Mutex<()>]>,
    next_generation: AtomicU64,
}

impl fmt::Debug for SsdTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SsdTier")
            .field("path", &self.path)
            .field("direct_io", &self.direct_io)
            .field("blocks", &self.map.len())
            .finish_non_exhaustive()
    }
}

impl fmt::Display for SsdTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl SsdTier {
    #[expect(clippy::too_many_arguments, reason = "private constructor fed by the builder")]
    fn assemble(
        name: String,
        dir: PathBuf,
        path: PathBuf,
        layout: SlabLayout,
        io: Arc<dyn IoEngine>,
        pool: Arc<BufPool>,
        store_id: u64,
        max_block_size: u64,
        direct_io: bool,
    ) -> Self {
        let regions = layout.regions as usize;
        let classes = layout.class_count();
        SsdTier {
            name,
            dir,
            path,
            alloc: SlabAllocator::new(layout),
            io,
            pool,
            store_id,
            max_block_size,
            direct_io,
            map: DashMap::new(),
            fifo: (0..classes).map(|_| Mutex::new(BTreeMap::new())).collect(),
            by_region: (0..regions).map(|_| Mutex::new(BTreeMap::new())).collect(),
            header_epoch: (0..regions).map(|_| AtomicU64::new(0)).collect(),
            region_locks: (0..regions).map(|_| tokio::sync::Mutex::new(())).collect(),
            next_generation: AtomicU64::new(1),
        }
    }

    /// The directory holding the slot file.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether I/O bypasses the page cache (false where the filesystem refused O_DIRECT).
    pub fn direct_io(&self) -> bool {
        self.direct_io
    }

    fn layout(&self) -> &SlabLayout {
        self.alloc.layout()
    }

    fn file_offset(&self, addr: SlotAddr) -> u64 {
        DATA_START + self.layout().slot_offset(addr)
    }

    fn io_error(&self, op: &'static str, offset: u64, source: std::io::Error) -> Error {
        Error::Io { tier: self.name.clone(), op, path: self.path.clone(), offset: Some(offset), source }
    }

    /// Keeps slots in eviction order: by region (packed eviction goes region by region,
    /// a class region's included), and a class's oldest first.
    fn track(&self, key: BlockKey, info: SlotInfo) {
        if info.addr.class != PACKED {
            self.fifo[info.addr.class as usize].lock().insert(info.generation, key.clone());
        }
        self.by_region[info.addr.region as usize].lock().insert(info.addr.slot, key);
    }

    fn untrack(&self, info: &SlotInfo) {
        if info.addr.class != PACKED {
            self.fifo[info.addr.class as usize].lock().remove(&info.generation);
        }
        self.by_region[info.addr.region as usize].lock().remove(&info.addr.slot);
    }

    /// Writes the region's header for this allocation's epoch unless it is already there.
    async fn ensure_region_header(&self, al: Allocation) -> Result<()> {
        let r = al.addr.region as usize;
        if self.header_epoch[r].load(Ordering::Acquire) == al.epoch {
            return Ok(());
        }
        let _guard = self.region_locks[r].lock().await;
        if self.header_epoch[r].load(Ordering::Acquire) == al.epoch {
            return Ok(());
        }
        let mut page = self.pool.take(HEADER as usize);
        let class_size = if al.addr.class == PACKED { 0 } else { self.layout().class_size(al.addr.class) };
        RegionHeader { store_id: self.store_id, region: al.addr.region, class_size, epoch: al.epoch }
            .encode(page.as_mut_slice());
        let offset = DATA_START + self.layout().region_offset(al.addr.region);
        self.io
            .write(offset, WriteData::Buf(page))
            .await
            .map_err(|e| self.io_error("pwrite region header", offset, e))?;
        self.header_epoch[r].store(al.epoch, Ordering::Release);
        Ok(())
    }

    /// Writes the tombstone of `key`'s slot (zeroes its header; in a packed region marks it
    /// deleted, keeping its length), then returns the slot to the allocator. If the write
    /// fails the slot is still freed (its next write replaces the header) and the block may
    /// return after a restart; that is logged.
    async fn release(&self, key: &BlockKey, info: SlotInfo) {
        let offset = self.file_offset(info.addr);
        let mut page = self.pool.take(HEADER as usize);
        match info.addr.class {
            PACKED => self.header(key, &info, true).encode(page.as_mut_slice()),
            _ => page.as_mut_slice().fill(0),
        }
        if let Err(e) = self.io.write(offset, WriteData::Buf(page)).await {
            tracing::warn!(tier = %self, offset, error = %e, "could not write a freed slot's tombstone; its block may reappear after a restart");
        }
        self.alloc.free(info.addr);
    }

    /// The header of `key`'s slot `info` (a tombstone when `deleted`).
    fn header(&self, key: &BlockKey, info: &SlotInfo, deleted: bool) -> SlotHeader {
        SlotHeader {
            store_id: self.store_id,
            epoch: info.epoch,
            region: info.addr.region,
            slot: info.addr.slot,
            generation: info.generation,
            len: info.len,
            crc32c: info.crc32c,
            durable: info.durable,
            deleted,
            key: key.clone(),
        }
    }

    /// Removes `key` if it still is the copy with `generation`, then releases its slot.
    async fn drop_copy(&self, key: &BlockKey, generation: u64) {
        if let Some((_, info)) = self.map.remove_if(key, |_, v| v.generation == generation) {
            self.untrack(&info);
            self.release(key, info).await;
        }
    }

    async fn put_one(&self, block: &Block) -> Result<PutStatus> {
        let len = block.len();
        crate::check_block_size(&block.key, len, self.max_block_size)?;
        if self.map.contains_key(&block.key) {
            return Ok(PutStatus::Existed);
        }
        let al = self.alloc.alloc_for(len, block.durable).ok_or_else(|| Error::NoSpace {
            tier: self.name.clone(),
            capacity: self.layout().capacity(),
            used: self.alloc.usage().0,
            required: len,
        })?;
        // Frees the slot if anything below fails, or the future is dropped outside a write.
        let mut guard = FreeOnDrop { alloc: &self.alloc, addr: Some(al.addr), in_flight: false };
        guard.writing(self.ensure_region_header(al)).await?;
        let info = SlotInfo {
            addr: al.addr,
            epoch: al.epoch,
            generation: self.next_generation.fetch_add(1, Ordering::Relaxed),
            len,
            crc32c: block.crc32c,
            durable: block.durable,
        };
        let header = self.header(&block.key, &info, false);
        let offset = self.file_offset(al.addr);
        let data = self.write_data(&header, &block.data);
        if let Err(e) = guard.writing(self.io.write(offset, data)).await {
            // Part of the header may be on disk: a tombstone, not a bare free, so the block
            // (never acknowledged) does not come back after a restart.
            guard.addr = None;
            self.release(&block.key, info).await;
            return Err(self.io_error("pwrite", offset, e));
        }
        guard.addr = None;
        match self.map.entry(block.key.clone()) {
            Entry::Occupied(_) => {
                // A concurrent put of the same key won; ours is a duplicate.
                self.release(&block.key, info).await;
                Ok(PutStatus::Existed)
            }
            Entry::Vacant(v) => {
                v.insert(info);
                self.track(block.key.clone(), info);
                Ok(PutStatus::Stored)
            }
        }
    }

    /// Header page plus data, zero-copy when the data is already page-aligned.
    fn write_data(&self, header: &SlotHeader, data: &Bytes) -> WriteData {
        let mut page = self.pool.take(HEADER as usize);
        header.encode(page.as_mut_slice());
        if (data.as_ptr() as usize).is_multiple_of(PAGE as usize) && data.len().is_multiple_of(PAGE as usize) {
            return WriteData::HeaderThen(page, data.clone());
        }
        drop(page);
        let h = HEADER as usize;
        let mut buf = self.pool.take(h + data.len());
        let slice = buf.as_mut_slice();
        header.encode(&mut slice[..h]);
        slice[h..h + data.len()].copy_from_slice(data);
        slice[h + data.len()..].fill(0);
        WriteData::Buf(buf)
    }

    async fn get_one(&self, key: &BlockKey) -> Result<Option<Block>> {
        let Some(info) = self.map.get(key).map(|e| *e) else { return Ok(None) };
        let offset = self.file_offset(info.addr);
        let h = HEADER as usize;
        let (buf, res) = self.io.read(offset, self.pool.take(h + info.len as usize)).await;
        res.map_err(|e| self.io_error("pread", offset, e))?;
        let header = SlotHeader::decode(&buf.as_ref()[..h]);
        let same_copy = header.as_ref().is_some_and(|hd| {
            hd.key == *key && hd.generation == info.generation && hd.epoch == info.epoch && hd.len == info.len
        });
        let actual = crate::crc32c(&buf.as_ref()[h..h + info.len as usize]);
        if same_copy && actual == info.crc32c {
            let data = Bytes::from_owner(buf).slice(h..h + info.len as usize);
            return Ok(Some(Block::with_crc32c(key.clone(), data, info.crc32c)));
        }
        // Checked after the read: if the copy was deleted (and its slot perhaps reused) while
        // we read, the mismatch is our read's, not the medium's: a plain miss.
        if self.map.get(key).is_none_or(|e| e.generation != info.generation) {
            return Ok(None);
        }
        self.drop_copy(key, info.generation).await;
        Err(Error::ChecksumMismatch {
            tier: self.name.clone(),
            key: key.to_string(),
            location: format!(
                "{} offset {offset}{}",
                self.path.display(),
                if same_copy { "" } else { " (slot header damaged)" }
            ),
            expected: info.crc32c,
            actual,
        })
    }

    /// Up to `max` blocks in eviction order: region by region, oldest region first, each
    /// region's in the order they were written; regions holding a block that `stays` after
    /// the others (such a region never empties: evicting the rest of it frees nothing).
    fn packed_candidates(&self, max: usize, stays: &(dyn Fn(&BlockKey) -> bool + Sync)) -> Vec<BlockKey> {
        let (mut free, mut kept) = (Vec::new(), Vec::new());
        let mut found = 0;
        for region in self.alloc.eviction_order() {
            let keys: Vec<BlockKey> = self.by_region[region as usize].lock().values().cloned().collect();
            if keys.iter().any(stays) {
                kept.push(keys);
            } else {
                found += keys.len();
                free.push(keys);
            }
            if found >= max {
                break;
            }
        }
        free.into_iter().chain(kept).flatten().take(max).collect()
    }

    async fn delete_one(&self, key: &BlockKey) -> bool {
        let Some((_, info)) = self.map.remove(key) else { return false };
        self.untrack(&info);
        self.release(key, info).await;
        true
    }
}

/// Returns a slot to the allocator unless disarmed (by clearing `addr`).
///
/// If the future is dropped while the data write is in flight, the write still completes on
/// the blocking pool, so freeing the slot could let a later block be overwritten by it. The
/// slot is leaked instead: recovery at the next start finds either a complete block or free
/// space there.
struct FreeOnDrop<'a> {
    alloc: &'a SlabAllocator,
    addr: Option<SlotAddr>,
    in_flight: bool,
}

impl FreeOnDrop<'_> {
    /// Awaits a write with the slot marked in flight: if the future is dropped meanwhile, the
    /// slot is leaked, not freed.
    async fn writing<T>(&mut self, write: impl Future<Output = T>) -> T {
        self.in_flight = true;
        let result = write.await;
        self.in_flight = false;
        result
    }
}

impl Drop for FreeOnDrop<'_> {
    fn drop(&mut self) {
        match self.addr.take() {
            Some(addr) if self.in_flight => {
                tracing::warn!(?addr, "a put was cancelled during its write; its slot stays unused until restart");
            }
            Some(addr) => self.alloc.free(addr),
            None => {}
        }
    }
}

impl Tier for SsdTier {
    fn kind(&self) -> TierKind {
        TierKind::Ssd
    }

    fn put_batch<'a>(&'a self, blocks: &'a [Block]) -> BoxFuture<'a, Vec<Result<PutStatus>>> {
        Box::pin(futures::future::join_all(blocks.iter().map(|b| self.put_one(b))))
    }

    fn get_batch<'a>(&'a self, keys: &'a [BlockKey]) -> BoxFuture<'a, Vec<Result<Option<Block>>>> {
        Box::pin(futures::future::join_all(keys.iter().map(|k| self.get_one(k))))
    }

    fn contains_batch<'a>(&'a self, keys: &'a [BlockKey]) -> BoxFuture<'a, Result<Vec<bool>>> {
        Box::pin(async move { Ok(keys.iter().map(|k| self.map.contains_key(k)).collect()) })
    }

    fn delete_batch<'a>(&'a self, keys: &'a [BlockKey]) -> BoxFuture<'a, Vec<Result<bool>>> {
        Box::pin(async move {
            futures::future::join_all(keys.iter().map(|k| self.delete_one(k))).await.into_iter().map(Ok).collect()
        })
    }

    fn usage(&self) -> BoxFuture<'_, Result<TierUsage>> {
        let (used, _) = self.alloc.usage();
        let usage = TierUsage { capacity: self.layout().capacity(), used, blocks: self.map.len() as u64 };
        Box::pin(async move { Ok(usage) })
    }

    fn blocks(&self) -> BoxFuture<'_, Result<Vec<BlockMeta>>> {
        Box::pin(async move {
            Ok(self
                .map
                .iter()
                .map(|e| BlockMeta { key: e.key().clone(), len: e.len, crc32c: e.crc32c, durable: e.durable })
                .collect())
        })
    }

    fn eviction_candidates(&self, size: u64, max: usize) -> Vec<BlockKey> {
        self.eviction_candidates_keeping(size, max, &|_| false)
    }

    fn eviction_candidates_keeping(
        &self,
        size: u64,
        max: usize,
        stays: &(dyn Fn(&BlockKey) -> bool + Sync),
    ) -> Vec<BlockKey> {
        if self.layout().packed {
            return self.packed_candidates(max, stays);
        }
        match self.alloc.reclaim_for(size) {
            Reclaim::Class(c) => self.fifo[c as usize].lock().values().take(max).cloned().collect(),
            Reclaim::Region(r) => {
                self.map.iter().filter(|e| e.addr.region == r).take(max).map(|e| e.key().clone()).collect()
            }
            Reclaim::Nothing => Vec::new(),
        }
    }

    fn footprint(&self, len: u64) -> u64 {
        let layout = self.layout();
        if layout.packed {
            return layout.packed_pages(len) as u64 * PAGE;
        }
        layout.class_for(len).map_or(len, |c| layout.slot_size(c))
    }
}

#[cfg(test)]
mod tests;
