//! Packed regions: blocks of any size, one after another.
//!
//! A few regions are open at a time; a block takes the pages after the last one of the open
//! region with the least room that still holds it (its header's page, then its data's), so
//! small blocks fill the ends big ones leave. Written-back blocks (which may have to stay
//! until Blob has them) have open regions of their own: a region is reused only whole, and
//! one such block among cache blocks would keep all of them from being reclaimed. When none holds it an empty region is opened
//! (with a new epoch), closing the open one with the least room past [`OPEN_REGIONS`]. A
//! closed region takes nothing more at its end; once its last block is freed it is empty and
//! may be opened again. The slot headers of a region form a chain from its first page that
//! recovery walks (a freed block's header is rewritten as a tombstone of the same length,
//! never zeroed, so the chain holds).
//!
//! A freed block's pages are a **hole** that a later block of exactly as many pages (and of
//! the same kind) takes, its header over the tombstone: the chain still holds, and a cache
//! of equal-sized blocks (KV blocks) can evict block by block, in whatever order its policy
//! chooses, instead of a whole region at a time. Without that, Mooncake's conversation trace
//! left 9% of the SSD in holes that no block could use until their region emptied. Holes are
//! kept in memory only: after a restart a region's holes wait for it to empty.
//!
//! Eviction by region goes oldest first (by each region's newest block); the evictor passes over blocks that may not go
//! (write-back copies Blob lacks) to those of the next regions, so some region always
//! empties when any can.

use super::{Allocation, PACKED, SlabAllocator, SlotAddr, State};

/// Regions taking blocks at once.
const OPEN_REGIONS: usize = 4;

/// A freed block's place: its region (while in the assignment of `epoch`) and first page.
#[derive(Debug, Clone, Copy)]
pub(super) struct Hole {
    region: u32,
    slot: u32,
    epoch: u64,
}

impl SlabAllocator {
    /// A packed slot for `len` bytes: at the end of the open region, else at the start of
    /// an empty one; `None` when no region is empty.
    pub(super) fn alloc_packed(&self, len: u64, durable: bool) -> Option<Allocation> {
        let pages = self.layout.packed_pages(len);
        if pages > self.layout.region_pages() {
            return None;
        }
        let mut st = self.state.lock();
        let kind = usize::from(durable);
        if let Some(al) = take_hole(&mut st, kind, pages) {
            return Some(al);
        }
        let total = self.layout.region_pages();
        let room = |st: &State, r: u32| total - st.regions[r as usize].next;
        let fits = st.open[kind].iter().copied().filter(|&r| room(&st, r) >= pages).min_by_key(|&r| room(&st, r));
        let region = match fits {
            Some(r) => r,
            None => {
                let r = self.empty_region(&mut st)?;
                if st.open[kind].len() >= OPEN_REGIONS {
                    // Closed: the rest of it stays unused until it empties.
                    let fullest = st.open[kind].iter().copied().min_by_key(|&o| room(&st, o)).expect("open regions");
                    st.open[kind].retain(|&o| o != fullest);
                    if st.regions[fullest as usize].live == 0 {
                        release_region(&mut st, fullest);
                    }
                }
                let epoch = st.next_epoch;
                st.next_epoch += 1;
                let region = &mut st.regions[r as usize];
                region.class = Some(PACKED);
                region.epoch = epoch;
                region.next = 0;
                region.live = 0;
                region.draining_for = None;
                region.durable = durable;
                st.open[kind].push(r);
                r
            }
        };
        let r = &mut st.regions[region as usize];
        let slot = r.next;
        r.next += pages;
        let epoch = r.epoch;
        placed(&mut st, region, pages);
        Some(Allocation { addr: SlotAddr { region, slot, class: PACKED, pages }, epoch })
    }

    /// A region holding no block: never used, or emptied (a class's, from a slot file
    /// written by a class layout, included).
    fn empty_region(&self, st: &mut State) -> Option<u32> {
        if let Some(r) = st.unassigned.pop() {
            return Some(r);
        }
        let r = st.regions.iter().position(|r| r.class.is_some_and(|c| c != PACKED) && r.live == 0)? as u32;
        let old = st.regions[r as usize].class.expect("assigned");
        st.partial[old as usize].retain(|&x| x != r);
        st.class_regions[old as usize] -= 1;
        Some(r)
    }

    pub(super) fn free_packed(&self, addr: SlotAddr) {
        let mut st = self.state.lock();
        let r = &mut st.regions[addr.region as usize];
        assert_eq!(r.class, Some(PACKED), "freeing {addr:?} from a region that is not packed");
        assert!(r.live > 0, "free of {addr:?} in a region with no live blocks");
        r.live -= 1;
        let empty = r.live == 0;
        let (epoch, kind) = (r.epoch, usize::from(r.durable));
        st.used -= addr.pages as u64 * super::PAGE;
        st.packed_live -= addr.pages as u64 * super::PAGE;
        st.live -= 1;
        if empty {
            // Open or not: it starts again from its first page, under a new epoch, when next
            // opened (no allocation is in flight in it: each counts as live).
            st.open.iter_mut().for_each(|open| open.retain(|&o| o != addr.region));
            release_region(&mut st, addr.region);
        } else {
            let hole = Hole { region: addr.region, slot: addr.slot, epoch };
            st.holes[kind].entry(addr.pages).or_default().push(hole);
        }
    }

    /// Regions holding blocks, the one whose newest block is oldest first (then the first
    /// opened): the order their blocks are evicted in (FIFO by region, as a log-structured
    /// store cleans), so the flusher's demotion ahead of eviction copies to Blob the blocks
    /// eviction takes next. By the newest block, not the opening: a hole refilled in an old
    /// region holds a block as new as any, which going first would lose moments after it
    /// was written (an S3 object's second part, read back right after its completion).
    pub(crate) fn eviction_order(&self) -> Vec<u32> {
        let st = self.state.lock();
        let mut regions: Vec<((u64, u64), u32)> = st
            .regions
            .iter()
            .enumerate()
            .filter(|(_, r)| r.class.is_some() && r.live > 0)
            .map(|(i, r)| ((r.filled, r.epoch), i as u32))
            .collect();
        regions.sort_unstable();
        regions.into_iter().map(|(_, r)| r).collect()
    }

    /// Recovery: `region` is packed with the epoch found on disk, holding blocks of `live`
    /// pages each, its chain ending at page `end`. Call once per region before any `alloc`.
    pub(crate) fn restore_packed(&self, region: u32, epoch: u64, live: &[u32], end: u32) {
        let mut st = self.state.lock();
        st.unassigned.retain(|&r| r != region);
        let r = &mut st.regions[region as usize];
        r.class = Some(PACKED);
        r.epoch = epoch;
        r.filled = 0;
        r.next = end;
        r.live = live.len() as u32;
        r.draining_for = None;
        r.durable = false;
        let empty = live.is_empty();
        let bytes = live.iter().map(|&p| p as u64 * super::PAGE).sum::<u64>();
        st.used += bytes;
        st.packed_live += bytes;
        st.live += live.len() as u64;
        st.next_epoch = st.next_epoch.max(epoch + 1);
        if empty {
            release_region(&mut st, region);
        }
    }
}

impl SlabAllocator {
    /// Recovery, after every region is restored: the packed regions with the most room left
    /// after their chain take blocks again (appending after a recovered chain is safe: no
    /// header of that epoch lies past its end).
    pub(crate) fn reopen_restored(&self) {
        let mut st = self.state.lock();
        let mut roomy: Vec<(u32, u32)> = st
            .regions
            .iter()
            .enumerate()
            .filter(|(_, r)| r.class == Some(PACKED) && r.next < self.layout.region_pages())
            .map(|(i, r)| (r.next, i as u32))
            .collect();
        roomy.sort_unstable();
        // (Which kind each held is not on disk: they take blocks that may go.)
        st.open[0] = roomy.into_iter().take(OPEN_REGIONS).map(|(_, r)| r).collect();
    }
}

/// Counts a block of `pages` pages placed in `region` (at its end or in a hole): live, used,
/// and the region's newest block now.
fn placed(st: &mut State, region: u32, pages: u32) {
    st.fills += 1;
    let r = &mut st.regions[region as usize];
    r.filled = st.fills;
    r.live += 1;
    st.used += pages as u64 * super::PAGE;
    st.packed_live += pages as u64 * super::PAGE;
    st.live += 1;
}

/// A hole of exactly `pages` pages for a block of `kind`, taken: the newest still in its
/// region's assignment (holes of regions emptied since are dropped on the way).
fn take_hole(st: &mut State, kind: usize, pages: u32) -> Option<Allocation> {
    let holes = st.holes[kind].get_mut(&pages)?;
    while let Some(h) = holes.pop() {
        let r = &st.regions[h.region as usize];
        if r.class != Some(PACKED) || r.epoch != h.epoch {
            continue;
        }
        placed(st, h.region, pages);
        let addr = SlotAddr { region: h.region, slot: h.slot, class: PACKED, pages };
        return Some(Allocation { addr, epoch: h.epoch });
    }
    None
}

/// An empty packed region back among the unassigned, its holes forgotten.
fn release_region(st: &mut State, region: u32) {
    let r = &mut st.regions[region as usize];
    r.class = None;
    r.next = 0;
    r.draining_for = None;
    for holes in st.holes.iter_mut().flat_map(|by_pages| by_pages.values_mut()) {
        holes.retain(|h| h.region != region);
    }
    st.unassigned.push(region);
}
