//! Admission and eviction for the CPU tier, per namespace (`[namespaces."x/*"] policy`).
//!
//! The policy decides which blocks deserve memory; the arena enforces the hard byte limit.
//! Each block is weighed by the arena space it really takes (its slot size). The policy's
//! capacity is set a little below the arena's so that it evicts before the arena is
//! physically full, leaving room for blocks in flight. When the policy evicts a block, the
//! listener hands the key to the demotion queue; the block stays readable in memory until it
//! has been written to SSD. [`queues`] holds the rules and why; [`chains`] the prefix links
//! lookups reveal.
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

type Listener = Box<dyn Fn(BlockKey) + Send + Sync>;
type KindOf = Box<dyn Fn(&BlockKey) -> PolicyKind + Send + Sync>;

/// The CPU tier's admission/eviction policy.
pub(crate) struct CpuPolicy {
    queues: Mutex<Queues>,
    chains: Mutex<Chains>,
    /// Locked after `queues` when both are.
    pins: Mutex<Pins>,
    evicted: Listener,
    kind_of: KindOf,
}

impl std::fmt::Debug for CpuPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuPolicy").field("blocks", &self.queues.lock().len()).finish()
    }
}

impl CpuPolicy {
    /// A policy for an arena of `capacity` bytes; `evicted` receives every key it pushes out,
    /// `kind_of` names the rule of a key's namespace.
    pub(crate) fn new(
        capacity: u64,
        evicted: impl Fn(BlockKey) + Send + Sync + 'static,
        kind_of: impl Fn(&BlockKey) -> PolicyKind + Send + Sync + 'static,
    ) -> Self {
        CpuPolicy {
            queues: Mutex::new(Queues::new(capacity / 16 * FILL_SIXTEENTHS)),
            chains: Mutex::new(Chains::new(MAX_LINKS)),
            pins: Mutex::new(Pins::new(MAX_PINS)),
            evicted: Box::new(evicted),
            kind_of: Box::new(kind_of),
        }
    }

    /// Records a block now in memory, taking `footprint` arena bytes.
    pub(crate) fn admit(&self, key: BlockKey, footprint: u64) {
        let kind = (self.kind_of)(&key);
        let parent = match kind {
            PolicyKind::Kv => self.chains.lock().parent(&key).cloned(),
            _ => None,
        };
        let out = {
            let mut queues = self.queues.lock();
            let pins = self.pins.lock();
            let pinned = |k: &BlockKey| pins.is_pinned(k);
            queues.admit(key, footprint, kind, parent.as_ref(), &pinned)
        };
        // Outside the lock: the listener queues a demotion.
        for key in out {
            (self.evicted)(key);
        }
    }

    /// The rule `key`'s namespace follows.
    pub(crate) fn kind(&self, key: &BlockKey) -> PolicyKind {
        (self.kind_of)(key)
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
