//! The node's index: key -> which tiers hold the block, its length and checksum.
//!
//! Lookups and gets read it without locks. Every change of where a block lives (put,
//! demotion, promotion, eviction, delete) happens under that key's lock in
//! `KeyLocks` (crate::flight), so the index and the tiers agree once the lock is released;
//! a reader that finds a tier no longer holding a block simply looks again.
//!
//! The index also keeps the count of unflushed bytes: blocks written with write-back
//! durability that the Blob tier does not hold yet. Every change goes through `insert`,
//! `set_tiers` and `remove`, so the count follows the entries exactly.

use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use kvtier_tiers::{BlockKey, TierKind};

/// A set of tiers, as bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TierSet(u8);

impl TierSet {
    /// No tier.
    pub const EMPTY: TierSet = TierSet(0);
    const CPU: u8 = 1;
    const SSD: u8 = 2;
    const BLOB: u8 = 4;

    fn bit(kind: TierKind) -> u8 {
        match kind {
            TierKind::Cpu => Self::CPU,
            TierKind::Ssd => Self::SSD,
            TierKind::Blob => Self::BLOB,
            other => unreachable!("the index tracks cpu, ssd and blob only, not {other}"),
        }
    }

    /// Just `kind`.
    pub fn of(kind: TierKind) -> Self {
        TierSet(Self::bit(kind))
    }

    /// Whether `kind` is in the set.
    pub fn has(self, kind: TierKind) -> bool {
        self.0 & Self::bit(kind) != 0
    }

    /// The set plus `kind`.
    pub fn with(self, kind: TierKind) -> Self {
        TierSet(self.0 | Self::bit(kind))
    }

    /// The set minus `kind`.
    pub fn without(self, kind: TierKind) -> Self {
        TierSet(self.0 & !Self::bit(kind))
    }

    /// True if no tier holds the block.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The fastest tier in the set.
    pub fn fastest(self) -> Option<TierKind> {
        if self.has(TierKind::Cpu) {
            Some(TierKind::Cpu)
        } else if self.has(TierKind::Ssd) {
            Some(TierKind::Ssd)
        } else if self.has(TierKind::Blob) {
            Some(TierKind::Blob)
        } else {
            None
        }
    }
}

/// What the index knows of one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Block length in bytes.
    pub len: u64,
    /// CRC-32C of the bytes.
    pub crc32c: u32,
    /// Tiers holding a copy.
    pub tiers: TierSet,
    /// Written with write-back durability: its last local copy may not go before Blob has it.
    pub durable: bool,
}

impl Entry {
    /// A block of `len` bytes with checksum `crc32c` in `tiers`, not write-back.
    pub fn new(len: u64, crc32c: u32, tiers: TierSet) -> Self {
        Entry { len, crc32c, tiers, durable: false }
    }

    /// Write-back and not in Blob yet: it must reach Blob before it may leave the node.
    pub fn unflushed(&self) -> bool {
        self.durable && !self.tiers.has(TierKind::Blob) && !self.tiers.is_empty()
    }

    fn unflushed_bytes(&self) -> u64 {
        if self.unflushed() { self.len } else { 0 }
    }
}

/// Key -> [`Entry`].
#[derive(Debug, Default)]
pub struct Index {
    map: DashMap<BlockKey, Entry>,
    unflushed: AtomicU64,
    /// Bumped whenever a key comes or goes (what resync's cached ownership checks).
    key_set: AtomicU64,
}

impl Index {
    /// The entry of `key`, if any.
    pub fn get(&self, key: &BlockKey) -> Option<Entry> {
        self.map.get(key).map(|e| *e)
    }

    /// Records a new block (the caller holds the key's lock and checked it was absent).
    pub fn insert(&self, key: BlockKey, entry: Entry) {
        self.add_unflushed(entry.unflushed_bytes());
        match self.map.insert(key, entry) {
            Some(old) => self.sub_unflushed(old.unflushed_bytes()),
            None => {
                self.key_set.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    /// Changes whenever a key is added or removed.
    pub fn key_set_version(&self) -> u64 {
        self.key_set.load(Ordering::Acquire)
    }

    /// Sets the tiers of `key`, removing the entry when no tier is left.
    /// Returns false if the key was not indexed.
    pub fn set_tiers(&self, key: &BlockKey, tiers: TierSet) -> bool {
        if tiers.is_empty() {
            return self.remove(key).is_some();
        }
        match self.map.get_mut(key) {
            Some(mut e) => {
                let before = e.unflushed_bytes();
                e.tiers = tiers;
                let after = e.unflushed_bytes();
                drop(e);
                self.add_unflushed(after);
                self.sub_unflushed(before);
                true
            }
            None => false,
        }
    }

    /// Removes `key`.
    pub fn remove(&self, key: &BlockKey) -> Option<Entry> {
        let (_, e) = self.map.remove(key)?;
        self.key_set.fetch_add(1, Ordering::AcqRel);
        self.sub_unflushed(e.unflushed_bytes());
        Some(e)
    }

    /// Bytes of write-back blocks the Blob tier does not hold yet.
    pub fn unflushed(&self) -> u64 {
        self.unflushed.load(Ordering::Acquire)
    }

    /// Keys of write-back blocks the Blob tier does not hold yet (what a restart queues).
    pub fn unflushed_keys(&self) -> Vec<BlockKey> {
        self.map.iter().filter(|e| e.unflushed()).map(|e| e.key().clone()).collect()
    }

    fn add_unflushed(&self, bytes: u64) {
        if bytes > 0 {
            self.unflushed.fetch_add(bytes, Ordering::AcqRel);
        }
    }

    fn sub_unflushed(&self, bytes: u64) {
        if bytes > 0 {
            self.unflushed.fetch_sub(bytes, Ordering::AcqRel);
        }
    }

    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Keys for which `pick` holds.
    pub fn keys_where(&self, pick: impl Fn(&BlockKey) -> bool) -> Vec<BlockKey> {
        self.map.iter().filter(|e| pick(e.key())).map(|e| e.key().clone()).collect()
    }

    /// Keys whose only copy is in memory (what a graceful shutdown persists).
    pub fn memory_only(&self) -> Vec<BlockKey> {
        self.map.iter().filter(|e| e.tiers == TierSet::of(TierKind::Cpu)).map(|e| e.key().clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unflushed_bytes_follow_every_change_of_a_write_back_entry() {
        let index = Index::default();
        let key = |i: u8| BlockKey::parse("t/ns", &[i]).unwrap();
        let ssd = TierSet::of(TierKind::Ssd);
        index.insert(key(1), Entry { durable: true, ..Entry::new(100, 1, ssd) });
        index.insert(key(2), Entry::new(50, 2, ssd)); // a cache block never counts
        index.insert(key(3), Entry { durable: true, ..Entry::new(30, 3, ssd.with(TierKind::Cpu)) });
        assert_eq!((index.unflushed(), index.unflushed_keys().len()), (130, 2));
        index.set_tiers(&key(1), ssd.with(TierKind::Blob)); // flushed
        assert_eq!(index.unflushed(), 30);
        index.set_tiers(&key(1), TierSet::of(TierKind::Blob)); // evicted once flushed
        index.set_tiers(&key(3), ssd); // memory copy dropped: still unflushed
        assert_eq!(index.unflushed(), 30);
        index.remove(&key(3));
        index.remove(&key(2));
        assert_eq!((index.unflushed(), index.len()), (0, 1));
        index.insert(key(4), Entry { durable: true, ..Entry::new(7, 4, ssd) });
        index.set_tiers(&key(4), TierSet::EMPTY); // lost: removed, no longer counted
        assert_eq!(index.unflushed(), 0);
    }
}
