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

use parking_lot::Mutex;

/// Alignment and granularity of every slot, region and I/O: 4 KiB.
pub(crate) const PAGE: u64 = 4096;
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
        Ok(SlabLayout { region_size, region_header, slot_overhead, classes, regions: regions as u32 })
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
    pub(crate) fn slot_offset(&self, addr: SlotAddr) -> u64 {
        addr.region as u64 * self.region_size + self.region_header + addr.slot as u64 * self.slot_size(addr.class)
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

/// Where a block lives: region, slot within it, and the region's class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SlotAddr {
    pub(crate) region: u32,
    pub(crate) slot: u32,
    pub(crate) class: u16,
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
    /// Free slot numbers (a stack; lowest numbers on top).
    free: Vec<u32>,
    live: u32,
    /// Being emptied for this class: takes no new blocks of its own class, and once empty
    /// no other class may take it.
    draining_for: Option<u16>,
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
    live: u64,
    next_epoch: u64,
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
                .map(|_| Region { class: None, epoch: 0, free: Vec::new(), live: 0, draining_for: None })
                .collect(),
            unassigned: (0..n as u32).rev().collect(),
            partial: vec![Vec::new(); classes],
            class_regions: vec![0; classes],
            used: 0,
            live: 0,
            next_epoch: 1,
        };
        SlabAllocator { layout, state: Mutex::new(state) }
    }

    pub(crate) fn layout(&self) -> &SlabLayout {
        &self.layout
    }

    /// Takes a slot for `len` bytes, or `None` when no slot of its class is free and no
    /// region can be given to the class. `len` must fit the largest class.
    pub(crate) fn alloc(&self, len: u64) -> Option<Allocation> {
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
        Some(Allocation { addr: SlotAddr { region, slot, class }, epoch })
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
    pub(crate) fn usage(&self) -> (u64, u64) {
        let st = self.state.lock();
        (st.used, st.live)
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;

    const MIB: u64 = 1 << 20;

    fn layout(capacity: u64, region: u64, header: u64, overhead: u64, max: u64) -> SlabLayout {
        SlabLayout::new("t", capacity, region, header, overhead, max).unwrap()
    }

    #[test]
    fn classes_waste_at_most_an_eighth() {
        let l = layout(64 * MIB, 64 * MIB, 0, 0, 64 * MIB);
        for len in [1, 4096, 4097, 100_000, 2 * MIB, 2 * MIB + 1, 5 * MIB, 32 * MIB, 64 * MIB] {
            let c = l.class_for(len).unwrap();
            let size = l.class_size(c);
            assert!(size >= len && size.is_multiple_of(PAGE));
            assert!(size - len <= (len / 8).max(PAGE), "len {len} -> class {size}");
        }
        assert_eq!(l.class_size(l.class_for(2 * MIB).unwrap()), 2 * MIB, "powers of two are exact classes");
        assert_eq!(l.class_for(64 * MIB + 1), None);
        let small = layout(64 * MIB, 64 * MIB, 0, 0, MIB);
        assert_eq!(small.class_for(64 * MIB), l.class_for(64 * MIB), "classes do not depend on max_block");
    }

    #[test]
    fn config_errors_name_the_knob() {
        let e = SlabLayout::new("ssd", 64 * MIB, 4 * MIB, 4096, 4096, 4 * MIB).unwrap_err().to_string();
        assert!(e.contains("ssd.region_size") && e.contains("cannot hold"), "{e}");
        let e = SlabLayout::new("cpu", MIB, 4 * MIB, 0, 0, MIB).unwrap_err().to_string();
        assert!(e.contains("cpu.capacity"), "{e}");
    }

    #[test]
    fn fills_to_capacity_then_refuses_and_reuses() {
        let l = layout(8 * MIB, 2 * MIB, 0, 0, 2 * MIB);
        let a = SlabAllocator::new(l);
        let slots: Vec<_> = (0..4).map(|_| a.alloc(2 * MIB).unwrap()).collect();
        assert!(a.alloc(2 * MIB).is_none());
        assert!(a.alloc(4096).is_none(), "no region left for another class");
        assert_eq!(a.usage(), (8 * MIB, 4));
        a.free(slots[2].addr);
        assert_eq!(a.reclaim_for(4096), Reclaim::Region(slots[2].addr.region));
        let small = a.alloc(4096).expect("empty region moves to the small class");
        assert_eq!(small.addr.region, slots[2].addr.region);
        assert!(small.epoch > slots[2].epoch, "a new assignment gets a new epoch");
        assert_eq!(a.reclaim_for(2 * MIB), Reclaim::Class(slots[0].addr.class));
    }

    #[test]
    fn a_region_drained_for_another_class_is_not_refilled() {
        let l = layout(4 * MIB, 2 * MIB, 0, 0, 2 * MIB);
        let a = SlabAllocator::new(l);
        let small: Vec<_> = (0..1024).map(|_| a.alloc(4096).unwrap().addr).collect(); // fills both regions
        assert!(a.alloc(4096).is_none() && a.alloc(MIB).is_none());
        let Reclaim::Region(r) = a.reclaim_for(MIB) else { panic!("a region must be named") };
        assert_eq!(a.reclaim_for(MIB), Reclaim::Region(r), "the same region keeps draining");
        let (mine, others): (Vec<_>, Vec<_>) = small.into_iter().partition(|s| s.region == r);
        a.free(mine[0]);
        assert!(a.alloc(4096).is_none(), "a draining region takes no new blocks of its class");
        for s in &mine[1..] {
            a.free(*s);
        }
        assert!(a.alloc(4096).is_none(), "an empty region drained for 1 MiB blocks is not taken back by 4 KiB ones");
        let big = a.alloc(MIB).expect("the drained region moves to the class that asked");
        assert_eq!(big.addr.region, r);
        a.free(others[0]);
        assert!(a.alloc(4096).is_some(), "other regions of the class still take blocks");
    }

    #[test]
    fn random_alloc_free_never_overlaps_or_exceeds_capacity() {
        let l = layout(64 * MIB, 4 * MIB, 4096, 4096, MIB);
        let a = SlabAllocator::new(l.clone());
        let mut rng = StdRng::seed_from_u64(7);
        let mut live: Vec<(SlotAddr, u64)> = Vec::new();
        for _ in 0..20_000 {
            if rng.random_bool(0.55) {
                let len = rng.random_range(1..=MIB);
                if let Some(al) = a.alloc(len) {
                    live.push((al.addr, len));
                }
            } else if !live.is_empty() {
                let (addr, _) = live.swap_remove(rng.random_range(0..live.len()));
                a.free(addr);
            }
            let (used, n) = a.usage();
            assert!(used <= l.capacity() && n == live.len() as u64);
        }
        let mut seen = HashSet::new();
        let mut spans: Vec<(u64, u64)> = live
            .iter()
            .map(|&(addr, len)| {
                assert!(seen.insert(l.slot_index(addr)));
                let start = l.slot_offset(addr);
                assert!(l.class_size(addr.class) >= len);
                let end = start + l.slot_size(addr.class);
                assert!(end <= l.region_offset(addr.region) + l.region_size, "slot spills out of its region");
                (start, end)
            })
            .collect();
        spans.sort();
        assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "slots overlap");
    }

    #[test]
    fn restore_marks_slots_taken() {
        let l = layout(8 * MIB, 4 * MIB, 4096, 4096, MIB);
        let class = l.class_for(MIB).unwrap();
        let a = SlabAllocator::new(l);
        a.restore_region(1, class, 41, &[0, 2]);
        let got = a.alloc(MIB).unwrap();
        assert_eq!((got.addr.region, got.addr.slot, got.epoch), (1, 1, 41));
        let other = a.alloc(4096).unwrap();
        assert_eq!(other.addr.region, 0);
        assert!(other.epoch > 41, "epochs after recovery exceed those found on disk");
    }
}
