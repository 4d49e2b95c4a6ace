//! kvtier's storage tiers.
//!
//! A [`Tier`] is a bounded map from [`BlockKey`] (namespace + key of at most 64 bytes) to
//! immutable bytes, with batched async operations. Implementations:
//!
//! | tier | medium |
//! |---|---|
//! | [`CpuTier`] | a fixed memfd arena in host memory, slab slots, zero-copy reads |
//! | [`SsdTier`] | a preallocated O_DIRECT slot file with a checksummed header per slot |
//! | [`MemoryTier`] | a plain map: the reference the others are checked against |
//!
//! Tiers store and refuse; they do not evict on their own. Which block leaves a full tier
//! (and where it goes) is the block manager's policy, helped by
//! [`Tier::eviction_candidates`].
//!
//! ```
//! # tokio_test_block_on(async {
//! use bytes::Bytes;
//! use kvtier_tiers::{Block, BlockKey, MemoryTier, Tier, TierExt};
//!
//! let tier = MemoryTier::new(1 << 20, 1 << 16);
//! let key = BlockKey::parse("acme/llama3-8b/bf16-16tok", b"\x01\x02")?;
//! tier.put(Block::new(key.clone(), Bytes::from_static(b"kv bytes"))).await?;
//! let block = tier.get(&key).await?.expect("present");
//! assert_eq!(&block.data[..], b"kv bytes");
//! # Ok::<_, kvtier_tiers::Error>(())
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```

mod block;
mod cpu;
mod error;
mod key;
mod memory;
mod slab;
mod ssd;
mod tier;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

mod blob;
pub use blob::{
    BlobTier, BlobTierBuilder, Compaction, MAX_PARTS, MIN_PART, ObjectBlobs, Retries, StoreRequests, Upload,
    chunks_per_part,
};
pub use block::{Block, check_block_size, crc32c, crc32c_append, crc32c_combine};
pub use cpu::{CpuTier, CpuTierBuilder, Reservation, sealed_memfd};
pub use error::{Error, Result};
pub use key::{BlockKey, Key, MAX_KEY_LEN, MAX_NAMESPACE_LEN, Namespace};
pub use memory::MemoryTier;
pub use ssd::{DEFAULT_REGION_SIZE, SLOT_FILE, SsdTier, SsdTierBuilder};
pub use tier::{BlockMeta, PutStatus, Tier, TierExt, TierKind, TierUsage};

/// A byte count exactly, in the largest binary unit that divides it: `1152MiB`, `1GiB`,
/// `1000B`. What configs print: `human_bytes` rounds (1152 MiB shows as `1.1 GiB`), and a
/// size read back from a rounded print is another size.
pub fn exact_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let unit = (1..UNITS.len()).rev().find(|&u| n != 0 && n.is_multiple_of(1u64 << (10 * u))).unwrap_or(0);
    format!("{}{}", n >> (10 * unit), UNITS[unit])
}

/// Formats a byte count with a binary unit: `1 GiB`, `1.5 MiB`, `512 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
