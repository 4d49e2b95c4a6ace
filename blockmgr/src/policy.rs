//! Admission and eviction for the CPU tier: moka's size-aware TinyLFU.
//!
//! moka decides which blocks deserve memory; the arena enforces the hard byte limit. Each
//! block is weighed by the arena space it really takes (its slot size). moka's capacity is
//! set a little below the arena's so that it evicts before the arena is physically full,
//! leaving room for blocks in flight. When moka evicts a block, or refuses to admit a new
//! one, the listener hands the key to the demotion queue; the block stays readable in
//! memory until it has been written to SSD.

use std::sync::Arc;

use kvtier_tiers::BlockKey;
use moka::{notification::RemovalCause, sync::Cache};

/// Share of the arena moka may fill, in 1/16ths.
const FILL_SIXTEENTHS: u64 = 15;

/// moka weighs in KiB so that weights fit its u32.
const UNIT: u64 = 1024;

/// The CPU tier's admission/eviction policy.
#[derive(Debug)]
pub(crate) struct CpuPolicy {
    cache: Cache<BlockKey, u32>,
}

impl CpuPolicy {
    /// A policy for an arena of `capacity` bytes; `evicted` receives every key moka pushes
    /// out (or declines to admit).
    pub(crate) fn new(capacity: u64, evicted: impl Fn(BlockKey) + Send + Sync + 'static) -> Self {
        let cache = Cache::builder()
            .max_capacity(capacity / UNIT * FILL_SIXTEENTHS / 16)
            .weigher(|_, w: &u32| *w)
            .eviction_listener(move |key: Arc<BlockKey>, _, cause| {
                if cause == RemovalCause::Size {
                    evicted((*key).clone());
                }
            })
            .build();
        CpuPolicy { cache }
    }

    /// Records a block now in memory, taking `footprint` arena bytes.
    pub(crate) fn admit(&self, key: BlockKey, footprint: u64) {
        self.cache.insert(key, footprint.div_ceil(UNIT).min(u32::MAX as u64) as u32);
    }

    /// Records a hit.
    pub(crate) fn touch(&self, key: &BlockKey) {
        self.cache.get(key);
    }

    /// Forgets a block that left memory for another reason (delete, explicit demotion).
    pub(crate) fn forget(&self, key: &BlockKey) {
        self.cache.invalidate(key);
    }

    /// Whether moka currently holds `key`.
    pub(crate) fn contains(&self, key: &BlockKey) -> bool {
        self.cache.contains_key(key)
    }

    /// Applies pending evictions now.
    pub(crate) fn run_pending(&self) {
        self.cache.run_pending_tasks();
    }
}
