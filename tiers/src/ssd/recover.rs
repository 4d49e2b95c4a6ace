//! Rebuilding the SSD tier's index from slot headers at startup.
//!
//! Regions are scanned in parallel on a few threads. Small slots are read in bulk (whole
//! runs of slots per pread) so a store of 4 KiB blocks does not cost one syscall per slot.
//! A packed region is walked from its first page, header to header (each names its
//! length; a tombstone keeps it). Where a page holds no header of this region's epoch at its
//! own position (a block whose write never happened: puts run concurrently, so a later one
//! may be on disk and acknowledged), the following pages are searched, in bulk reads, for
//! the next such header, and the walk goes on from it; the chain ends after the last one.
//! A header names the store's random id, the region's epoch and its own page, so no data
//! page is taken for one.
//! A slot counts only if its header checks out and repeats this store's id, its region's
//! epoch and its own position; anything else is free space. Where two slots name one key
//! (a tombstone that never reached the disk), the newest generation wins and the others are
//! zeroed before the tier serves anything.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Instant,
};

use super::{
    DATA_START, HEADER, SlotInfo, SsdTier,
    io::{BufPool, pread_all, pwritev_all},
    layout::{RegionHeader, SlotHeader},
};
use crate::{
    BlockKey,
    slab::{PACKED, SlabLayout, SlotAddr},
};

/// Slots at most this large are scanned by bulk reads.
const BULK_SLOT_MAX: u64 = 64 << 10;
/// Bytes per bulk read.
const BULK_READ: u64 = 8 << 20;

/// What a region held at startup.
#[derive(Debug)]
pub(super) struct RecoveredRegion {
    region: u32,
    class: u16,
    epoch: u64,
    slots: Vec<SlotHeader>,
    /// Packed: the page after its chain's last header.
    end: u32,
}

impl RecoveredRegion {
    /// Where slot `h` of this region is.
    fn addr(&self, layout: &SlabLayout, h: &SlotHeader) -> SlotAddr {
        let pages = if self.class == PACKED { layout.packed_pages(h.len) } else { 0 };
        SlotAddr { region: self.region, slot: h.slot, class: self.class, pages }
    }
}

/// Scans every region and resolves duplicate keys.
pub(super) fn scan(
    file: &File,
    layout: &SlabLayout,
    store_id: u64,
    pool: &Arc<BufPool>,
) -> std::io::Result<Vec<RecoveredRegion>> {
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let last_log = AtomicU64::new(0);
    let regions = layout.regions as usize;
    let threads = regions.clamp(1, 4);
    let mut found: Vec<RecoveredRegion> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> std::io::Result<Vec<RecoveredRegion>> {
                    let mut mine = Vec::new();
                    loop {
                        let r = next.fetch_add(1, Ordering::Relaxed);
                        if r >= regions {
                            return Ok(mine);
                        }
                        mine.extend(scan_region(file, layout, store_id, pool, r as u32)?);
                        let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                        let secs = started.elapsed().as_secs();
                        if secs >= 2 && last_log.swap(secs, Ordering::Relaxed) != secs {
                            tracing::info!("ssd recovery: {d}/{regions} regions scanned");
                        }
                    }
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("recovery thread panicked")).collect::<std::io::Result<Vec<_>>>()
    })?
    .into_iter()
    .flatten()
    .collect();
    found.sort_by_key(|r| r.region);
    let data_intact = |addr: SlotAddr, h: &SlotHeader| {
        let mut buf = pool.take(h.len as usize);
        let offset = DATA_START + layout.slot_offset(addr) + HEADER;
        pread_all(file, buf.as_mut_slice(), offset).is_ok()
            && crate::crc32c(&buf.as_ref()[..h.len as usize]) == h.crc32c
    };
    let duplicates = drop_duplicates(&mut found, layout, data_intact);
    for (addr, h) in &duplicates {
        let offset = DATA_START + layout.slot_offset(*addr);
        let mut page = zeroed_aligned(pool, HEADER as usize);
        if addr.class == PACKED {
            SlotHeader { deleted: true, ..h.clone() }.encode(page.as_mut_slice());
        }
        if let Err(e) = pwritev_all(file, &[page.as_ref()], offset) {
            tracing::warn!(offset, error = %e, "could not write the tombstone of a duplicate slot");
        }
    }
    let blocks: usize = found.iter().map(|r| r.slots.len()).sum();
    tracing::info!(
        blocks,
        regions_in_use = found.len(),
        duplicates = duplicates.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "ssd recovery scan done"
    );
    Ok(found)
}

fn zeroed_aligned(pool: &Arc<BufPool>, len: usize) -> super::io::AlignedBuf {
    let mut buf = pool.take(len);
    buf.as_mut_slice().fill(0);
    buf
}

fn scan_region(
    file: &File,
    layout: &SlabLayout,
    store_id: u64,
    pool: &Arc<BufPool>,
    region: u32,
) -> std::io::Result<Option<RecoveredRegion>> {
    let region_start = DATA_START + layout.region_offset(region);
    let mut page = pool.take(HEADER as usize);
    pread_all(file, page.as_mut_slice(), region_start)?;
    let Some(rh) = RegionHeader::decode(page.as_ref()) else { return Ok(None) };
    if rh.store_id != store_id || rh.region != region {
        return Ok(None);
    }
    if rh.class_size == 0 {
        return walk_packed(file, layout, store_id, pool, region, rh.epoch).map(Some);
    }
    let Some(class) = layout.class_for(rh.class_size).filter(|&c| layout.class_size(c) == rh.class_size) else {
        tracing::warn!(
            region,
            class_size = rh.class_size,
            "region header names a slot size this layout does not have; treating the region as free"
        );
        return Ok(None);
    };
    let n = layout.slots_per_region(class);
    let slot_size = layout.slot_size(class);
    let first_slot = region_start + layout.region_header;
    let valid = |page: &[u8], slot: u32| {
        SlotHeader::decode(page).filter(|h| {
            h.store_id == store_id
                && h.epoch == rh.epoch
                && h.region == region
                && h.slot == slot
                && h.len >= 1
                && h.len <= rh.class_size
        })
    };
    let mut slots = Vec::new();
    if slot_size <= BULK_SLOT_MAX {
        let per_read = (BULK_READ / slot_size).max(1) as u32;
        let mut s = 0;
        while s < n {
            let count = per_read.min(n - s);
            let mut buf = pool.take((count as u64 * slot_size) as usize);
            pread_all(
                file,
                &mut buf.as_mut_slice()[..(count as u64 * slot_size) as usize],
                first_slot + s as u64 * slot_size,
            )?;
            for i in 0..count {
                let at = (i as u64 * slot_size) as usize;
                slots.extend(valid(&buf.as_ref()[at..at + HEADER as usize], s + i));
            }
            s += count;
        }
    } else {
        for s in 0..n {
            pread_all(file, page.as_mut_slice(), first_slot + s as u64 * slot_size)?;
            slots.extend(valid(page.as_ref(), s));
        }
    }
    Ok(Some(RecoveredRegion { region, class, epoch: rh.epoch, slots, end: 0 }))
}

/// A packed region's chain of headers from its first page: the live blocks, and where the
/// chain ends (a page holding no header of this epoch at its own position).
fn walk_packed(
    file: &File,
    layout: &SlabLayout,
    store_id: u64,
    pool: &Arc<BufPool>,
    region: u32,
    epoch: u64,
) -> std::io::Result<RecoveredRegion> {
    let first = DATA_START + layout.region_offset(region) + layout.region_header;
    let total = layout.region_pages();
    let valid = |page: &[u8], at: u32| {
        SlotHeader::decode(page).filter(|h| {
            h.store_id == store_id
                && h.epoch == epoch
                && h.region == region
                && h.slot == at
                && h.len >= 1
                && at + layout.packed_pages(h.len) <= total
        })
    };
    let mut page = pool.take(HEADER as usize);
    let (mut at, mut end, mut slots) = (0u32, 0u32, Vec::new());
    while at < total {
        pread_all(file, page.as_mut_slice(), first + at as u64 * HEADER)?;
        let found = match valid(page.as_ref(), at) {
            Some(h) => Some(h),
            None => match next_header(file, pool, first, at + 1, total, &valid)? {
                Some((next, h)) => {
                    at = next;
                    Some(h)
                }
                None => None,
            },
        };
        let Some(h) = found else { break };
        at += layout.packed_pages(h.len);
        end = at;
        if !h.deleted {
            slots.push(h);
        }
    }
    Ok(RecoveredRegion { region, class: PACKED, epoch, slots, end })
}

/// The first page from `from` (below `total`) holding a header `valid` accepts, read in
/// bulk.
fn next_header(
    file: &File,
    pool: &Arc<BufPool>,
    first: u64,
    from: u32,
    total: u32,
    valid: &impl Fn(&[u8], u32) -> Option<SlotHeader>,
) -> std::io::Result<Option<(u32, SlotHeader)>> {
    let per_read = (BULK_READ / HEADER) as u32;
    let mut at = from;
    while at < total {
        let count = per_read.min(total - at);
        let len = (count as u64 * HEADER) as usize;
        let mut buf = pool.take(len);
        pread_all(file, &mut buf.as_mut_slice()[..len], first + at as u64 * HEADER)?;
        for i in 0..count {
            let p = (i as u64 * HEADER) as usize;
            if let Some(h) = valid(&buf.as_ref()[p..p + HEADER as usize], at + i) {
                return Ok(Some((at + i, h)));
            }
        }
        at += count;
    }
    Ok(None)
}

/// Where a key has several copies (a tombstone that never reached the disk, or a put of the
/// key cut short by a crash), keeps the newest copy whose data passes `intact` (the newest
/// of all if none does) and returns the others, addresses and headers. Single copies are
/// not read: their CRC-32C is checked when they are read.
fn drop_duplicates(
    found: &mut [RecoveredRegion],
    layout: &SlabLayout,
    intact: impl Fn(SlotAddr, &SlotHeader) -> bool,
) -> Vec<(SlotAddr, SlotHeader)> {
    let mut copies: HashMap<BlockKey, Vec<(u64, SlotAddr, &SlotHeader)>> = HashMap::new();
    for r in found.iter() {
        for h in &r.slots {
            copies.entry(h.key.clone()).or_default().push((h.generation, r.addr(layout, h), h));
        }
    }
    let mut losers = Vec::new();
    for mut list in copies.into_values().filter(|l| l.len() > 1) {
        list.sort_by_key(|&(generation, ..)| std::cmp::Reverse(generation));
        let winner = list.iter().position(|&(_, addr, h)| intact(addr, h)).unwrap_or(0);
        losers
            .extend(list.iter().enumerate().filter(|&(i, _)| i != winner).map(|(_, &(_, addr, h))| (addr, h.clone())));
    }
    let lost: HashSet<SlotAddr> = losers.iter().map(|(addr, _)| *addr).collect();
    for r in found.iter_mut() {
        let region = (r.region, r.class);
        r.slots.retain(|h| {
            let pages = if region.1 == PACKED { layout.packed_pages(h.len) } else { 0 };
            !lost.contains(&SlotAddr { region: region.0, slot: h.slot, class: region.1, pages })
        });
    }
    losers
}

impl SsdTier {
    /// Loads a scan's result into the allocator, index and eviction order.
    pub(super) fn restore(&self, found: Vec<RecoveredRegion>) {
        let mut max_generation = 0;
        let layout = self.layout().clone();
        for r in found {
            if r.class == PACKED {
                let pages: Vec<u32> = r.slots.iter().map(|h| layout.packed_pages(h.len)).collect();
                self.alloc.restore_packed(r.region, r.epoch, &pages, r.end);
            } else {
                let used: Vec<u32> = r.slots.iter().map(|h| h.slot).collect();
                self.alloc.restore_region(r.region, r.class, r.epoch, &used);
            }
            self.header_epoch[r.region as usize].store(r.epoch, Ordering::Release);
            for h in &r.slots {
                max_generation = max_generation.max(h.generation);
                let info = SlotInfo {
                    addr: r.addr(&layout, h),
                    epoch: r.epoch,
                    generation: h.generation,
                    len: h.len,
                    crc32c: h.crc32c,
                    durable: h.durable,
                };
                self.track(h.key.clone(), info);
                self.map.insert(h.key.clone(), info);
            }
        }
        self.alloc.reopen_restored();
        self.next_generation.store(max_generation + 1, Ordering::Relaxed);
    }
}

#[cfg(test)]
impl RecoveredRegion {
    pub(super) fn for_test(region: u32, class: u16, epoch: u64, slots: Vec<SlotHeader>) -> Self {
        RecoveredRegion { region, class, epoch, slots, end: 0 }
    }

    pub(super) fn slot_numbers(&self) -> Vec<u32> {
        self.slots.iter().map(|h| h.slot).collect()
    }
}

#[cfg(test)]
pub(super) fn drop_duplicates_for_test(
    found: &mut [RecoveredRegion],
    layout: &SlabLayout,
    intact: impl Fn(SlotAddr, &SlotHeader) -> bool,
) -> Vec<SlotAddr> {
    drop_duplicates(found, layout, intact).into_iter().map(|(addr, _)| addr).collect()
}
