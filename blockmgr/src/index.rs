//! The node's index: key -> which tiers hold the block, its length and checksum.
//!
//! Lookups and gets read it without locks. Every change of where a block lives (put,
//! demotion, promotion, eviction, delete) happens under that key's lock in
//! `KeyLocks` (crate::flight), so the index and the tiers agree once the lock is released;
//! a reader that finds a tier no longer holding a block simply looks again.

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
}

/// Key -> [`Entry`].
#[derive(Debug, Default)]
pub struct Index {
    map: DashMap<BlockKey, Entry>,
}

impl Index {
    /// The entry of `key`, if any.
    pub fn get(&self, key: &BlockKey) -> Option<Entry> {
        self.map.get(key).map(|e| *e)
    }

    /// Records a new block (the caller holds the key's lock and checked it was absent).
    pub fn insert(&self, key: BlockKey, entry: Entry) {
        self.map.insert(key, entry);
    }

    /// Sets the tiers of `key`, removing the entry when no tier is left.
    /// Returns false if the key was not indexed.
    pub fn set_tiers(&self, key: &BlockKey, tiers: TierSet) -> bool {
        if tiers.is_empty() {
            return self.map.remove(key).is_some();
        }
        match self.map.get_mut(key) {
            Some(mut e) => {
                e.tiers = tiers;
                true
            }
            None => false,
        }
    }

    /// Removes `key`.
    pub fn remove(&self, key: &BlockKey) -> Option<Entry> {
        self.map.remove(key).map(|(_, e)| e)
    }

    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Keys whose only copy is in memory (what a graceful shutdown persists).
    pub fn memory_only(&self) -> Vec<BlockKey> {
        self.map.iter().filter(|e| e.tiers == TierSet::of(TierKind::Cpu)).map(|e| e.key().clone()).collect()
    }
}
