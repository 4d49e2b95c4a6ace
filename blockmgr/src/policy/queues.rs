//! The memory tier's eviction order: one structure holding every block in memory, each
//! under the rule of its namespace's [`PolicyKind`].
//!
//! - `kv` blocks follow S3-FIFO (Yang et al., SOSP '23) with a small queue whose share adapts
//!   the way ARC's does: a new block enters the small FIFO; one read while there moves on to
//!   the main FIFO when it reaches the small queue's end, the rest leave (into a ghost list of
//!   keys). The main FIFO gives each block as many more passes as it was read (up to 3).
//!   A block put again while its key is in a ghost list goes straight to main, and tells the
//!   small queue to grow (it left the small queue too soon) or shrink (it left main). Nothing
//!   ever refuses a fresh block: it always enters memory, which TinyLFU did not (it sent 429
//!   of 600 fresh blocks straight to SSD once memory held blocks read twice before).
//! - `lru` blocks: least recently used first.
//! - `checkpoint` blocks: first in, first out (written once, read a few times: the newest
//!   step stays, older steps go first).
//!
//! The next victim is the oldest of each rule's candidates, by one clock.
//!
//! Prefixes: a block whose parent (the block before it in a prefix chain) is in the same
//! queue enters just before its parent rather than at the queue's front, so a chain leaves
//! memory tail first and never strands a reachable parent's children ahead of it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use kvtier_tiers::BlockKey;
use serde::{Deserialize, Serialize};

/// How the memory tier orders a namespace's blocks for eviction (`[namespaces."x/*"] policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    /// KV-cache prefixes: adaptive S3-FIFO, chain tails first; unreachable blocks dropped.
    Kv,
    /// Least recently used first.
    Lru,
    /// First in, first out: checkpoints are written once and read a few times.
    Checkpoint,
}

/// Most passes a main-queue block earns by being read.
const MAX_FREQ: u8 = 3;
/// Bounds of the small queue's share of the `kv` bytes.
const SMALL_MIN: f64 = 0.05;
const SMALL_MAX: f64 = 0.95;

/// A place in a queue: older first. `sub` orders a chain's blocks that share a stamp (a
/// child just below its parent); `seq` makes every position unique.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Pos {
    stamp: u64,
    sub: i64,
    seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    Small,
    Main,
    /// `lru` and `checkpoint` blocks.
    Plain,
}

#[derive(Debug)]
struct Entry {
    weight: u64,
    kind: PolicyKind,
    queue: Queue,
    pos: Pos,
    freq: u8,
}

/// Keys recently evicted from one `kv` queue (hashes: a ghost holds no bytes).
#[derive(Debug, Default)]
struct Ghost {
    keys: HashSet<u64>,
    order: VecDeque<u64>,
}

impl Ghost {
    fn add(&mut self, h: u64, bound: usize) {
        if self.keys.insert(h) {
            self.order.push_back(h);
        }
        while self.order.len() > bound {
            if let Some(old) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
    }

    fn take(&mut self, h: u64) -> bool {
        // The order keeps a stale entry; `add`'s bound drops it in its turn.
        self.keys.remove(&h)
    }
}

/// The eviction order of the blocks in memory, by weight (bytes).
#[derive(Debug)]
pub(crate) struct Queues {
    capacity: u64,
    used: u64,
    kv_used: u64,
    small_used: u64,
    /// The small queue's target share of `kv_used`.
    small_share: f64,
    clock: u64,
    seq: u64,
    entries: HashMap<BlockKey, Entry>,
    small: BTreeMap<Pos, BlockKey>,
    main: BTreeMap<Pos, BlockKey>,
    plain: BTreeMap<Pos, BlockKey>,
    ghost_small: Ghost,
    ghost_main: Ghost,
}

impl Queues {
    pub(crate) fn new(capacity: u64) -> Self {
        Queues {
            capacity,
            used: 0,
            kv_used: 0,
            small_used: 0,
            small_share: 0.5,
            clock: 0,
            seq: 0,
            entries: HashMap::new(),
            small: BTreeMap::new(),
            main: BTreeMap::new(),
            plain: BTreeMap::new(),
            ghost_small: Ghost::default(),
            ghost_main: Ghost::default(),
        }
    }

    pub(crate) fn contains(&self, key: &BlockKey) -> bool {
        self.entries.contains_key(key)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The small queue's share of the `kv` bytes it aims for (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn small_share(&self) -> f64 {
        self.small_share
    }

    fn next_pos(&mut self, below: Option<Pos>) -> Pos {
        self.seq += 1;
        match below {
            Some(p) => Pos { stamp: p.stamp, sub: p.sub - 1, seq: self.seq },
            None => {
                self.clock += 1;
                Pos { stamp: self.clock, sub: 0, seq: self.seq }
            }
        }
    }

    fn queue_mut(&mut self, q: Queue) -> &mut BTreeMap<Pos, BlockKey> {
        match q {
            Queue::Small => &mut self.small,
            Queue::Main => &mut self.main,
            Queue::Plain => &mut self.plain,
        }
    }

    /// Records `key` (`weight` bytes) entering the tier; `parent` is the block before it in a
    /// prefix chain, if known. Returns the blocks to evict to stay within capacity, each with
    /// whether it was read while here (or earned main): never `key` itself, nor a key
    /// `pinned` names.
    pub(crate) fn admit(
        &mut self,
        key: BlockKey,
        weight: u64,
        kind: PolicyKind,
        parent: Option<&BlockKey>,
        pinned: &dyn Fn(&BlockKey) -> bool,
    ) -> Vec<(BlockKey, bool)> {
        let keep = |k: &BlockKey| *k == key || pinned(k);
        if self.entries.contains_key(&key) {
            self.touch(&key);
            return self.evict_over(&keep);
        }
        let h = hash(&key);
        let queue = match kind {
            PolicyKind::Kv if self.ghost_small.take(h) => {
                // Left the small queue before its next read: the small queue is too short.
                let step =
                    (self.ghost_main.keys.len().max(1) as f64 / self.ghost_small.keys.len().max(1) as f64).max(1.0);
                self.adapt(step);
                Queue::Main
            }
            PolicyKind::Kv if self.ghost_main.take(h) => {
                let step =
                    (self.ghost_small.keys.len().max(1) as f64 / self.ghost_main.keys.len().max(1) as f64).max(1.0);
                self.adapt(-step);
                Queue::Main
            }
            PolicyKind::Kv => Queue::Small,
            PolicyKind::Lru | PolicyKind::Checkpoint => Queue::Plain,
        };
        let below = parent.and_then(|p| self.entries.get(p)).filter(|p| p.queue == queue).map(|p| p.pos);
        let pos = self.next_pos(below);
        self.queue_mut(queue).insert(pos, key.clone());
        self.used += weight;
        if kind == PolicyKind::Kv {
            self.kv_used += weight;
        }
        if queue == Queue::Small {
            self.small_used += weight;
        }
        self.entries.insert(key.clone(), Entry { weight, kind, queue, pos, freq: 0 });
        self.evict_over(&keep)
    }

    /// Moves the small queue's share by `blocks` average-sized blocks.
    fn adapt(&mut self, blocks: f64) {
        let n = self.entries.len().max(1) as f64;
        self.small_share = (self.small_share + blocks / n).clamp(SMALL_MIN, SMALL_MAX);
    }

    /// Records a read of `key`.
    pub(crate) fn touch(&mut self, key: &BlockKey) {
        let Some(e) = self.entries.get_mut(key) else { return };
        match e.kind {
            PolicyKind::Kv => e.freq = (e.freq + 1).min(MAX_FREQ),
            PolicyKind::Lru => {
                let old = e.pos;
                self.plain.remove(&old);
                let pos = self.next_pos(None);
                self.plain.insert(pos, key.clone());
                self.entries.get_mut(key).expect("present").pos = pos;
            }
            PolicyKind::Checkpoint => {}
        }
    }

    /// Forgets `key` (it left memory for another reason: deleted, demoted on demand).
    pub(crate) fn forget(&mut self, key: &BlockKey) {
        self.take(key);
    }

    /// Removes `key` from its queue and the accounting.
    fn take(&mut self, key: &BlockKey) -> Option<Entry> {
        let e = self.entries.remove(key)?;
        self.queue_mut(e.queue).remove(&e.pos);
        self.unweigh(&e);
        Some(e)
    }

    fn unweigh(&mut self, e: &Entry) {
        self.used -= e.weight;
        if e.kind == PolicyKind::Kv {
            self.kv_used -= e.weight;
        }
        if e.queue == Queue::Small {
            self.small_used -= e.weight;
        }
    }

    /// Evicts until the blocks fit, never what `keep` names.
    fn evict_over(&mut self, keep: &dyn Fn(&BlockKey) -> bool) -> Vec<(BlockKey, bool)> {
        let mut out = Vec::new();
        while self.used > self.capacity {
            match self.victim(keep) {
                Some(v) => {
                    let read = self.evicted(&v).expect("queued keys have entries");
                    out.push((v, read));
                }
                None => break,
            }
        }
        out
    }

    /// Removes `key` as evicted (a `kv` key is kept in its queue's ghost list). Returns
    /// whether it was read while here, if it was here.
    pub(crate) fn evicted(&mut self, key: &BlockKey) -> Option<bool> {
        let e = self.take(key)?;
        if e.kind == PolicyKind::Kv {
            let bound = self.entries.len().max(1024);
            match e.queue {
                Queue::Small => self.ghost_small.add(hash(key), bound),
                _ => self.ghost_main.add(hash(key), bound),
            }
        }
        Some(e.queue == Queue::Main || e.freq > 0)
    }

    /// The next `max` blocks to evict, in order, none that `keep` names, left in place: for
    /// a tier that evicts on demand (the SSD) and reports each one it took ([`Self::evicted`]).
    /// Blocks that earned another pass get it on the way, as in an eviction.
    pub(crate) fn victims(&mut self, max: usize, keep: &dyn Fn(&BlockKey) -> bool) -> Vec<BlockKey> {
        // Taken out as an eviction would (so the queue shares move as they would), then put
        // back where they were.
        let mut taken = Vec::new();
        while taken.len() < max {
            let Some(v) = self.victim(keep) else { break };
            let e = self.take(&v).expect("queued keys have entries");
            taken.push((v, e));
        }
        let out = taken.iter().map(|(k, _)| k.clone()).collect();
        for (key, e) in taken {
            self.queue_mut(e.queue).insert(e.pos, key.clone());
            self.used += e.weight;
            if e.kind == PolicyKind::Kv {
                self.kv_used += e.weight;
            }
            if e.queue == Queue::Small {
                self.small_used += e.weight;
            }
            self.entries.insert(key, e);
        }
        out
    }

    /// The next block to evict: the older of the plain queue's oldest and S3-FIFO's victim.
    fn victim(&mut self, keep: &dyn Fn(&BlockKey) -> bool) -> Option<BlockKey> {
        let plain = self.plain.iter().find(|(_, k)| !keep(k)).map(|(p, k)| (*p, k.clone()));
        let kv = self.kv_victim(keep);
        match (plain, kv) {
            (Some((pp, pk)), Some((kp, kk))) => Some(if pp.stamp <= kp.stamp { pk } else { kk }),
            (Some((_, k)), None) | (None, Some((_, k))) => Some(k),
            (None, None) => None,
        }
    }

    /// S3-FIFO's next victim, moving blocks that earned another pass on the way.
    fn kv_victim(&mut self, keep: &dyn Fn(&BlockKey) -> bool) -> Option<(Pos, BlockKey)> {
        // Each pass moves a block from small to main or spends one of a block's passes, so
        // this ends; the bound guards against queues holding only what `keep` names.
        for _ in 0..=(self.small.len() + self.main.len() * (MAX_FREQ as usize + 1) + 1) {
            let from_small = !self.small.is_empty()
                && (self.main.is_empty() || self.small_used as f64 > self.small_share * self.kv_used as f64);
            let queue = if from_small { Queue::Small } else { Queue::Main };
            let first = |q: &BTreeMap<Pos, BlockKey>| q.iter().find(|(_, k)| !keep(k)).map(|(p, k)| (*p, k.clone()));
            let found = match queue {
                Queue::Small => first(&self.small).or_else(|| first(&self.main)), // only kept ones in small
                _ => first(&self.main),
            };
            let (pos, key) = found?;
            let e = self.entries.get_mut(&key).expect("queued keys have entries");
            if e.freq == 0 {
                return Some((pos, key));
            }
            // Another pass: small -> main with its count reset, main -> main's front.
            let weight = e.weight;
            let was = e.queue;
            if was == Queue::Small {
                e.freq = 0;
            } else {
                e.freq -= 1;
            }
            self.queue_mut(was).remove(&pos);
            let new = self.next_pos(None);
            self.main.insert(new, key.clone());
            let e = self.entries.get_mut(&key).expect("present");
            e.queue = Queue::Main;
            e.pos = new;
            if was == Queue::Small {
                self.small_used -= weight;
            }
        }
        None
    }
}

fn hash(key: &BlockKey) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(key)
}
