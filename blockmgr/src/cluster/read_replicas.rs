//! Read replicas: a key that other nodes read again and again gets copies on the readers'
//! nodes, and its owner spreads further reads over those copies.
//!
//! Each owner counts the reads other members ask it for (`x-kvtier-read`), per key. Below
//! `cluster.read_replica_after` a reader keeps nothing (one-off reads do not fill every
//! node's memory). From there on the owner tells each reader to keep its copy (a cache
//! copy on the reader's node, evictable like any other) and remembers it as a holder, up
//! to `cluster.read_replicas` of them. A later reader is answered in turns: by the owner
//! itself, or with the holders to read from instead (`MISS_REASON_ELSEWHERE`), so N nodes
//! restoring one checkpoint are served by a growing set of nodes, not by its owners alone.
//!
//! Holders are remembered optimistically. One that evicted its copy, restarted or left is
//! named by the next reader sent to it that did not find the key there; the owner forgets
//! it and answers that reader itself. A delete of the key reaches every holder it knows.
//! What an owner remembers is bounded (`TRACKED` keys, the least recently read forgotten
//! first) and lost on restart: popularity is counted again.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use kvtier_tiers::BlockKey;
use parking_lot::Mutex;

/// Keys an owner keeps read counts and holders of.
const TRACKED: u64 = 65_536;
/// Holders named in one redirect: the one whose turn it is, and one to try after it.
const NAMED: usize = 2;

/// How long a holder named to readers is not forgotten when a reader sent to it did not
/// find the key: readers sent to it while its own read is still in flight (a checkpoint
/// restored by many nodes at once) miss it for a moment.
const GRACE: Duration = Duration::from_secs(10);

/// How an owner answers one member's read of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReadRoute {
    /// This node answers the bytes; `keep`: the reader may keep them as a read replica, if
    /// [`ReadReplicas::kept`] still finds room for it once it has them.
    Here { keep: bool },
    /// The reader reads from these holders instead (best first); `keep`: it is a holder
    /// now, so it keeps the copy it reads.
    Elsewhere { holders: Vec<String>, keep: bool },
}

#[derive(Debug)]
struct Holder {
    id: String,
    since: Instant,
}

#[derive(Debug, Default)]
struct Reads {
    /// Reads served or redirected (saturating).
    count: u32,
    /// Members holding a read replica, oldest first.
    holders: Vec<Holder>,
    /// Whose turn the next read is: `holders.len()` is this node's.
    turn: usize,
}

/// One owner's read counts and read replicas.
pub(crate) struct ReadReplicas {
    after: u32,
    most: usize,
    keys: moka::sync::Cache<BlockKey, Arc<Mutex<Reads>>>,
}

impl std::fmt::Debug for ReadReplicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadReplicas").field("after", &self.after).field("most", &self.most).finish()
    }
}

impl ReadReplicas {
    /// Read replicas after `after` reads of a key (0: never), at most `most` per key.
    pub(crate) fn new(after: u32, most: usize) -> Self {
        ReadReplicas { after, most, keys: moka::sync::Cache::new(TRACKED) }
    }

    /// Member `reader` asks for `key` (so it holds no copy now). `tried` are holders it was
    /// sent to that did not have it: they are forgotten (unless named moments ago), and
    /// this node answers, as it does when `redirect` is false. `candidate` says who may be
    /// a holder (a member that does not own the key); `reader_owns`: the reader is an owner
    /// itself (repairing its copy), so it is never a read replica.
    pub(crate) fn route(
        &self,
        key: &BlockKey,
        reader: &str,
        tried: &[String],
        redirect: bool,
        reader_owns: bool,
        candidate: impl Fn(&str) -> bool,
    ) -> ReadRoute {
        if self.after == 0 {
            return ReadRoute::Here { keep: false };
        }
        let reads = self.keys.get_with_by_ref(key, Default::default);
        let mut r = reads.lock();
        r.holders
            .retain(|h| h.id != reader && candidate(&h.id) && !(tried.contains(&h.id) && h.since.elapsed() > GRACE));
        r.count = r.count.saturating_add(1);
        if r.count < self.after || reader_owns {
            return ReadRoute::Here { keep: false };
        }
        if redirect && tried.is_empty() && !r.holders.is_empty() {
            let turn = r.turn % (r.holders.len() + 1);
            r.turn = r.turn.wrapping_add(1);
            if turn < r.holders.len() {
                let mut named: Vec<String> = r.holders.iter().map(|h| h.id.clone()).collect();
                named.rotate_left(turn);
                named.truncate(NAMED);
                let keep = remember(&mut r, reader, self.most);
                return ReadRoute::Elsewhere { holders: named, keep };
            }
        }
        ReadRoute::Here { keep: r.holders.len() < self.most }
    }

    /// `reader` has the bytes this node answered with `keep`: whether it is a holder now
    /// (so keeps them; no room left: it keeps nothing, or deletes would miss its copy).
    pub(crate) fn kept(&self, key: &BlockKey, reader: &str) -> bool {
        self.keys.get(key).is_some_and(|reads| remember(&mut reads.lock(), reader, self.most))
    }

    /// Forgets `key` (it was deleted): the holders of its read replicas.
    pub(crate) fn forget(&self, key: &BlockKey) -> Vec<String> {
        let holders = self.keys.remove(key).map(|reads| std::mem::take(&mut reads.lock().holders));
        holders.unwrap_or_default().into_iter().map(|h| h.id).collect()
    }
}

/// Adds `reader` to the holders unless there are `most` already: whether it is one now.
fn remember(r: &mut Reads, reader: &str, most: usize) -> bool {
    if r.holders.iter().any(|h| h.id == reader) {
        return true;
    }
    if r.holders.len() >= most {
        return false;
    }
    r.holders.push(Holder { id: reader.to_string(), since: Instant::now() });
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> BlockKey {
        BlockKey::parse("kv/llama", b"k").unwrap()
    }

    fn read(r: &ReadReplicas, reader: &str) -> ReadRoute {
        r.route(&key(), reader, &[], true, false, |_| true)
    }

    fn here(keep: bool) -> ReadRoute {
        ReadRoute::Here { keep }
    }

    fn elsewhere(holders: &[&str], keep: bool) -> ReadRoute {
        ReadRoute::Elsewhere { holders: holders.iter().map(|h| h.to_string()).collect(), keep }
    }

    #[test]
    fn reads_past_the_threshold_make_read_replicas_and_go_round_them() {
        let r = ReadReplicas::new(2, 2);
        assert_eq!(read(&r, "a"), here(false), "the first read keeps nothing");
        assert_eq!(read(&r, "b"), here(true), "the second may make b a read replica");
        assert!(r.kept(&key(), "b"));
        // Turns go round the holders and this node; a reader sent on becomes a holder.
        assert_eq!(read(&r, "c"), elsewhere(&["b"], true));
        assert_eq!(read(&r, "d"), elsewhere(&["c", "b"], false), "two holders at most: d keeps nothing");
        assert_eq!(read(&r, "e"), here(false), "this node's turn, and no room");
        assert!(!r.kept(&key(), "e"));
        assert_eq!(read(&r, "f"), elsewhere(&["b", "c"], false));
        // A holder asking again (it lost its copy) is never sent to itself, and takes its
        // place again.
        assert_eq!(read(&r, "b"), elsewhere(&["c"], true));
    }

    #[test]
    fn holders_that_missed_or_left_are_forgotten_and_the_owner_answers() {
        let r = ReadReplicas::new(1, 8);
        assert_eq!(read(&r, "a"), here(true));
        assert!(r.kept(&key(), "a"));
        assert_eq!(read(&r, "b"), elsewhere(&["a"], true));
        // b did not find it on a, named moments ago: the owner answers, a stays named.
        assert_eq!(r.route(&key(), "b", &["a".into()], true, false, |_| true), here(true));
        // Once a has been named for a while, a miss there forgets it.
        {
            let reads = r.keys.get(&key()).unwrap();
            let named = &mut reads.lock().holders[0].since;
            *named = named.checked_sub(GRACE * 2).expect("the machine has been up longer than that");
        }
        assert_eq!(r.route(&key(), "c", &["a".into()], true, false, |_| true), here(true));
        for reader in ["d", "e", "f", "g"] {
            if let ReadRoute::Elsewhere { holders, .. } = read(&r, reader) {
                assert!(!holders.contains(&"a".to_string()), "{reader} sent to a forgotten holder: {holders:?}");
            }
        }
        // b left the cluster (or owns the key now): never named again.
        for reader in ["h", "i", "j"] {
            if let ReadRoute::Elsewhere { holders, .. } = r.route(&key(), reader, &[], true, false, |m| m != "b") {
                assert!(!holders.contains(&"b".to_string()), "{reader} sent to a node that left: {holders:?}");
            }
        }
    }

    #[test]
    fn owners_off_limits_and_deletes() {
        let r = ReadReplicas::new(1, 1);
        assert_eq!(
            r.route(&key(), "owner2", &[], true, true, |_| true),
            here(false),
            "an owner repairing keeps its own copy"
        );
        assert_eq!(read(&r, "a"), here(true));
        assert!(r.kept(&key(), "a"));
        assert_eq!(read(&r, "b"), elsewhere(&["a"], false));
        assert_eq!(read(&r, "c"), here(false), "this node's turn, no room");
        assert_eq!(r.forget(&key()), vec!["a".to_string()], "a delete names every holder");
        assert_eq!(read(&r, "d"), here(true), "counted again from the start");
        // Fetched from Blob for a reader (no redirect): keep only with room.
        let f = ReadReplicas::new(1, 1);
        assert_eq!(f.route(&key(), "x", &[], false, false, |_| true), here(true));

        let off = ReadReplicas::new(0, 8);
        for reader in ["a", "b", "c"] {
            assert_eq!(read(&off, reader), here(false));
        }
    }
}
