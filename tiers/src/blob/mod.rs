//! The Blob tier: blocks packed into segment objects in any object store (Azure Blob, S3,
//! GCS, a local directory), through the `object_store` crate.
//!
//! A put writes its new blocks as one or more segments of at most `segment_size` bytes
//! (one PUT each, plus one for the segment's index), so a GiB of 2 MiB blocks costs a few
//! PUTs instead of 512; the caller (the flusher) hands it segment-sized batches. A get is a
//! ranged GET of the block's bytes, verified against its CRC-32C. A delete writes one
//! deletion record per batch. Opening the tier lists the index and deletion records and
//! replays them in order, so a node with an empty disk serves every block under the prefix.
//! The object layout is in `format.rs`. Blob is the last tier: it never evicts and never
//! fills (`capacity` is reported as `u64::MAX`).
//!
//! One writer per prefix: a tier's view is its own replay plus its own writes, so a second
//! process writing, deleting or compacting under the same prefix is not seen until the
//! next open (and a compaction by one removes segments the other still points at). Readers
//! may share a prefix with its writer; segments never change once written.

mod builder;
mod compact;
mod footer;
mod format;
mod objects;
mod staged_parts;
mod state;
mod store;

use std::sync::{Arc, atomic::Ordering};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, future::BoxFuture};
use object_store::{ObjectStore, PutPayload, path::Path};
use parking_lot::Mutex;

use self::format::{Entry, Stamp};
use self::{
    builder::Counters,
    state::{Location, State},
};
pub use self::{
    builder::{BlobTierBuilder, StoreRequests},
    compact::Compaction,
    objects::{MAX_PARTS, MIN_PART, ObjectBlobs, Upload, chunks_per_part},
    store::Retries,
};
use crate::{Block, BlockKey, BlockMeta, Error, PutStatus, Result, Tier, TierKind, TierUsage, check_block_size};

/// Blocks in an object store. See the module documentation.
pub struct BlobTier {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    url: String,
    writer: u32,
    segment_size: u64,
    max_block_size: u64,
    state: Mutex<State>,
    /// Whether [`BlobTier::load`] has replayed the records.
    loaded: std::sync::atomic::AtomicBool,
    /// The directory of a `file://` store, made at load if missing.
    local_dir: Option<std::path::PathBuf>,
    counters: Counters,
    /// Deletes hold it shared from taking their stamp until their keys are removed;
    /// compaction holds it exclusively while it picks live blocks and takes its stamp. So a
    /// delete is either seen by compaction's snapshot, or stamped after the rewrite.
    stamping: tokio::sync::RwLock<()>,
    /// One compaction at a time.
    compacting: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for BlobTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlobTier({})", self.url)
    }
}

impl std::fmt::Display for BlobTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "blob({})", self.url)
    }
}

impl BlobTier {
    /// Whether the records have been replayed ([`BlobTier::load`]); until then the tier
    /// holds nothing and must not write.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// One failure shared by several blocks of a batch, for each of them (the error itself
    /// cannot be cloned; its message names what failed).
    fn shared_failure(&self, e: &Error) -> Error {
        Error::Generic { tier: self.to_string(), source: e.to_string().into() }
    }

    fn each_failed<T>(&self, n: usize, e: &Error) -> Vec<Result<T>> {
        (0..n).map(|_| Err(self.shared_failure(e))).collect()
    }

    /// Refuses writes before [`BlobTier::load`]: new records take their stamps from the
    /// replay, and a delete not applied to what the replay will find would be lost.
    fn check_loaded(&self) -> Result<()> {
        if self.is_loaded() {
            return Ok(());
        }
        Err(Error::Unsupported { tier: self.to_string(), what: "writing before its records are loaded".into() })
    }

    /// Requests sent to the store so far.
    pub fn requests(&self) -> StoreRequests {
        self.counters.snapshot()
    }

    fn store_error(&self, op: &'static str, object: &str, source: object_store::Error) -> Error {
        Error::Store { tier: self.to_string(), op, object: object.to_string(), source: Box::new(source) }
    }

    fn stamp(&self) -> Stamp {
        let mut state = self.state.lock();
        state.next_seq += 1;
        Stamp { seq: state.next_seq, writer: self.writer }
    }

    /// Lists and replays every index and deletion record under the prefix, in stamp order.
    /// Once, before any other use of a tier made by [`BlobTierBuilder::build`] (new records
    /// take their sequence numbers from it).
    pub async fn load(&self) -> Result<()> {
        if let Some(dir) = &self.local_dir {
            // A missing directory is made; one that cannot be (a mount not there yet, a
            // file in the way) fails the listing below like an unreachable store.
            if let Err(e) = tokio::fs::create_dir_all(dir).await {
                tracing::warn!(dir = %dir.display(), error = %e, "blob: cannot create the directory");
            }
        }
        let mut records: Vec<(Stamp, Record)> = Vec::new();
        for (dir, ext) in [("idx", "idx"), ("del", "del"), ("seg", "seg")] {
            for meta in self.list_dir(dir).await? {
                match meta.location.filename().and_then(|f| Stamp::parse(f, ext)) {
                    Some(stamp) => records.push((stamp, Record::of(dir, meta.location, meta.size))),
                    None => {
                        tracing::warn!(object = %meta.location, "blob: skipping an object that is not a kvtier record")
                    }
                }
            }
        }
        // A segment with an `idx` object is of the earlier format: its index is that object.
        let indexed: std::collections::HashSet<Stamp> =
            records.iter().filter(|(_, r)| matches!(r, Record::Index(_))).map(|(s, _)| *s).collect();
        records.retain(|(stamp, r)| !matches!(r, Record::Segment(..)) || !indexed.contains(stamp));
        // Segments (an index either way) before the deletions of the same stamp.
        records.sort_by_key(|(stamp, r)| (*stamp, matches!(r, Record::Deletes(_))));
        let reads: Vec<_> = records.iter().map(|(_, r)| self.read_record(r)).collect();
        let bodies: Vec<_> = futures::stream::iter(reads).buffered(16).collect().await;
        let mut state = self.state.lock();
        for ((stamp, record), body) in records.iter().zip(bodies) {
            state.next_seq = state.next_seq.max(stamp.seq);
            match body {
                // Listed, then gone: removed by a compaction since (another process's).
                Err(Error::Store { source, .. }) if matches!(*source, object_store::Error::NotFound { .. }) => {
                    tracing::warn!(object = %record.path(), "blob: a listed record vanished before it was read; skipped");
                }
                Err(e) => return Err(e),
                Ok(Loaded::Skipped) => {}
                Ok(Loaded::Index(entries)) => {
                    let segment = Arc::new(Path::from(stamp.name(&self.prefix, "seg", "seg")));
                    state.add_segment(*stamp, segment, entries);
                }
                Ok(Loaded::Deletes(keys)) => {
                    state.deletions.insert(*stamp);
                    for k in keys {
                        state.remove(&k, Some(*stamp));
                    }
                }
            }
        }
        tracing::info!(tier = %self, blocks = state.index.len(), bytes = state.used, "blob: index rebuilt");
        self.loaded.store(true, Ordering::Release);
        Ok(())
    }

    /// What a record listed at load says.
    async fn read_record(&self, record: &Record) -> Result<Loaded> {
        Ok(match record {
            Record::Index(path) => match format::decode_index(&self.fetch(path).await?) {
                Ok(entries) => Loaded::Index(entries),
                Err(why) => {
                    tracing::warn!(object = %path, why, "blob: skipping a damaged index");
                    Loaded::Skipped
                }
            },
            Record::Deletes(path) => match format::decode_deletes(&self.fetch(path).await?) {
                Ok(keys) => Loaded::Deletes(keys),
                Err(why) => {
                    tracing::warn!(object = %path, why, "blob: skipping a damaged deletion record");
                    Loaded::Skipped
                }
            },
            // No footer: an upload of the earlier format whose index never landed (compaction
            // removes it once old enough), or damaged (said).
            Record::Segment(path, size) => self.read_footer(path, *size).await?.map_or(Loaded::Skipped, Loaded::Index),
        })
    }

    /// Every object under `dir` of the prefix (`idx`, `del`, `seg`).
    async fn list_dir(&self, dir: &str) -> Result<Vec<object_store::ObjectMeta>> {
        let sep = if self.prefix.is_empty() { "" } else { "/" };
        let listed = format!("{}{sep}{dir}", self.prefix);
        Counters::count(&self.counters.other, 1);
        self.store
            .list(Some(&Path::from(listed.as_str())))
            .try_collect()
            .await
            .map_err(|e| self.store_error("list", &listed, e))
    }

    /// A whole object.
    async fn fetch(&self, path: &Path) -> Result<Bytes> {
        Counters::count(&self.counters.gets, 1);
        let got = self.store.get(path).await.map_err(|e| self.store_error("get", path.as_ref(), e))?;
        let bytes = got.bytes().await.map_err(|e| self.store_error("get", path.as_ref(), e))?;
        Counters::count(&self.counters.get_bytes, bytes.len() as u64);
        Ok(bytes)
    }

    /// Writes `blocks` as one segment and its index; the entries once both are stored.
    async fn write_segment(&self, blocks: &[&Block]) -> Result<()> {
        let stamp = self.stamp();
        let entries = self.write_segment_at(stamp, blocks).await?;
        let segment = Arc::new(Path::from(stamp.name(&self.prefix, "seg", "seg")));
        self.state.lock().add_segment(stamp, segment, entries);
        Ok(())
    }

    /// Stores `blocks` as the segment `stamp`, its index in its footer (one PUT); returns the
    /// entries. The segment's body is the blocks' own buffers one after another (`PutPayload`
    /// is a list of `Bytes`): nothing is copied into a segment buffer first.
    async fn write_segment_at(&self, stamp: Stamp, blocks: &[&Block]) -> Result<Vec<Entry>> {
        let mut entries = Vec::with_capacity(blocks.len());
        let mut offset = 0u64;
        for b in blocks {
            entries.push(Entry { key: b.key.clone(), offset, len: b.data.len() as u64, crc32c: b.crc32c });
            offset += b.data.len() as u64;
        }
        let footer = format::encode_footer(&entries);
        let body: PutPayload = blocks.iter().map(|b| b.data.clone()).chain(std::iter::once(footer)).collect();
        self.put_object(&stamp.name(&self.prefix, "seg", "seg"), body).await?;
        Ok(entries)
    }

    async fn put_object(&self, name: &str, body: PutPayload) -> Result<()> {
        Counters::count(&self.counters.puts, 1);
        Counters::count(&self.counters.put_bytes, body.content_length() as u64);
        self.store.put(&Path::from(name), body).await.map(|_| ()).map_err(|e| self.store_error("put", name, e))
    }

    async fn put_blocks(&self, blocks: &[Block]) -> Vec<Result<PutStatus>> {
        if let Err(e) = self.check_loaded() {
            return self.each_failed(blocks.len(), &e);
        }
        let mut results: Vec<Option<Result<PutStatus>>> = Vec::with_capacity(blocks.len());
        let mut fresh: Vec<usize> = Vec::new();
        let mut seen: std::collections::HashSet<&BlockKey> = std::collections::HashSet::new();
        {
            let state = self.state.lock();
            for (i, b) in blocks.iter().enumerate() {
                results.push(match check_block_size(&b.key, b.data.len() as u64, self.max_block_size) {
                    Err(e) => Some(Err(e)),
                    Ok(()) if state.index.contains_key(&b.key) => Some(Ok(PutStatus::Existed)),
                    // A key twice in one batch: the first is stored, the second is a no-op.
                    Ok(()) if !seen.insert(&b.key) => Some(Ok(PutStatus::Existed)),
                    Ok(()) => {
                        fresh.push(i);
                        None
                    }
                });
            }
        }
        // Consecutive blocks fill a segment up to `segment_size` (a bigger block gets its own).
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut bytes = 0u64;
        for i in fresh {
            let len = blocks[i].data.len() as u64;
            match groups.last_mut() {
                Some(g) if bytes + len <= self.segment_size => g.push(i),
                _ => {
                    groups.push(vec![i]);
                    bytes = 0;
                }
            }
            bytes += len;
        }
        let written = futures::future::join_all(groups.iter().map(|g| {
            let members: Vec<&Block> = g.iter().map(|&i| &blocks[i]).collect();
            async move { self.write_segment(&members).await }
        }))
        .await;
        for (group, outcome) in groups.iter().zip(written) {
            for &i in group {
                results[i] = Some(match &outcome {
                    Ok(()) => Ok(PutStatus::Stored),
                    Err(e) => Err(self.shared_failure(e)),
                });
            }
        }
        results.into_iter().map(|r| r.expect("every block answered")).collect()
    }

    async fn get_blocks(&self, keys: &[BlockKey]) -> Vec<Result<Option<Block>>> {
        let found: Vec<Option<Location>> = {
            let state = self.state.lock();
            keys.iter().map(|k| state.index.get(k).cloned()).collect()
        };
        // Collected first: a stream over a closure would not be `Send` (rust#110338).
        let reads: Vec<_> = found.into_iter().zip(keys).map(|(loc, key)| self.read_one(key, loc)).collect();
        futures::stream::iter(reads).buffered(32).collect().await
    }

    /// One block's bytes by a ranged GET, checked against its CRC-32C. A segment gone
    /// because a compaction moved the block meanwhile (the location was looked up before)
    /// is read where the block is now: a miss there made callers drop a copy Blob still held.
    async fn read_one(&self, key: &BlockKey, loc: Option<Location>) -> Result<Option<Block>> {
        let Some(mut loc) = loc else { return Ok(None) };
        let data = loop {
            Counters::count(&self.counters.gets, 1);
            match self.store.get_range(&loc.segment, loc.offset..loc.offset + loc.len).await {
                Ok(d) => {
                    Counters::count(&self.counters.get_bytes, d.len() as u64);
                    break d;
                }
                Err(object_store::Error::NotFound { .. }) => {
                    let now = self.state.lock().index.get(key).cloned();
                    if let Some(moved) = now.filter(|now| now.stamp != loc.stamp) {
                        loc = moved;
                        continue;
                    }
                    tracing::warn!(key = %key, segment = %loc.segment, "blob: the segment is gone; a miss");
                    self.forget(key, &loc);
                    return Ok(None);
                }
                Err(e) => return Err(self.store_error("get", &loc.segment.to_string(), e)),
            }
        };
        let actual = crate::crc32c(&data);
        if data.len() as u64 != loc.len || actual != loc.crc32c {
            self.forget(key, &loc);
            return Err(Error::ChecksumMismatch {
                tier: self.to_string(),
                key: key.to_string(),
                location: format!("{} at {}", loc.segment, loc.offset),
                expected: loc.crc32c,
                actual,
            });
        }
        Ok(Some(Block::with_crc32c(key.clone(), data, actual)))
    }

    /// Drops a copy that cannot be read (damaged, or its segment vanished) from the index.
    fn forget(&self, key: &BlockKey, loc: &Location) {
        let mut state = self.state.lock();
        if state.index.get(key).is_some_and(|l| l.stamp == loc.stamp) {
            state.remove(key, None);
        }
    }

    async fn delete_blocks(&self, keys: &[BlockKey]) -> Vec<Result<bool>> {
        if let Err(e) = self.check_loaded() {
            return self.each_failed(keys.len(), &e);
        }
        let present: Vec<BlockKey> = {
            let state = self.state.lock();
            keys.iter().filter(|k| state.index.contains_key(*k)).cloned().collect()
        };
        if present.is_empty() {
            return keys.iter().map(|_| Ok(false)).collect();
        }
        // The record goes first: a delete acknowledged is a delete that survives a restart.
        let _stamping = self.stamping.read().await;
        let stamp = self.stamp();
        let name = stamp.name(&self.prefix, "del", "del");
        if let Err(e) = self.put_object(&name, format::encode_deletes(&present).into()).await {
            return self.each_failed(keys.len(), &e);
        }
        let mut state = self.state.lock();
        state.deletions.insert(stamp);
        keys.iter().map(|k| Ok(state.remove(k, Some(stamp)).is_some())).collect()
    }
}

impl Tier for BlobTier {
    fn kind(&self) -> TierKind {
        TierKind::Blob
    }

    fn put_batch<'a>(&'a self, blocks: &'a [Block]) -> BoxFuture<'a, Vec<Result<PutStatus>>> {
        Box::pin(self.put_blocks(blocks))
    }

    fn get_batch<'a>(&'a self, keys: &'a [BlockKey]) -> BoxFuture<'a, Vec<Result<Option<Block>>>> {
        Box::pin(self.get_blocks(keys))
    }

    fn contains_batch<'a>(&'a self, keys: &'a [BlockKey]) -> BoxFuture<'a, Result<Vec<bool>>> {
        let state = self.state.lock();
        let found = keys.iter().map(|k| state.index.contains_key(k)).collect();
        Box::pin(async move { Ok(found) })
    }

    fn delete_batch<'a>(&'a self, keys: &'a [BlockKey]) -> BoxFuture<'a, Vec<Result<bool>>> {
        Box::pin(self.delete_blocks(keys))
    }

    fn usage(&self) -> BoxFuture<'_, Result<TierUsage>> {
        let state = self.state.lock();
        let usage = TierUsage { capacity: u64::MAX, used: state.used, blocks: state.index.len() as u64 };
        Box::pin(async move { Ok(usage) })
    }

    fn blocks(&self) -> BoxFuture<'_, Result<Vec<BlockMeta>>> {
        let state = self.state.lock();
        let metas = state
            .index
            .iter()
            .map(|(k, l)| BlockMeta { key: k.clone(), len: l.len, crc32c: l.crc32c, durable: false })
            .collect();
        Box::pin(async move { Ok(metas) })
    }

    fn eviction_candidates(&self, _size: u64, _max: usize) -> Vec<BlockKey> {
        Vec::new() // the last tier keeps everything
    }
}

/// An object listed at load.
enum Record {
    /// A segment's index, of the earlier format.
    Index(Path),
    /// Keys deleted.
    Deletes(Path),
    /// A segment, with its size: its index is in its footer.
    Segment(Path, u64),
}

impl Record {
    fn of(dir: &str, path: Path, size: u64) -> Record {
        match dir {
            "idx" => Record::Index(path),
            "del" => Record::Deletes(path),
            _ => Record::Segment(path, size),
        }
    }

    fn path(&self) -> &Path {
        match self {
            Record::Index(p) | Record::Deletes(p) | Record::Segment(p, _) => p,
        }
    }
}

/// What a record said.
enum Loaded {
    Index(Vec<Entry>),
    Deletes(Vec<BlockKey>),
    Skipped,
}

/// Damages `key`'s bytes in whichever segment its index names under `url`, through the
/// store itself (for tests: a bit flipped at rest).
#[cfg(any(test, feature = "conformance"))]
pub(crate) async fn damage_copy(url: &str, options: Vec<(String, String)>, key: &crate::BlockKey) {
    let (url, _) = store::parse(url, "blob.url").unwrap();
    let store::Opened { store, prefix, .. } = store::open(&url, &options, Retries::default()).unwrap();
    let segments: Vec<_> = store.list(Some(&Path::from(format!("{prefix}/seg")))).try_collect().await.unwrap();
    for meta in segments {
        let mut data = store.get(&meta.location).await.unwrap().bytes().await.unwrap().to_vec();
        // Its index: in its footer, or (the earlier format) its `idx` object.
        let entries = match format::trailer(&data) {
            Some(len) => {
                let end = data.len() - format::TRAILER_LEN;
                format::decode_index(&data[end - len as usize..end]).unwrap()
            }
            None => {
                let idx = Path::from(meta.location.as_ref().replace("/seg/", "/idx/").replace(".seg", ".idx"));
                let Ok(got) = store.get(&idx).await else { continue };
                format::decode_index(&got.bytes().await.unwrap()).unwrap()
            }
        };
        if let Some(e) = entries.into_iter().find(|e| &e.key == key) {
            data[(e.offset + e.len / 2) as usize] ^= 0x40;
            store.put(&meta.location, data.into()).await.unwrap();
            return;
        }
    }
    panic!("{key} is in no segment's index");
}

#[cfg(test)]
mod tests;
