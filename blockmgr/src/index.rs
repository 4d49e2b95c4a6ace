//! The node's index: key -> which tiers hold the block, its length and checksum.
//!
//! Lookups and gets read it without locks. Every change of where a block lives (put,
//! demotion, promotion, eviction, delete) happens under that key's lock in
//! `KeyLocks` (crate::flight), so the index and the tiers agree once the lock is released;
//! a reader that finds a tier no longer holding a block simply looks again.
//!
//! The index also keeps the count of unflushed bytes: blocks written with write-back
//! durability that the Blob tier does not hold yet, and since when each has waited (what
//! `/healthz` and `unflushed_oldest_seconds` report). Every change goes through `insert`,
//! `set_tiers` and `remove`, so both follow the entries exactly.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

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
    /// Only ever put with cache durability (nothing promised it a disk copy): its SSD copy
    /// may be moved (deleted and written anew) when memory evicts it. False when unknown
    /// (recovered from SSD, handed by a peer).
    pub cache: bool,
}

impl Entry {
    /// A block of `len` bytes with checksum `crc32c` in `tiers`, not write-back.
    pub fn new(len: u64, crc32c: u32, tiers: TierSet) -> Self {
        Entry { len, crc32c, tiers, durable: false, cache: false }
    }

    /// Write-back and not in Blob yet: it must reach Blob before it may leave the node.
    pub fn unflushed(&self) -> bool {
        self.durable && !self.tiers.has(TierKind::Blob) && !self.tiers.is_empty()
    }

    fn unflushed_bytes(&self) -> u64 {
        if self.unflushed() { self.len } else { 0 }
    }
}

/// What waits for Blob: the oldest write-back byte's age, and the bytes per namespace.
#[derive(Debug, Default)]
pub struct Unflushed {
    /// When the oldest unflushed block became so (in this process), if any.
    pub oldest: Option<Instant>,
    /// Unflushed bytes by namespace.
    pub by_namespace: HashMap<kvtier_tiers::Namespace, u64>,
}

/// Key -> [`Entry`].
#[derive(Debug, Default)]
pub struct Index {
    map: DashMap<BlockKey, Entry>,
    unflushed: AtomicU64,
    /// Unflushed keys and since when (this process found them so, at the latest).
    unflushed_since: DashMap<BlockKey, Instant>,
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
        let old = self.map.insert(key.clone(), entry);
        match &old {
            Some(old) => self.sub_unflushed(old.unflushed_bytes()),
            None => {
                self.key_set.fetch_add(1, Ordering::AcqRel);
            }
        }
        self.track(key, old.is_some_and(|o| o.unflushed()), entry.unflushed());
    }

    /// Keeps `unflushed_since` in step with a change of `key` from `was` to `is` unflushed.
    fn track(&self, key: BlockKey, was: bool, is: bool) {
        match (was, is) {
            (false, true) => {
                self.unflushed_since.entry(key).or_insert_with(Instant::now);
            }
            (true, false) => {
                self.unflushed_since.remove(&key);
            }
            _ => {}
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
                let was = e.unflushed();
                e.tiers = tiers;
                let (after, is) = (e.unflushed_bytes(), e.unflushed());
                drop(e);
                self.add_unflushed(after);
                self.sub_unflushed(before);
                self.track(key.clone(), was, is);
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
        self.track(key.clone(), e.unflushed(), false);
        Some(e)
    }

    /// Whether `key` is a write-back block Blob lacks (it may not leave the node's disk).
    pub fn is_unflushed(&self, key: &BlockKey) -> bool {
        self.get(key).is_some_and(|e| e.unflushed())
    }

    /// Unflushed keys that have waited longer than `age` (in this process).
    pub fn unflushed_longer_than(&self, age: std::time::Duration) -> Vec<BlockKey> {
        self.unflushed_since.iter().filter(|e| e.value().elapsed() > age).map(|e| e.key().clone()).collect()
    }

    /// How long write-back bytes have waited, and how many per namespace (a scan of the
    /// unflushed keys: for a scrape, not a hot path).
    pub fn unflushed_summary(&self) -> Unflushed {
        let mut summary = Unflushed::default();
        for item in self.unflushed_since.iter() {
            let Some(entry) = self.get(item.key()) else { continue };
            summary.oldest = Some(summary.oldest.map_or(*item.value(), |o| o.min(*item.value())));
            *summary.by_namespace.entry(item.key().namespace.clone()).or_default() += entry.len;
        }
        summary
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

    #[test]
    fn the_oldest_unflushed_block_and_the_bytes_per_namespace_follow_the_entries() {
        let index = Index::default();
        let key = |ns: &str, i: u8| BlockKey::parse(ns, &[i]).unwrap();
        let ssd = TierSet::of(TierKind::Ssd);
        assert!(index.unflushed_summary().oldest.is_none());
        let before = Instant::now();
        index.insert(key("a/x", 1), Entry { durable: true, ..Entry::new(100, 1, ssd) });
        std::thread::sleep(std::time::Duration::from_millis(5));
        let second = Instant::now();
        index.insert(key("b/y", 2), Entry { durable: true, ..Entry::new(30, 2, ssd) });
        index.insert(key("b/y", 3), Entry::new(50, 3, ssd)); // a cache block never counts
        let s = index.unflushed_summary();
        assert!(s.oldest.is_some_and(|t| t >= before && t < second), "the first block is the oldest");
        let ns = |n: &str| kvtier_tiers::Namespace::new(n).unwrap();
        assert_eq!((s.by_namespace[&ns("a/x")], s.by_namespace[&ns("b/y")]), (100, 30));
        // Re-inserting a still-unflushed block keeps its age; flushing it ends it.
        index.insert(key("a/x", 1), Entry { durable: true, ..Entry::new(100, 1, ssd.with(TierKind::Cpu)) });
        assert!(index.unflushed_summary().oldest.is_some_and(|t| t < second));
        index.set_tiers(&key("a/x", 1), ssd.with(TierKind::Blob));
        let s = index.unflushed_summary();
        assert!(s.oldest.is_some_and(|t| t >= second) && !s.by_namespace.contains_key(&ns("a/x")));
        index.remove(&key("b/y", 2));
        assert!(index.unflushed_summary().oldest.is_none());
    }
}
