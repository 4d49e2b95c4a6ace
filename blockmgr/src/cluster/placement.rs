//! Rendezvous (highest-random-weight) placement: a key's owners are the `r` members with
//! the highest score `XXH3(key, seed = XXH3(node id))`, best first (the first is the
//! primary). Every node computes the same owners from the same member list, with no table
//! to agree on; a node that leaves moves only the keys it owned, one that joins takes about
//! 1/N of each other node's keys.
//!
//! XXH3 is a fixed, documented function: nodes built by different compilers or versions
//! agree (std's hashers promise no such thing).

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// The members keys are placed over, each with its hash seed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    nodes: Vec<(String, u64)>,
}

impl Placement {
    /// Placement over `members` (node ids; order and duplicates do not matter).
    pub fn new<I, S>(members: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut nodes: Vec<(String, u64)> = members
            .into_iter()
            .map(|id| {
                let id = id.into();
                let seed = xxh3_64(id.as_bytes());
                (id, seed)
            })
            .collect();
        nodes.sort();
        nodes.dedup();
        Placement { nodes }
    }

    /// How many members there are.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Whether `id` is a member.
    pub fn contains(&self, id: &str) -> bool {
        self.nodes.iter().any(|(n, _)| n == id)
    }

    /// The `r` owners of `placement_key` (fewer when there are fewer members), best first.
    pub fn owners(&self, placement_key: &[u8], r: usize) -> Vec<&str> {
        let mut scored: Vec<(u64, &str)> =
            self.nodes.iter().map(|(id, seed)| (xxh3_64_with_seed(placement_key, *seed), id.as_str())).collect();
        let r = r.min(scored.len());
        if r == 0 {
            return Vec::new();
        }
        // Highest score first; ties (astronomically rare) broken by id, so still agreed.
        let by_score = |a: &(u64, &str), b: &(u64, &str)| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1));
        if r < scored.len() {
            scored.select_nth_unstable_by(r - 1, by_score);
            scored.truncate(r);
        }
        scored.sort_unstable_by(by_score);
        scored.into_iter().map(|(_, id)| id).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::Placement;

    fn keys(n: u32) -> impl Iterator<Item = Vec<u8>> {
        (0..n).map(|i| format!("block-{i}").into_bytes())
    }

    #[test]
    fn owners_are_distinct_ordered_and_the_same_whatever_the_member_order() {
        let a = Placement::new(["n1", "n2", "n3", "n4", "n5"]);
        let b = Placement::new(["n5", "n3", "n1", "n4", "n2", "n3"]);
        assert_eq!(a, b);
        for key in keys(1000) {
            let owners = a.owners(&key, 3);
            assert_eq!(owners.len(), 3);
            assert!(owners[0] != owners[1] && owners[1] != owners[2] && owners[0] != owners[2]);
            assert_eq!(owners, b.owners(&key, 3));
            // The first r owners are the prefix of the first r+1: raising R adds a replica
            // without moving the others.
            assert_eq!(a.owners(&key, 2), owners[..2]);
        }
        assert_eq!(a.owners(b"k", 9).len(), 5, "never more owners than members");
        assert!(Placement::new(Vec::<String>::new()).owners(b"k", 2).is_empty());
    }

    #[test]
    fn keys_spread_evenly_and_a_departure_moves_only_the_departed_nodes_keys() {
        let ids: Vec<String> = (0..10).map(|i| format!("node-{i}")).collect();
        let all = Placement::new(ids.iter().cloned());
        let mut primaries: HashMap<&str, usize> = HashMap::new();
        for key in keys(20_000) {
            *primaries.entry(all.owners(&key, 1)[0]).or_default() += 1;
        }
        for id in &ids {
            let share = primaries[id.as_str()] as f64 / 20_000.0;
            assert!((0.08..0.12).contains(&share), "{id} is primary for {share:.3} of keys");
        }
        let without = Placement::new(ids.iter().filter(|id| *id != "node-3").cloned());
        for key in keys(5_000) {
            let before = all.owners(&key, 2);
            let after = without.owners(&key, 2);
            if !before.contains(&"node-3") {
                assert_eq!(before, after, "a key node-3 did not own stays where it was");
            } else {
                let kept: Vec<&&str> = before.iter().filter(|id| **id != "node-3").collect();
                assert!(kept.iter().all(|id| after.contains(id)), "the surviving owner keeps it");
            }
        }
    }
}
