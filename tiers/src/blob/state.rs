//! What the Blob tier knows of its prefix: where each block is (segment and range), how many
//! live blocks each segment still holds, and the requests made of the store.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use object_store::path::Path;

use super::format::{Entry, Stamp};
use crate::BlockKey;

/// Where a stored block's bytes are.
#[derive(Debug, Clone)]
pub(super) struct Location {
    pub(super) segment: Arc<Path>,
    pub(super) stamp: Stamp,
    pub(super) offset: u64,
    pub(super) len: u64,
    pub(super) crc32c: u32,
}

/// A segment object and how much of it is still referenced.
#[derive(Debug)]
pub(super) struct Segment {
    pub(super) path: Arc<Path>,
    pub(super) total: u64,
    pub(super) live: u64,
}

#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) index: HashMap<BlockKey, Location>,
    pub(super) segments: BTreeMap<Stamp, Segment>,
    pub(super) deletions: BTreeSet<Stamp>,
    pub(super) next_seq: u64,
    pub(super) used: u64,
}

impl State {
    /// Records a segment and places its entries (newer locations than theirs win).
    pub(super) fn add_segment(&mut self, stamp: Stamp, path: Arc<Path>, entries: Vec<Entry>) {
        self.segments
            .insert(stamp, Segment { path: path.clone(), total: entries.iter().map(|e| e.len).sum(), live: 0 });
        for e in entries {
            if self.index.get(&e.key).is_some_and(|l| l.stamp > stamp) {
                continue;
            }
            let loc = Location { segment: path.clone(), stamp, offset: e.offset, len: e.len, crc32c: e.crc32c };
            self.used += loc.len;
            self.segments.get_mut(&stamp).expect("just added").live += loc.len;
            if let Some(old) = self.index.insert(e.key, loc) {
                self.unreference(&old);
            }
        }
    }

    /// Removes `key`'s location if it is older than `before` (any location for `None`).
    pub(super) fn remove(&mut self, key: &BlockKey, before: Option<Stamp>) -> Option<Location> {
        let loc = self.index.get(key)?;
        if before.is_some_and(|b| loc.stamp >= b) {
            return None;
        }
        let old = self.index.remove(key)?;
        self.unreference(&old);
        Some(old)
    }

    pub(super) fn unreference(&mut self, loc: &Location) {
        self.used -= loc.len;
        if let Some(seg) = self.segments.get_mut(&loc.stamp) {
            seg.live -= loc.len;
        }
    }
}
