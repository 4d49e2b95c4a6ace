//! The slab allocator: classes, regions, drains, recovery, and packed regions.
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

fn packed(capacity: u64, region: u64, max: u64) -> SlabAllocator {
    SlabAllocator::new(SlabLayout::new("t", capacity, region, 4096, 4096, max).unwrap().packed())
}

#[test]
fn packed_regions_take_any_sizes_one_after_another() {
    let a = packed(16 * MIB, 4 * MIB, MIB);
    let l = a.layout().clone();
    let first = a.alloc(100).unwrap();
    let second = a.alloc(3 * PAGE + 1).unwrap();
    assert_eq!((first.addr.class, first.addr.slot, first.addr.pages), (PACKED, 0, 2), "a header page, a data page");
    assert_eq!((second.addr.region, second.addr.slot, second.addr.pages), (first.addr.region, 2, 5));
    assert_eq!(l.slot_offset(second.addr), l.region_offset(second.addr.region) + 4096 + 2 * PAGE);
    // A block no open region can hold opens another, with a new epoch.
    let mut all = vec![first, second];
    all.extend((0..4).map(|_| a.alloc(MIB).unwrap()));
    let bigger = *all.last().unwrap();
    assert_ne!(bigger.addr.region, first.addr.region);
    assert!(bigger.epoch > first.epoch);
    assert_eq!(a.usage().1, 6);
    // Small blocks fill the end a big one left.
    let small = a.alloc(PAGE).unwrap();
    assert_eq!(small.addr.region, first.addr.region, "the open region with the least room that holds it");
    all.push(small);
    // A region is reused only once every block in it is freed, from its first page.
    for al in all.iter().filter(|al| al.addr.region == first.addr.region) {
        a.free(al.addr);
    }
    assert_eq!(a.usage(), (l.packed_pages(MIB) as u64 * PAGE, 1));
    let again = a.alloc(3 * MIB).unwrap();
    assert_eq!(again.addr.slot, 0, "an emptied region starts over");
    assert!(again.epoch > bigger.epoch, "under a new epoch");
}

#[test]
fn mixed_sizes_fill_packed_regions_where_classes_stranded_them() {
    // Sizes spread over many classes (every file's tail chunk is its own size): each class
    // took a region of its own, so the store refused blocks with most of it empty.
    let mut rng = StdRng::seed_from_u64(3);
    let sizes: Vec<u64> = (0..20_000).map(|_| (rng.random_range(10.0f64..20.0).exp2()) as u64).collect();
    let fill = |a: &SlabAllocator| {
        let mut data = 0;
        for &len in &sizes {
            match a.alloc(len) {
                Some(_) => data += len,
                None => break,
            }
        }
        data as f64 / (64 * MIB) as f64
    };
    let classes = SlabAllocator::new(layout(64 * MIB, 4 * MIB, 4096, 4096, MIB));
    let packed = packed(64 * MIB, 4 * MIB, MIB);
    let (by_class, by_packing) = (fill(&classes), fill(&packed));
    assert!(by_class < 0.5, "classes filled {by_class:.2}");
    assert!(by_packing >= 0.9, "packed regions filled only {by_packing:.2}");
}

#[test]
fn packed_regions_are_evicted_oldest_first() {
    let a = packed(12 * MIB, 4 * MIB, MIB);
    let mut held = Vec::new();
    for len in [MIB, MIB, MIB, 3 * MIB, 3 * MIB] {
        held.push(a.alloc(len).unwrap().addr);
    }
    let order = a.eviction_order();
    assert_eq!(order, [held[0].region, held[3].region, held[4].region], "by the order they were opened");
    for addr in held.iter().filter(|h| h.region == held[3].region) {
        a.free(*addr);
    }
    assert_eq!(a.eviction_order(), [held[0].region, held[4].region], "an emptied region holds nothing to evict");
}

/// A block placed in a hole of the oldest region is the newest block there is: its region
/// goes to the back of the eviction order, or the next eviction loses it moments after it was
/// written (an S3 object's part, NotFound right after its completion).
#[test]
fn a_refilled_hole_makes_its_region_the_last_to_be_evicted() {
    let a = packed(12 * MIB, 4 * MIB, MIB);
    let old: Vec<SlotAddr> = (0..3).map(|_| a.alloc(MIB).unwrap().addr).collect();
    let newer = a.alloc(3 * MIB).unwrap().addr;
    assert_eq!(a.eviction_order(), [old[0].region, newer.region]);
    a.free(old[1]);
    let refilled = a.alloc(MIB).unwrap().addr;
    assert_eq!((refilled.region, refilled.slot), (old[1].region, old[1].slot), "the hole is taken");
    assert_eq!(a.eviction_order(), [newer.region, old[0].region], "the refilled region goes last");
}

#[test]
fn a_restored_packed_region_continues_after_its_chain() {
    let a = packed(12 * MIB, 4 * MIB, MIB);
    a.restore_packed(1, 40, &[3, 9], 20);
    a.restore_packed(2, 2, &[], 7);
    a.reopen_restored();
    assert_eq!(a.usage(), (20 * PAGE, 2), "its chain's pages are taken");
    let next = a.alloc(PAGE).unwrap();
    assert_eq!((next.addr.region, next.addr.slot, next.epoch), (1, 20, 40), "appended after its chain");
    assert_eq!(a.alloc(3 * MIB).unwrap().addr.region, 1, "and fills the rest of it");
    let big = a.alloc(3 * MIB).unwrap();
    assert_ne!(big.addr.region, 1);
    assert!(big.epoch > 40, "epochs after recovery exceed those found on disk");
    assert!(a.alloc(3 * MIB).is_some(), "an empty restored region is free for use");
}

#[test]
fn a_freed_blocks_pages_take_the_next_block_of_exactly_their_size() {
    let a = packed(12 * MIB, 4 * MIB, MIB);
    let ten_pages = 9 * PAGE; // a header page and nine of data
    let blocks: Vec<Allocation> = (0..10).map(|_| a.alloc(ten_pages).unwrap()).collect();
    let region = blocks[0].addr.region;
    assert!(blocks.iter().all(|b| b.addr.region == region && b.addr.pages == 10));
    a.free(blocks[3].addr);
    // Another size, or a block that may have to stay, goes to the end (or its own region).
    let other = a.alloc(4 * PAGE).unwrap();
    assert_eq!((other.addr.region, other.addr.slot), (region, 100), "after the last block");
    let durable = a.alloc_for(ten_pages, true).unwrap();
    assert_ne!(durable.addr.region, region, "written-back blocks keep regions of their own");
    // The same size takes the hole: same place, same epoch (the region header stands).
    let refill = a.alloc(ten_pages - 100).unwrap();
    assert_eq!((refill.addr.region, refill.addr.slot, refill.addr.pages), (region, 30, 10));
    assert_eq!(refill.epoch, blocks[0].epoch);
    assert_eq!(a.usage().1, 12);
    // A region that empties forgets its holes: its next use starts over under a new epoch.
    a.free(blocks[5].addr);
    for b in blocks.iter().filter(|b| ![3, 5].contains(&(b.addr.slot / 10))) {
        a.free(b.addr);
    }
    a.free(refill.addr);
    a.free(other.addr);
    let fresh = a.alloc(ten_pages).unwrap();
    assert_ne!((fresh.addr.region, fresh.epoch), (region, blocks[0].epoch), "no hole of an emptied region");
    assert_eq!(a.usage().1, 2);
}
