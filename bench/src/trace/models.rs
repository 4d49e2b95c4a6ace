//! What other caches of the same capacity would hit on a trace, computed offline, counted as
//! kvtier's replay counts: a request hits the longest prefix of its blocks that is cached,
//! then every block it names is referenced (hits read, the rest recomputed and stored).

use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};

/// One request: its blocks, in prefix order.
pub(crate) type Blocks = Vec<u64>;

/// Hits of a cache that never evicts: what the trace can give at all.
pub(crate) fn reuse_bound(requests: &[Blocks]) -> u64 {
    let mut seen = HashSet::new();
    let mut hits = 0;
    for r in requests {
        hits += r.iter().take_while(|b| seen.contains(*b)).count() as u64;
        seen.extend(r.iter().copied());
    }
    hits
}

/// A least-recently-used cache of `capacity` blocks. A request's blocks are touched last
/// to first, so a chain's tail is older than its head, as kvtier orders them.
#[derive(Default)]
pub(crate) struct Lru {
    capacity: usize,
    clock: u64,
    stamp: HashMap<u64, u64>,
    order: BTreeMap<u64, u64>,
}

impl Lru {
    pub(crate) fn new(capacity: usize) -> Self {
        Lru { capacity, ..Default::default() }
    }

    pub(crate) fn contains(&self, b: u64) -> bool {
        self.stamp.contains_key(&b)
    }

    /// Touches or inserts `b`; returns what it evicted.
    pub(crate) fn touch(&mut self, b: u64) -> Option<u64> {
        self.clock += 1;
        if let Some(old) = self.stamp.insert(b, self.clock) {
            self.order.remove(&old);
        }
        self.order.insert(self.clock, b);
        if self.stamp.len() > self.capacity {
            let (_, victim) = self.order.pop_first().expect("over capacity");
            self.stamp.remove(&victim);
            return Some(victim);
        }
        None
    }
}

/// Hits of an LRU cache of `capacity` blocks.
pub(crate) fn lru(requests: &[Blocks], capacity: usize) -> u64 {
    let mut cache = Lru::new(capacity);
    let mut hits = 0;
    for r in requests {
        hits += r.iter().take_while(|b| cache.contains(**b)).count() as u64;
        for b in r.iter().rev() {
            cache.touch(*b);
        }
    }
    hits
}

/// Hits of memory as an LRU of `memory` blocks over an SSD of `ssd` blocks that keeps what
/// memory evicts, first in first out, and keeps its copy when a hit is promoted: the
/// two-tier model the issue compares kvtier's memory hits with. Returns (memory, SSD) hits.
pub(crate) fn lru_memory_over_fifo_ssd(requests: &[Blocks], memory: usize, ssd: usize) -> (u64, u64) {
    let mut mem = Lru::new(memory);
    let mut disk = Lru::new(ssd); // never touched again after insertion: FIFO
    let (mut from_mem, mut from_ssd) = (0, 0);
    for r in requests {
        for b in r {
            match (mem.contains(*b), disk.contains(*b)) {
                (true, _) => from_mem += 1,
                (false, true) => from_ssd += 1,
                _ => break,
            }
        }
        for b in r.iter().rev() {
            if let Some(out) = mem.touch(*b)
                && !disk.contains(out)
            {
                disk.touch(out);
            }
        }
    }
    (from_mem, from_ssd)
}

/// Hits of Belady's optimal cache of `capacity` blocks: on a miss it evicts the block whose
/// next reference is furthest away. An upper bound for any policy of that capacity.
pub(crate) fn opt(requests: &[Blocks], capacity: usize) -> u64 {
    let stream: Vec<u64> = requests.iter().flatten().copied().collect();
    let mut next = vec![usize::MAX; stream.len()];
    let mut last: HashMap<u64, usize> = HashMap::new();
    for (i, b) in stream.iter().enumerate().rev() {
        next[i] = last.get(b).copied().unwrap_or(usize::MAX);
        last.insert(*b, i);
    }
    // Each cached block's next use; the heap holds (next use, block) with stale entries
    // skipped when popped.
    let mut cached: HashMap<u64, usize> = HashMap::new();
    let mut heap: BinaryHeap<(usize, u64)> = BinaryHeap::new();
    let (mut hits, mut i) = (0, 0);
    for r in requests {
        hits += r.iter().take_while(|b| cached.contains_key(*b)).count() as u64;
        for b in r {
            cached.insert(*b, next[i]);
            heap.push((next[i], *b));
            i += 1;
            while cached.len() > capacity {
                let (when, victim) = heap.pop().expect("heap holds every cached block");
                if cached.get(&victim) == Some(&when) {
                    cached.remove(&victim);
                }
            }
        }
    }
    hits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_agree_on_a_trace_worked_by_hand() {
        // Two conversations sharing block 0; the second turn of each extends the first.
        let t: Vec<Blocks> = vec![vec![0, 1, 2], vec![0, 3], vec![0, 1, 2, 4], vec![0, 3, 5]];
        assert_eq!(reuse_bound(&t), 1 + 3 + 2);
        // LRU of 3: after request 2 it holds {0, 3} plus 1 or 2 (1 was touched later than
        // 2, the tail); request 3 hits 0 then 1 then misses 2.
        assert_eq!(lru(&t, 3), 1 + 2 + 1);
        assert!(opt(&t, 3) >= lru(&t, 3));
        assert_eq!(opt(&t, 100), reuse_bound(&t));
        assert_eq!(lru(&t, 100), reuse_bound(&t));
        let (m, s) = lru_memory_over_fifo_ssd(&t, 2, 100);
        assert_eq!(m + s, reuse_bound(&t), "memory and an ample SSD hold everything");
        assert!(m < reuse_bound(&t));
    }
}
