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

use std::sync::Arc;

use kvtier_tiers::BlockKey;
use parking_lot::Mutex;

/// Keys an owner keeps read counts and holders of.
const TRACKED: u64 = 65_536;
/// Holders named in one redirect: the one whose turn it is, and one to try after it.
const NAMED: usize = 2;

/// How an owner answers one member's read of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReadRoute {
    /// This node answers the bytes; `keep`: the reader keeps them as a read replica.
    Here { keep: bool },
    /// The reader reads from these holders instead (best first).
    Elsewhere(Vec<String>),
}

#[derive(Debug, Default)]
struct Reads {
    /// Reads served or redirected (saturating).
    count: u32,
    /// Members holding a read replica, oldest first.
    holders: Vec<String>,
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
    /// sent to that did not have it: they are forgotten, and this node answers, as it does
    /// when `redirect` is false. `is_member` filters holders that left; `reader_owns`: the
    /// reader is an owner itself (repairing its copy), so it is never a read replica.
    pub(crate) fn route(
        &self,
        key: &BlockKey,
        reader: &str,
        tried: &[String],
        redirect: bool,
        reader_owns: bool,
        is_member: impl Fn(&str) -> bool,
    ) -> ReadRoute {
        if self.after == 0 {
            return ReadRoute::Here { keep: false };
        }
        let reads = self.keys.get_with_by_ref(key, Default::default);
        let mut r = reads.lock();
        r.holders.retain(|h| h != reader && !tried.contains(h) && is_member(h));
        r.count = r.count.saturating_add(1);
        if r.count < self.after || reader_owns {
            return ReadRoute::Here { keep: false };
        }
        let others = r.holders.clone();
        if redirect && tried.is_empty() && !others.is_empty() {
            let turn = r.turn % (others.len() + 1);
            r.turn = r.turn.wrapping_add(1);
            if turn < others.len() {
                remember(&mut r, reader, self.most);
                let mut named = others;
                named.rotate_left(turn);
                named.truncate(NAMED);
                return ReadRoute::Elsewhere(named);
            }
        }
        ReadRoute::Here { keep: true }
    }

    /// `reader` kept the copy this node answered (a [`ReadRoute::Here`] with `keep`).
    pub(crate) fn kept(&self, key: &BlockKey, reader: &str) {
        if let Some(reads) = self.keys.get(key) {
            remember(&mut reads.lock(), reader, self.most);
        }
    }

    /// Forgets `key` (it was deleted): the holders of its read replicas.
    pub(crate) fn forget(&self, key: &BlockKey) -> Vec<String> {
        self.keys.remove(key).map(|reads| std::mem::take(&mut reads.lock().holders)).unwrap_or_default()
    }
}

/// Adds `reader` to the holders unless it is one or there are `most` already.
fn remember(r: &mut Reads, reader: &str, most: usize) {
    if r.holders.len() < most && !r.holders.iter().any(|h| h == reader) {
        r.holders.push(reader.to_string());
    }
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

    #[test]
    fn reads_past_the_threshold_make_read_replicas_and_go_round_them() {
        let r = ReadReplicas::new(2, 2);
        assert_eq!(read(&r, "a"), here(false), "the first read keeps nothing");
        assert_eq!(read(&r, "b"), here(true), "the second makes b a read replica");
        r.kept(&key(), "b");
        // Turns go round the holders and this node; a reader sent on becomes a holder.
        assert_eq!(read(&r, "c"), ReadRoute::Elsewhere(vec!["b".into()]));
        assert_eq!(read(&r, "d"), ReadRoute::Elsewhere(vec!["c".into(), "b".into()]));
        assert_eq!(read(&r, "e"), here(true), "this node's turn");
        r.kept(&key(), "e"); // two holders at most: not remembered
        assert_eq!(read(&r, "f"), ReadRoute::Elsewhere(vec!["b".into(), "c".into()]));
        // A holder asking again (it lost its copy) is never sent to itself.
        assert_eq!(read(&r, "b"), ReadRoute::Elsewhere(vec!["c".into()]));
    }

    #[test]
    fn holders_that_missed_or_left_are_forgotten_and_the_owner_answers() {
        let r = ReadReplicas::new(1, 8);
        assert_eq!(read(&r, "a"), here(true));
        r.kept(&key(), "a");
        assert_eq!(read(&r, "b"), ReadRoute::Elsewhere(vec!["a".into()]));
        // b did not find it on a: the owner answers, and forgets a.
        assert_eq!(r.route(&key(), "b", &["a".into()], true, false, |_| true), here(true));
        r.kept(&key(), "b");
        for reader in ["c", "d", "e", "f", "g"] {
            if let ReadRoute::Elsewhere(named) = read(&r, reader) {
                assert!(!named.contains(&"a".to_string()), "{reader} sent to a forgotten holder: {named:?}");
            }
        }
        // b left the cluster: never named again.
        for reader in ["h", "i", "j"] {
            if let ReadRoute::Elsewhere(named) = r.route(&key(), reader, &[], true, false, |m| m != "b") {
                assert!(!named.contains(&"b".to_string()), "{reader} sent to a node that left: {named:?}");
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
        r.kept(&key(), "a");
        assert_eq!(read(&r, "b"), ReadRoute::Elsewhere(vec!["a".into()]));
        assert_eq!(read(&r, "c"), here(true), "this node's turn");
        r.kept(&key(), "c");
        assert_eq!(r.forget(&key()), vec!["a".to_string()], "one holder at most; a delete names it");
        assert_eq!(read(&r, "d"), here(true), "counted again from the start");

        let off = ReadReplicas::new(0, 8);
        for reader in ["a", "b", "c"] {
            assert_eq!(read(&off, reader), here(false));
        }
    }
}
