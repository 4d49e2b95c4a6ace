//! An object's manifest: what is known of one version of a path (size, generation, chunk
//! size and checksums, the runs of a joined object, attributes), as JSON in its manifest block.

use std::collections::BTreeMap;

use kvtier_tiers::{BlockKey, Namespace};
use serde::{Deserialize, Serialize};

use super::{chunk_key, join::Run};

/// What is known of one object (its manifest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    /// The object's path in its namespace.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// Incremented by every put of the path.
    pub generation: u64,
    /// Bytes per chunk (the last may be shorter).
    pub chunk_size: u64,
    /// CRC-32C of the whole object.
    pub crc32c: u32,
    /// When the generation was committed (seconds since the Unix epoch).
    pub created_unix: u64,
    /// The random id naming this generation's chunks.
    pub(super) id: u64,
    /// Each chunk's CRC-32C: a chunk read back from the object's file in Blob is checked
    /// against it. (Manifests written before it existed have none.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) chunk_crc32c: Vec<u32>,
    /// An object joined from parts: the runs of their chunks it adopted, in order (then `id`
    /// names no chunk). Empty for an object written in one piece.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) runs: Vec<Run>,
    /// A delete marker: the path was deleted at this generation (objects/deletes.rs). It
    /// names no chunk, and only members see it: a stat, read or listing finds no object.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) deleted: bool,
    /// The chunk ids of the version this one replaced or deleted: a copy of such a chunk that
    /// still waits for a flush (its node was away when they were deleted) is released.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) retired: Vec<u64>,
    /// What its writer said of it besides its bytes (S3's standard headers, user metadata,
    /// declared checksum: `content-type`, `x-amz-meta-*`, ...), kept with the version and
    /// answered with it. Members too old to know it drop it from the copies they make.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) attributes: BTreeMap<String, String>,
}

impl ObjectInfo {
    /// What its writer said of it besides its bytes (see the field).
    pub fn attributes(&self) -> &BTreeMap<String, String> {
        &self.attributes
    }

    /// Number of chunks.
    pub fn chunks(&self) -> u64 {
        match self.runs.last() {
            None => self.size.div_ceil(self.chunk_size.max(1)),
            Some(last) => last.first + last.chunks(),
        }
    }

    /// The run holding chunk `index` (`None`: the object is in one piece).
    fn run_of(&self, index: u64) -> Option<&Run> {
        let after = self.runs.partition_point(|r| r.first <= index);
        self.runs.get(after.checked_sub(1)?)
    }

    /// The block key of chunk `index`.
    pub(crate) fn chunk_key(&self, ns: &Namespace, index: u64) -> BlockKey {
        match self.run_of(index) {
            None => chunk_key(ns, self.id, index),
            Some(run) => chunk_key(ns, run.id, index - run.first),
        }
    }

    /// The key id of chunk `index` (its version's, or its run's).
    pub(crate) fn key_id_of(&self, index: u64) -> u64 {
        self.run_of(index).map_or(self.id, |run| run.id)
    }

    /// The bytes of the object chunk `index` holds.
    pub(crate) fn chunk_range(&self, index: u64) -> std::ops::Range<u64> {
        let (start, within, chunk_size, end) = match self.run_of(index) {
            None => (0, index, self.chunk_size, self.size),
            Some(run) => (run.start, index - run.first, run.chunk_size, run.start + run.size),
        };
        let from = start + within * chunk_size;
        from..(from + chunk_size).min(end)
    }

    /// The chunk holding byte `offset` (below the size).
    pub(crate) fn chunk_at(&self, offset: u64) -> u64 {
        let after = self.runs.partition_point(|r| r.start <= offset);
        match after.checked_sub(1).and_then(|i| self.runs.get(i)) {
            None => offset / self.chunk_size.max(1),
            Some(run) => run.first + (offset - run.start) / run.chunk_size.max(1),
        }
    }

    /// The CRC-32C chunk `index` was stored with (`None` for manifests older than the field).
    pub(crate) fn chunk_crc32c(&self, index: u64) -> Option<u32> {
        self.chunk_crc32c.get(usize::try_from(index).ok()?).copied()
    }

    /// Whether chunks with key id `id` belong to this version.
    pub(crate) fn names_chunks_of(&self, id: u64) -> bool {
        if self.runs.is_empty() { self.id == id } else { self.runs.iter().any(|r| r.id == id) }
    }

    /// Whether this version names chunks of `other` (a joined object and a part it adopted).
    pub fn shares_chunks_with(&self, other: &ObjectInfo) -> bool {
        other.chunk_ids().into_iter().any(|id| self.names_chunks_of(id))
    }

    /// The key ids of this version's chunks.
    pub(crate) fn chunk_ids(&self) -> Vec<u64> {
        if self.runs.is_empty() { vec![self.id] } else { self.runs.iter().map(|r| r.id).collect() }
    }
}

/// An object's metadata on the wire (the generation's chunk id stays inside the node).
impl From<&ObjectInfo> for kvtier_proto::v1::ObjectInfo {
    fn from(info: &ObjectInfo) -> Self {
        kvtier_proto::v1::ObjectInfo {
            path: info.path.clone(),
            size: info.size,
            generation: info.generation,
            chunk_size: info.chunk_size,
            crc32c: info.crc32c,
            created_unix: info.created_unix,
        }
    }
}
