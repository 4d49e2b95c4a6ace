//! The `Tier` contract every storage medium implements, and its single-block conveniences.

use std::fmt;

use futures::future::BoxFuture;

use crate::{Block, BlockKey, Result};

/// Which medium a tier stores blocks on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TierKind {
    /// GPU memory.
    Gpu,
    /// Host memory (the slab arena).
    Cpu,
    /// Local SSD (O_DIRECT slot files).
    Ssd,
    /// An object store.
    Blob,
    /// A plain in-memory map: the reference implementation tests compare against.
    Memory,
    /// Another kvtier server reached over gRPC.
    Remote,
}

impl TierKind {
    /// Lower-case name used in metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            TierKind::Gpu => "gpu",
            TierKind::Cpu => "cpu",
            TierKind::Ssd => "ssd",
            TierKind::Blob => "blob",
            TierKind::Memory => "memory",
            TierKind::Remote => "remote",
        }
    }
}

impl fmt::Display for TierKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Outcome of storing one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutStatus {
    /// The block was written.
    Stored,
    /// The key was already present; nothing was written (blocks are immutable).
    Existed,
}

/// How full a tier is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TierUsage {
    /// Configured capacity in bytes.
    pub capacity: u64,
    /// Bytes allocated, including slack inside slots and space held by in-flight writes.
    pub used: u64,
    /// Number of blocks stored.
    pub blocks: u64,
}

/// What a tier knows of one block without reading its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockMeta {
    /// Identity.
    pub key: BlockKey,
    /// Length in bytes.
    pub len: u64,
    /// CRC-32C of the bytes.
    pub crc32c: u32,
    /// Stored with write-back durability ([`crate::Block::durable`]); only tiers that
    /// persist blocks remember it.
    pub durable: bool,
}

/// A storage tier: a bounded map from [`BlockKey`] to immutable bytes.
///
/// Contract, checked for every implementation by [`crate::conformance`]:
/// - Batched: every call takes a batch and answers one result per input, in order.
/// - `put_batch` of a key already present is [`PutStatus::Existed`] and writes nothing.
///   A tier that cannot fit a block answers [`crate::Error::NoSpace`] for it and stores
///   nothing of it; it never evicts on its own. Choosing victims is the caller's policy,
///   helped by [`Tier::eviction_candidates`].
/// - `get_batch` answers `Ok(None)` for a miss. A copy whose bytes fail their checksum is
///   dropped and answered with [`crate::Error::ChecksumMismatch`]: never wrong bytes.
/// - Usage never exceeds capacity.
/// - Cancel safety: dropping a returned future may leave a put done or not done, never half
///   done: a block is visible only once all its bytes are stored.
pub trait Tier: Send + Sync + fmt::Debug + fmt::Display + 'static {
    /// The medium.
    fn kind(&self) -> TierKind;

    /// Stores each block, answering per block.
    fn put_batch<'a>(&'a self, blocks: &'a [Block]) -> BoxFuture<'a, Vec<Result<PutStatus>>>;

    /// Reads each key, answering per key: `Ok(Some)` hit, `Ok(None)` miss.
    fn get_batch<'a>(&'a self, keys: &'a [BlockKey]) -> BoxFuture<'a, Vec<Result<Option<Block>>>>;

    /// Whether each key is present, without reading bytes.
    fn contains_batch<'a>(&'a self, keys: &'a [BlockKey]) -> BoxFuture<'a, Result<Vec<bool>>>;

    /// Removes each key, answering whether it was present.
    fn delete_batch<'a>(&'a self, keys: &'a [BlockKey]) -> BoxFuture<'a, Vec<Result<bool>>>;

    /// Capacity and use.
    fn usage(&self) -> BoxFuture<'_, Result<TierUsage>>;

    /// Every block held, for rebuilding an index after a restart.
    fn blocks(&self) -> BoxFuture<'_, Result<Vec<BlockMeta>>>;

    /// Up to `max` keys whose removal would most help a later put of `size` bytes fit, most
    /// evictable first (oldest first within the slot class that `size` needs). Layout is
    /// the tier's knowledge; whether a candidate may go is the caller's policy.
    fn eviction_candidates(&self, size: u64, max: usize) -> Vec<BlockKey>;

    /// [`Tier::eviction_candidates`] knowing which blocks the caller will not let go
    /// (`stays`): a tier that frees space by whole regions names first the regions that
    /// hold none of those, since a region that keeps one never empties (and evicting the
    /// rest of it frees nothing). By default, the same as `eviction_candidates`.
    fn eviction_candidates_keeping(
        &self,
        size: u64,
        max: usize,
        stays: &(dyn Fn(&BlockKey) -> bool + Sync),
    ) -> Vec<BlockKey> {
        let _ = stays;
        self.eviction_candidates(size, max)
    }

    /// Bytes a block of `len` bytes takes in this tier, and so what removing one gives back
    /// (slot headers and rounding included). Blocks of equal footprint can take each other's
    /// places. By default, `len`.
    fn footprint(&self, len: u64) -> u64 {
        len
    }
}

/// Single-block conveniences over any [`Tier`]; implemented for all of them.
pub trait TierExt: Tier {
    /// Stores one block.
    fn put(&self, block: Block) -> BoxFuture<'_, Result<PutStatus>> {
        Box::pin(async move { first(self.put_batch(std::slice::from_ref(&block)).await) })
    }

    /// Reads one key.
    fn get<'a>(&'a self, key: &'a BlockKey) -> BoxFuture<'a, Result<Option<Block>>> {
        Box::pin(async move { first(self.get_batch(std::slice::from_ref(key)).await) })
    }

    /// Whether one key is present.
    fn contains<'a>(&'a self, key: &'a BlockKey) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move { Ok(self.contains_batch(std::slice::from_ref(key)).await?[0]) })
    }

    /// Removes one key.
    fn delete<'a>(&'a self, key: &'a BlockKey) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move { first(self.delete_batch(std::slice::from_ref(key)).await) })
    }
}

impl<T: Tier + ?Sized> TierExt for T {}

fn first<T>(mut results: Vec<Result<T>>) -> Result<T> {
    results.swap_remove(0)
}

/// Forwards every [`Tier`] method through a smart pointer.
macro_rules! forward_tier {
    ($ptr:ty) => {
        impl<T: Tier + ?Sized> Tier for $ptr {
            fn kind(&self) -> TierKind {
                (**self).kind()
            }
            fn put_batch<'a>(&'a self, blocks: &'a [Block]) -> BoxFuture<'a, Vec<Result<PutStatus>>> {
                (**self).put_batch(blocks)
            }
            fn get_batch<'a>(&'a self, keys: &'a [BlockKey]) -> BoxFuture<'a, Vec<Result<Option<Block>>>> {
                (**self).get_batch(keys)
            }
            fn contains_batch<'a>(&'a self, keys: &'a [BlockKey]) -> BoxFuture<'a, Result<Vec<bool>>> {
                (**self).contains_batch(keys)
            }
            fn delete_batch<'a>(&'a self, keys: &'a [BlockKey]) -> BoxFuture<'a, Vec<Result<bool>>> {
                (**self).delete_batch(keys)
            }
            fn usage(&self) -> BoxFuture<'_, Result<TierUsage>> {
                (**self).usage()
            }
            fn blocks(&self) -> BoxFuture<'_, Result<Vec<BlockMeta>>> {
                (**self).blocks()
            }
            fn eviction_candidates(&self, size: u64, max: usize) -> Vec<BlockKey> {
                (**self).eviction_candidates(size, max)
            }
            fn eviction_candidates_keeping(
                &self,
                size: u64,
                max: usize,
                stays: &(dyn Fn(&BlockKey) -> bool + Sync),
            ) -> Vec<BlockKey> {
                (**self).eviction_candidates_keeping(size, max, stays)
            }
            fn footprint(&self, len: u64) -> u64 {
                (**self).footprint(len)
            }
        }
    };
}

forward_tier!(std::sync::Arc<T>);
forward_tier!(Box<T>);
