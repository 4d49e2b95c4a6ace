//! Slab placement shared by the CPU arena and the SSD slot files.
//!
//! Capacity is cut into equal regions. A region, when first needed, is given to one size
//! class and cut into equal slots of that class; a block takes one slot of the smallest
//! class that fits it. Classes are 4 KiB multiples spaced 8 per doubling, so slack inside a
//! slot is at most 1/8 of the block. A region whose slots are all free keeps its class
//! (reusing it costs nothing) until another class needs a region and none is free; then
//! it moves. This module only does bookkeeping: it owns no memory and does no I/O.
//!
//! Each assignment of a region to a class gets a fresh `epoch`, which the SSD tier writes
//! into region and slot headers so that recovery can tell current slots from stale ones.
//!
//! A layout may instead be **packed** (the SSD's): a region takes blocks of any size one
//! after another (packed.rs), so files' tail chunks, whose sizes are all different, no
//! longer each strand a region of a class of their own (an SSD once refused blocks about a
//! third full, or 3% full with few regions). Regions left by a class layout (older slot
//! files) keep their classes until they empty.

use parking_lot::Mutex;

/// Alignment and granularity of every slot, region and I/O: 4 KiB.
pub(crate) const PAGE: u64 = 4096;
/// The class of a packed region's slots: blocks of any size, one after another.
pub(crate) const PACKED: u16 = u16::MAX;
const STEPS_PER_DOUBLING: u64 = 8;

/// How capacity is cut: sizes are fixed at build time.
#[derive(Debug, Clone)]
pub(crate) struct SlabLayout {
    /// Bytes per region.
    pub(crate) region_size: u64,
    /// Bytes reserved at the start of each region (the SSD region header).
    pub(crate) region_header: u64,
    /// Bytes before each slot's data (the SSD slot header).
    pub(crate) slot_overhead: u64,
    /// Data sizes of the classes, ascending, each a multiple of [`PAGE`].
    classes: Vec<u64>,
    /// Number of regions.
    pub(crate) regions: u32,
    /// New blocks go into packed regions (see the module documentation).
    pub(crate) packed: bool,
}

impl SlabLayout {
    /// A layout of `capacity / region_size` regions whose classes reach `max_block`.
    /// Fails, naming the knob, when a region cannot hold a slot of `max_block` bytes.
    pub(crate) fn new(
        tier: &str,
        capacity: u64,
        region_size: u64,
        region_header: u64,
        slot_overhead: u64,
        max_block: u64,
    ) -> crate::Result<Self> {
        let err = |field: &str, reason: String| Err(crate::Error::config(format!("{tier}.{field}"), reason));
        if region_size == 0 || !region_size.is_multiple_of(PAGE) {
            return err("region_size", format!("{region_size} is not a positive multiple of {PAGE}"));
        }
        if max_block == 0 {
            return err("max_block_size", "must be positive".into());
        }
        // Classes reach the largest slot a region holds, whatever `max_block` is now, so a
        // data dir written under a larger limit still maps onto the same classes.
        let room = region_size.saturating_sub(region_header + slot_overhead);
        let mut classes = Vec::new();
        let mut base = PAGE;
        while base <= room {
            let step = (base / STEPS_PER_DOUBLING).max(PAGE);
            classes.extend((0..STEPS_PER_DOUBLING).map(|i| base + i * step).filter(|&c| c < base * 2 && c <= room));
            base *= 2;
        }
        classes.dedup();
        if classes.last().is_none_or(|&c| c < max_block) {
            let need = region_header + slot_overhead + max_block.next_multiple_of(PAGE);
            return err(
                "region_size",
                format!(
                    "{region_size} bytes cannot hold one slot for max_block_size {max_block} ({need} bytes needed)"
                ),
            );
        }
        let regions = capacity / region_size;
        if regions == 0 {
            return err("capacity", format!("{capacity} bytes is less than one region of {region_size} bytes"));
        }
        if regions > u32::MAX as u64 {
            return err("region_size", format!("{regions} regions is too many; use larger regions"));
        }
        Ok(SlabLayout { region_size, region_header, slot_overhead, classes, regions: regions as u32, packed: false })
    }

    /// The same layout, packed (see the module documentation).
    pub(crate) fn packed(self) -> Self {
        SlabLayout { packed: true, ..self }
    }

    /// Pages after a region's header: what a packed region holds.
    pub(crate) fn region_pages(&self) -> u32 {
        ((self.region_size - self.region_header) / PAGE) as u32
    }

    /// Pages a block of `len` bytes takes in a packed region (its header included).
    pub(crate) fn packed_pages(&self, len: u64) -> u32 {
        ((self.slot_overhead + len).div_ceil(PAGE)) as u32
    }

    /// The smallest class whose slots hold `len` data bytes, or `None` if `len` is larger
    /// than the largest class.
    pub(crate) fn class_for(&self, len: u64) -> Option<u16> {
        let i = self.classes.partition_point(|&c| c < len);
        (i < self.classes.len()).then_some(i as u16)
    }

    /// Number of size classes.
    pub(crate) fn class_count(&self) -> usize {
        self.classes.len()
    }

    /// Data bytes of a slot of `class`.
    pub(crate) fn class_size(&self, class: u16) -> u64 {
        self.classes[class as usize]
    }

    /// Bytes a slot of `class` takes on the medium (header + data).
    pub(crate) fn slot_size(&self, class: u16) -> u64 {
        self.slot_overhead + self.class_size(class)
    }

    /// Slots of `class` that fit in one region.
    pub(crate) fn slots_per_region(&self, class: u16) -> u32 {
        ((self.region_size - self.region_header) / self.slot_size(class)) as u32
    }

    /// The largest number of slots any region can have (for per-slot tables).
    pub(crate) fn max_slots_per_region(&self) -> u32 {
        self.slots_per_region(0)
    }

    /// Byte offset of a slot (of its header, where there is one) from the start of region 0.
    /// A packed slot's number is the page it starts at.
    pub(crate) fn slot_offset(&self, addr: SlotAddr) -> u64 {
        let step = if addr.class == PACKED { PAGE } else { self.slot_size(addr.class) };
        addr.region as u64 * self.region_size + self.region_header + addr.slot as u64 * step
    }

    /// Byte offset of a region from the start of region 0.
    pub(crate) fn region_offset(&self, region: u32) -> u64 {
        region as u64 * self.region_size
    }

    /// Dense index of a slot in `0..regions * max_slots_per_region`.
    pub(crate) fn slot_index(&self, addr: SlotAddr) -> usize {
        addr.region as usize * self.max_slots_per_region() as usize + addr.slot as usize
    }

    /// Total bytes the layout manages.
    pub(crate) fn capacity(&self) -> u64 {
        self.regions as u64 * self.region_size
    }
}

/// Where a block lives: region, slot within it, and the region's class ([`PACKED`]: the
/// slot is the page it starts at, and it takes `pages`; 0 for a class's slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SlotAddr {
    pub(crate) region: u32,
    pub(crate) slot: u32,
    pub(crate) class: u16,
    pub(crate) pages: u32,
}

/// A fresh allocation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Allocation {
    pub(crate) addr: SlotAddr,
    /// The epoch of the region's current class assignment.
    pub(crate) epoch: u64,
}

/// What to evict to make room for a block of some class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reclaim {
    /// The class has regions: freeing any of its slots makes room.
    Class(u16),
    /// The class has no region and none is free: empty this region (fewest live slots).
    Region(u32),
    /// Nothing can be freed (every region is empty of blocks yet unusable: cannot happen
    /// unless the layout holds no regions).
    Nothing,
}

#[derive(Debug)]
struct Region {
    class: Option<u16>,
    epoch: u64,
    /// Packed: when its newest block was placed (`State::fills`; 0 for regions recovered at
    /// start, whose blocks' order is unknown). Eviction goes by it, not by `epoch`: a hole
    /// refilled in an old region holds a block as new as any.
    filled: u64,
    /// Free slot numbers (a stack; lowest numbers on top).
    free: Vec<u32>,
    live: u32,
    /// Packed: the first page no block has taken since the region was assigned.
    next: u32,
    /// Being emptied for this class: takes no new blocks of its own class, and once empty
    /// no other class may take it.
    draining_for: Option<u16>,
    /// Packed: opened for blocks that may have to stay (written back; see packed.rs).
    durable: bool,
}

#[derive(Debug)]
struct State {
    regions: Vec<Region>,
    /// Regions with no class.
    unassigned: Vec<u32>,
    /// Per class: regions of that class with at least one free slot.
    partial: Vec<Vec<u32>>,
    /// Per class: number of regions assigned.
    class_regions: Vec<u32>,
    used: u64,
    /// Of `used`, the bytes of live blocks in packed regions.
    packed_live: u64,
    live: u64,
    next_epoch: u64,
    /// Packed blocks placed since start (each region's `filled` is one of these).
    fills: u64,
    /// Packed: the regions new blocks go into, for blocks that may go (0) and written-back
    /// ones that may have to stay (1).
    open: [Vec<u32>; 2],
    /// Packed: freed blocks' places inside regions still holding others, by kind (as
    /// `open`) and page count, for a block of exactly that many pages (packed.rs).
    holes: [std::collections::HashMap<u32, Vec<packed::Hole>>; 2],
}

/// Thread-safe slot bookkeeping over a [`SlabLayout`].
#[derive(Debug)]
pub(crate) struct SlabAllocator {
    layout: SlabLayout,
    state: Mutex<State>,
}

impl SlabAllocator {
    pub(crate) fn new(layout: SlabLayout) -> Self {
        let n = layout.regions as usize;
        let classes = layout.classes.len();
        let state = State {
            regions: (0..n)
                .map(|_| Region {
                    class: None,
                    epoch: 0,
                    filled: 0,
                    free: Vec::new(),
                    live: 0,
                    next: 0,
                    draining_for: None,
                    durable: false,
                })
                .collect(),
            unassigned: (0..n as u32).rev().collect(),
            partial: vec![Vec::new(); classes],
            class_regions: vec![0; classes],
            used: 0,
            packed_live: 0,
            live: 0,
            next_epoch: 1,
            fills: 0,
            open: [Vec::new(), Vec::new()],
            holes: Default::default(),
        };
        SlabAllocator { layout, state: Mutex::new(state) }
    }

    pub(crate) fn layout(&self) -> &SlabLayout {
        &self.layout
    }

    /// Takes a slot for `len` bytes, or `None` when no slot of its class is free and no
    /// region can be given to the class. `len` must fit the largest class.
    pub(crate) fn alloc(&self, len: u64) -> Option<Allocation> {
        self.alloc_for(len, false)
    }

    /// [`SlabAllocator::alloc`] of a block that may have to stay (written back, until Blob
    /// has it): a packed layout keeps such blocks in regions of their own (see packed.rs).
    pub(crate) fn alloc_for(&self, len: u64, durable: bool) -> Option<Allocation> {
        if self.layout.packed {
            return self.alloc_packed(len, durable);
        }
        let class = self.layout.class_for(len)?;
        let mut st = self.state.lock();
        let region = match st.partial[class as usize].last() {
            Some(&r) => r,
            None => self.assign_region(&mut st, class)?,
        };
        let r = &mut st.regions[region as usize];
        let slot = r.free.pop().expect("partial regions have a free slot");
        r.live += 1;
        let epoch = r.epoch;
        if r.free.is_empty() {
            st.partial[class as usize].pop();
        }
        st.used += self.layout.slot_size(class);
        st.live += 1;
        Some(Allocation { addr: SlotAddr { region, slot, class, pages: 0 }, epoch })
    }

    /// Gives `class` a region: an unassigned one, else an empty region drained for it, else
    /// an empty region of another class that nobody drained for a third class.
    fn assign_region(&self, st: &mut State, class: u16) -> Option<u32> {
        let region = match st.unassigned.pop() {
            Some(r) => r,
            None => {
                let empty = |r: &Region| r.class.is_some() && r.live == 0;
                let r = st
                    .regions
                    .iter()
                    .position(|r| empty(r) && r.draining_for == Some(class))
                    .or_else(|| st.regions.iter().position(|r| empty(r) && r.draining_for.is_none()))?
                    as u32;
                let old = st.regions[r as usize].class.expect("assigned");
                st.partial[old as usize].retain(|&x| x != r);
                st.class_regions[old as usize] -= 1;
                r
            }
        };
        let slots = self.layout.slots_per_region(class);
        let epoch = st.next_epoch;
        st.next_epoch += 1;
        let r = &mut st.regions[region as usize];
        r.class = Some(class);
        r.epoch = epoch;
        r.free = (0..slots).rev().collect();
        r.live = 0;
        r.draining_for = None;
        st.partial[class as usize].push(region);
        st.class_regions[class as usize] += 1;
        Some(region)
    }

    /// Returns a slot. Freeing a slot that is not allocated is a bug and panics.
    pub(crate) fn free(&self, addr: SlotAddr) {
        if addr.class == PACKED {
            return self.free_packed(addr);
        }
        let mut st = self.state.lock();
        let r = &mut st.regions[addr.region as usize];
        assert_eq!(r.class, Some(addr.class), "freeing {addr:?} from a region of another class");
        assert!(r.live > 0, "free of {addr:?} in a region with no live slots");
        debug_assert!(!r.free.contains(&addr.slot), "double free of {addr:?}");
        let was_full = r.free.is_empty();
        r.free.push(addr.slot);
        r.live -= 1;
        if was_full && r.draining_for.is_none() {
            st.partial[addr.class as usize].push(addr.region);
        }
        st.used -= self.layout.slot_size(addr.class);
        st.live -= 1;
    }

    /// Where to evict for a block of `len` bytes to fit. A region named for reclaim drains
    /// for that block's class: it takes no new blocks of its own class (freed slots would
    /// otherwise be refilled first and it would never empty), and once empty it goes to the
    /// class it drained for, never to another (which would undo the eviction).
    pub(crate) fn reclaim_for(&self, len: u64) -> Reclaim {
        let Some(class) = self.layout.class_for(len) else { return Reclaim::Nothing };
        let mut st = self.state.lock();
        if st.class_regions[class as usize] > 0 {
            return Reclaim::Class(class);
        }
        // Keep emptying a region already draining for this class before starting another.
        let pick = |draining_for: Option<u16>| {
            st.regions
                .iter()
                .enumerate()
                .filter(|(_, r)| r.class.is_some() && r.draining_for == draining_for)
                .min_by_key(|(_, r)| r.live)
                .map(|(i, _)| i as u32)
        };
        let Some(region) = pick(Some(class)).or_else(|| pick(None)) else { return Reclaim::Nothing };
        let r = &mut st.regions[region as usize];
        if r.draining_for.is_none() {
            r.draining_for = Some(class);
            let old = r.class.expect("assigned");
            st.partial[old as usize].retain(|&x| x != region);
        }
        Reclaim::Region(region)
    }

    /// Bytes held by allocated slots (headers included) and the number of live slots.
    /// Bytes held by allocated slots and the number of live slots; a packed region's bytes
    /// are all it took (freed blocks' space in it is reusable only once it empties, and a
    /// closed one takes no more), so this is what new blocks cannot have.
    pub(crate) fn usage(&self) -> (u64, u64) {
        let st = self.state.lock();
        let total = self.layout.region_pages() as u64;
        let packed: u64 = st
            .regions
            .iter()
            .enumerate()
            .filter(|(_, r)| r.class == Some(PACKED))
            .map(|(i, r)| if st.open.iter().any(|o| o.contains(&(i as u32))) { r.next as u64 } else { total })
            .sum();
        (st.used - st.packed_live + packed * PAGE, st.live)
    }

    /// Recovery: gives `region` to `class` with the epoch found on disk and marks `used`
    /// slots taken. Call once per region before any `alloc`.
    pub(crate) fn restore_region(&self, region: u32, class: u16, epoch: u64, used: &[u32]) {
        let mut st = self.state.lock();
        st.unassigned.retain(|&r| r != region);
        let slots = self.layout.slots_per_region(class);
        let r = &mut st.regions[region as usize];
        r.class = Some(class);
        r.epoch = epoch;
        let mut taken = vec![false; slots as usize];
        for &s in used {
            taken[s as usize] = true;
        }
        r.free = (0..slots).rev().filter(|&s| !taken[s as usize]).collect();
        r.live = used.len() as u32;
        r.draining_for = None;
        let has_free = !r.free.is_empty();
        if has_free {
            st.partial[class as usize].push(region);
        }
        st.class_regions[class as usize] += 1;
        st.used += used.len() as u64 * self.layout.slot_size(class);
        st.live += used.len() as u64;
        st.next_epoch = st.next_epoch.max(epoch + 1);
    }
}

mod packed;

#[cfg(test)]
mod tests;
