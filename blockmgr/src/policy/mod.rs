//! Admission and eviction for memory and SSD, per namespace (`[namespaces."x/*"] policy`).
//!
//! The policy decides which blocks deserve memory; the arena enforces the hard byte limit.
//! Each block is weighed by the arena space it really takes (its slot size). The policy's
//! capacity is set a little below the arena's so that it evicts before the arena is
//! physically full, leaving room for blocks in flight. When the policy evicts a block, the
//! listener hands the key to the demotion queue; the block stays readable in memory until it
//! has been written to SSD. [`queues`] holds the rules and why; [`chains`] the prefix links
//! lookups reveal.
//!
//! The SSD keeps an order of its own under the same rules: a block enters it when written
//! there (into S3-FIFO's main queue if it was read in memory, since it earned that there),
//! a read gives it another pass, and when the SSD is full the writer asks for the next
//! victims ([`NodePolicy::ssd_victims`]). The SSD evicts on demand, so that order has no
//! capacity of its own. Memory and SSD are inclusive: a block read back from SSD keeps its
//! copy there, and leaving memory costs it no second write. With SSD eviction first in,
//! first out by region instead, a KV cache was about as good as FIFO over the SSD's 80% of
//! its capacity: replaying Mooncake's conversation trace at 1% of the working set
//! (`kvtier-bench trace`), the node hit 1.05x LRU's rate that way (with 15% more memory
//! than LRU had) and 1.17x this way (with none). Each SSD block costs ~150 bytes of memory
//! here, beside the SSD tier's and the index's own entries.
//!
//! Until issue 20 this was moka's TinyLFU, which refuses a new block when memory is full of
//! blocks read a few times before: on Mooncake's conversation trace it hit 0.74x of plain LRU
//! at tight capacity, and the blocks it refused are those the next turn reads.

mod chains;
mod pins;
mod queues;

use kvtier_tiers::BlockKey;
use parking_lot::Mutex;

pub use self::queues::PolicyKind;
use self::{
    chains::{Chains, MAX_LINKS},
    pins::{MAX_PINS, Pins},
    queues::Queues,
};

/// Share of the arena the policy may fill, in 1/16ths.
const FILL_SIXTEENTHS: u64 = 15;

/// Receives each block memory's order pushes out, and whether it was read there.
type Listener = Box<dyn Fn(BlockKey, bool) + Send + Sync>;
type KindOf = Box<dyn Fn(&BlockKey) -> PolicyKind + Send + Sync>;

/// The node's admission/eviction policy: memory's order and the SSD's.
pub(crate) struct NodePolicy {
    queues: Mutex<Queues>,
    /// The SSD's order (unbounded: the SSD evicts when a write finds it full).
    ssd: Mutex<Queues>,
    chains: Mutex<Chains>,
    /// Locked after `queues` when both are.
    pins: Mutex<Pins>,
    evicted: Listener,
    kind_of: KindOf,
}

impl std::fmt::Debug for NodePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodePolicy")
            .field("memory_blocks", &self.queues.lock().len())
            .field("ssd_blocks", &self.ssd.lock().len())
            .finish()
    }
}

impl NodePolicy {
    /// A policy for an arena of `capacity` bytes; `evicted` receives every key memory's order
    /// pushes out (and whether it was read there), `kind_of` names the rule of a key's
    /// namespace.
    pub(crate) fn new(
        capacity: u64,
        evicted: impl Fn(BlockKey, bool) + Send + Sync + 'static,
        kind_of: impl Fn(&BlockKey) -> PolicyKind + Send + Sync + 'static,
    ) -> Self {
        NodePolicy {
            queues: Mutex::new(Queues::new(capacity / 16 * FILL_SIXTEENTHS)),
            ssd: Mutex::new(Queues::new(u64::MAX)),
            chains: Mutex::new(Chains::new(MAX_LINKS)),
            pins: Mutex::new(Pins::new(MAX_PINS)),
            evicted: Box::new(evicted),
            kind_of: Box::new(kind_of),
        }
    }

    /// The rule of `key`'s namespace, and its prefix parent where the rule uses one.
    fn kind_and_parent(&self, key: &BlockKey) -> (PolicyKind, Option<BlockKey>) {
        let kind = (self.kind_of)(key);
        let parent = match kind {
            PolicyKind::Kv => self.chains.lock().parent(key).cloned(),
            _ => None,
        };
        (kind, parent)
    }

    /// Records a block now in memory, taking `footprint` arena bytes.
    pub(crate) fn admit(&self, key: BlockKey, footprint: u64) {
        let (kind, parent) = self.kind_and_parent(&key);
        let out = {
            let mut queues = self.queues.lock();
            let pins = self.pins.lock();
            let pinned = |k: &BlockKey| pins.is_pinned(k);
            queues.admit(key, footprint, kind, parent.as_ref(), &pinned)
        };
        // Outside the lock: the listener queues a demotion.
        for (key, read) in out {
            (self.evicted)(key, read);
        }
    }

    /// Records a block now on SSD, taking `footprint` bytes there; `read` when it was read
    /// in memory (it enters the SSD's main queue, as a block read in S3-FIFO's small queue
    /// moves on to main).
    pub(crate) fn ssd_admit(&self, key: BlockKey, footprint: u64, read: bool) {
        let (kind, parent) = self.kind_and_parent(&key);
        let mut ssd = self.ssd.lock();
        let out = ssd.admit(key.clone(), footprint, kind, parent.as_ref(), &|_| false);
        debug_assert!(out.is_empty(), "the SSD's order has no capacity to evict for");
        if read {
            ssd.touch(&key);
        }
    }

    /// Records a read of `key` from SSD.
    pub(crate) fn ssd_touch(&self, key: &BlockKey) {
        self.ssd.lock().touch(key);
    }

    /// The next `max` SSD blocks to evict, in the SSD's order, none that `keep` names. They
    /// stay in the order until reported gone ([`Self::ssd_evicted`], [`Self::ssd_forget`]).
    /// Pinned blocks are passed by; `keep` must not call back into the policy (its locks are
    /// held).
    pub(crate) fn ssd_victims(&self, max: usize, keep: &dyn Fn(&BlockKey) -> bool) -> Vec<BlockKey> {
        let mut ssd = self.ssd.lock();
        let pins = self.pins.lock();
        ssd.victims(max, &|k| keep(k) || pins.is_pinned(k))
    }

    /// `key` was evicted from SSD (remembered in a ghost list, as memory's evictions are).
    pub(crate) fn ssd_evicted(&self, key: &BlockKey) {
        self.ssd.lock().evicted(key);
    }

    /// `key` left the SSD for another reason (deleted, damaged, not there).
    pub(crate) fn ssd_forget(&self, key: &BlockKey) {
        self.ssd.lock().forget(key);
    }

    /// Records a hit.
    pub(crate) fn touch(&self, key: &BlockKey) {
        self.queues.lock().touch(key);
    }

    /// Records what a prefix lookup names, in order: each key's parent is the one before.
    pub(crate) fn chain(&self, keys: &[BlockKey]) {
        if keys.len() > 1 && (self.kind_of)(&keys[0]) == PolicyKind::Kv {
            self.chains.lock().learn(keys);
        }
    }

    /// `key` left the node (no tier holds it): returns its children, unreachable now, for
    /// the caller to drop.
    pub(crate) fn departed(&self, key: &BlockKey) -> Vec<BlockKey> {
        self.chains.lock().departed(key)
    }

    /// Pins `keys` for `lease` (pins.rs). False, pinning nothing, when the table is full.
    pub(crate) fn pin(&self, keys: &[BlockKey], lease: std::time::Duration) -> bool {
        self.pins.lock().pin(keys, lease)
    }

    /// Ends `key`'s pin (a get read it).
    pub(crate) fn unpin(&self, key: &BlockKey) {
        self.pins.lock().release(key);
    }

    /// Whether eviction must pass `key` by.
    pub(crate) fn is_pinned(&self, key: &BlockKey) -> bool {
        self.pins.lock().is_pinned(key)
    }

    /// Forgets a block that left memory for another reason (delete, explicit demotion).
    pub(crate) fn forget(&self, key: &BlockKey) {
        self.queues.lock().forget(key);
    }

    /// Whether the policy currently holds `key`.
    pub(crate) fn contains(&self, key: &BlockKey) -> bool {
        self.queues.lock().contains(key)
    }
}

#[cfg(test)]
mod tests;
