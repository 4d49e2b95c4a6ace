//! Objects' files in Blob under their own names (`blob.objects_url`), and the fan-in that
//! writes them.
//!
//! A write-back object's chunks never go into Blob segments: its manifest's flush exports
//! the whole object instead. The path's primary (who flushes the manifest) starts a
//! multipart upload, asks each part's stager (the primary of the part's first chunk, which
//! holds it) to stage that part straight to Blob, and commits the upload from the part ids
//! they answer (objects/staging.rs): each byte reaches Blob once, and no node relays the
//! whole file, and a try that fails keeps what it staged for the next. Then every
//! owner of the chunks is told Blob has them (they become evictable), and the manifest
//! itself is flushed into a segment, so a node with an empty disk learns of the object.
//! A failed export is retried with backoff (objects/exports.rs: on its own, without holding
//! up the others); one cut short by a crash is redone, since the manifest is still unflushed
//! at the next start (or on the next primary), unless the file it finds in Blob already
//! holds this version's bytes (checked chunk by chunk against the manifest): its chunks may
//! have been released and evicted since, and re-reading them would fail for ever.
//!
//! A chunk no node holds is read back from the file (a ranged GET) by its primary, once
//! however many nodes ask at the same time (`Peer/FetchChunk`, a single flight there),
//! checked against the manifest's CRC-32C of that chunk, and cached on the primary (and on
//! readers, once it is popular: read replicas): N nodes restoring one checkpoint read it
//! from Blob once, from peers after.

use std::collections::{HashMap, HashSet};

use crate::NodeError;
use bytes::Bytes;
use kvtier_tiers::{Block, BlockKey, Error as TierError, Namespace};

use super::Objects;
use super::{
    ObjectInfo,
    exports::{Exported, Exports},
    failure::{ExportFailure, FailureReason},
};
use crate::{Durability, GetOutcome};

fn parse(block: &Block) -> Result<ObjectInfo, NodeError> {
    serde_json::from_slice(&block.data).map_err(|e| {
        NodeError::Tier(TierError::Corrupt {
            tier: "objects".into(),
            path: block.key.to_string().into(),
            reason: format!("the manifest does not parse: {e}"),
        })
    })
}

impl Objects {
    /// Writes the object whose manifest is `key` to Blob under its name (see the module
    /// documentation). A manifest gone meanwhile (the version replaced or deleted), or one
    /// another primary flushed, needs nothing; a file already in Blob with this version's
    /// bytes (exported before a restart, or by a primary that died before its manifest's
    /// flush, whose chunks may be gone by now) is not written again. A version another node
    /// committed waits until it is settled (see objects/exports.rs).
    pub(super) async fn export(&self, key: &BlockKey) -> Result<Exported, ExportFailure> {
        let ended = self.export_once(key).await;
        if matches!(ended, Ok(Exported::Done))
            && let Some(exports) = self.exports()
            && let Some(staging) = exports.staged.take(key)
        {
            // Moot now (the version replaced, or its file found in Blob): what a failed try
            // staged goes.
            exports.blobs.abort(&staging.upload).await;
        }
        ended
    }

    async fn export_once(&self, key: &BlockKey) -> Result<Exported, ExportFailure> {
        let exports = self.exports().expect("the exporter runs with exports").clone();
        if !self.node.unflushed(key) {
            tracing::debug!(manifest = %key, "export skipped: not unflushed here");
            exports.forget(key);
            return Ok(Exported::Done);
        }
        let GetOutcome::Hit { block, .. } = self.node.get_here(key).await else {
            tracing::debug!(manifest = %key, "export skipped: manifest not here");
            return Ok(Exported::Done);
        };
        let info = parse(&block).map_err(|error| ExportFailure { reason: FailureReason::Manifest, error })?;
        if let Some(wait) = self.settles_in(&info).filter(|_| !exports.committed_here(key)) {
            return Ok(Exported::NotSettled(wait));
        }
        let ns = key.namespace.clone();
        if !self.still_current(&ns, &info).await? {
            exports.forget(key);
            return Ok(Exported::Done);
        }
        let name = exports.blobs.name(&ns, &info.path);
        let blob = |error: TierError| ExportFailure { reason: FailureReason::Blob, error: error.into() };
        if info.deleted {
            // A delete marker: the object's file goes. A node alone needs the marker no more.
            exports.blobs.delete(&name).await.map_err(blob)?;
            if self.node.membership().is_none() {
                exports.forget(key);
                self.drop_marker(&ns, &info).await;
                return Ok(Exported::Done);
            }
        } else if self.in_blob_already(&exports, &name, &info).await.map_err(blob)? {
            self.node.metrics().objects_found_in_blob.inc();
            tracing::info!(object = %name, generation = info.generation, "the object's file is in Blob already");
        } else if info.size == 0 {
            exports.blobs.put(&name, Bytes::new()).await.map_err(blob)?;
        } else if !self.upload((&exports.blobs, &exports.staged), key, &info, &name).await? {
            return Ok(Exported::Done); // replaced while its parts were staged
        } else {
            self.node.metrics().objects_exported.inc();
            self.node.metrics().object_export_bytes.inc_by(info.size);
        }
        let chunks: Vec<(BlockKey, Option<u32>)> =
            (0..info.chunks()).map(|i| (info.chunk_key(&ns, i), info.chunk_crc32c(i))).collect();
        self.node.released_everywhere(&chunks).await;
        tracing::debug!(object = %name, bytes = info.size, generation = info.generation, "object exported to Blob");
        // Marked before the manifest's flush is queued, whose end forgets it.
        exports.exported(key);
        self.node.queue_segment_flush(key.clone());
        Ok(Exported::Done)
    }

    /// Whether `info` is still its path's newest version, here and on every other owner of
    /// the path (one that does not answer: `Owners`, tried again later): this node may be
    /// one that was away when a newer version or a delete was committed, and the old file
    /// must not go over the new one (or come back after a delete). A newer version that is
    /// settled makes this one dead: its manifest here is dropped and the catalog takes the
    /// newer one (`Ok(false)`: nothing to export). One still young may yet be undone:
    /// `Superseded`, tried again later.
    pub(super) async fn still_current(&self, ns: &Namespace, info: &ObjectInfo) -> Result<bool, ExportFailure> {
        let elsewhere = self
            .newest_elsewhere(ns, &info.path, true)
            .await
            .map_err(|error| ExportFailure { reason: FailureReason::Owners, error })?;
        let newer = [self.version_here(ns, &info.path), elsewhere]
            .into_iter()
            .flatten()
            .filter(|v| v.generation > info.generation)
            .max_by_key(|v| v.generation);
        let Some(newer) = newer else { return Ok(true) };
        if !self.settled(&newer) {
            let reason = format!("{ns}/{}: generation {} is current", info.path, newer.generation);
            return Err(ExportFailure {
                reason: FailureReason::Superseded,
                error: NodeError::Tier(TierError::InvalidKey { reason }),
            });
        }
        tracing::info!(object = %info.path, %ns, generation = info.generation, newer = newer.generation,
            deleted = newer.deleted, "not exported: a newer version replaced it (this node missed it)");
        {
            let mut objects = self.catalog.objects.write();
            let slot = (ns.clone(), info.path.clone());
            if objects.get(&slot).is_none_or(|have| have.generation < newer.generation) {
                objects.insert(slot, newer);
            }
        }
        self.node.delete_here(&super::manifest_key(ns, &info.path, info.generation)).await;
        Ok(false)
    }

    /// Whether Blob's file `name` holds exactly `info`'s bytes: its size first, then each
    /// chunk read back against the manifest's CRC-32C, stopping at the first that differs
    /// (a file of another version of the same size costs one chunk's read).
    async fn in_blob_already(&self, exports: &Exports, name: &str, info: &ObjectInfo) -> Result<bool, TierError> {
        if exports.blobs.size(name).await? != Some(info.size) {
            return Ok(false);
        }
        for index in 0..info.chunks() {
            let Some(want) = info.chunk_crc32c(index) else { return Ok(false) };
            match exports.blobs.read(name, info.chunk_range(index)).await? {
                Some(bytes) if kvtier_tiers::crc32c(&bytes) == want => {}
                _ => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Chunk `index` of `info` from any node, checked against the manifest's CRC-32C.
    pub(super) async fn chunk(&self, ns: &Namespace, info: &ObjectInfo, index: u64) -> Result<Bytes, NodeError> {
        let key = info.chunk_key(ns, index);
        match self.node.get(&key).await {
            GetOutcome::Hit { block, .. } => {
                if let Some(want) = info.chunk_crc32c(index)
                    && want != block.crc32c
                {
                    return Err(NodeError::Tier(TierError::ChecksumMismatch {
                        tier: "objects".into(),
                        key: key.to_string(),
                        location: format!("chunk {index} of {ns}/{}", info.path),
                        expected: want,
                        actual: block.crc32c,
                    }));
                }
                Ok(block.data)
            }
            GetOutcome::Miss { reason, message } => Err(NodeError::Unreachable {
                what: format!("chunk {index} of {ns}/{} generation {}", info.path, info.generation),
                failures: format!("{reason:?}: {message}"),
            }),
        }
    }

    /// Chunk `index` of `info`, which no node holds, from the object's file in Blob; `None`
    /// if the file lacks it or holds other bytes (another version replaced it). The chunk's
    /// first owner that answers reads the file (its primary, unless that one is down), once
    /// however many nodes ask at the same time (they all ask it), and caches the chunk; this
    /// node keeps it too when that owner says it is popular (a read replica, see
    /// cluster/read_replicas.rs). With no owner answering, this node reads the file itself.
    pub(crate) async fn chunk_from_blob(&self, ns: &Namespace, info: &ObjectInfo, index: u64) -> Option<Bytes> {
        let key = info.chunk_key(ns, index);
        if let Some((cluster, plan)) = self.node.plan(&key) {
            for owner in &plan.owners {
                if owner == cluster.local_id() {
                    break; // this node is the first owner up: it reads the file
                }
                match cluster.fetch_chunk_on(owner, ns, serde_json::to_vec(info).expect("serializes"), index).await {
                    Ok(found) => {
                        let (data, keep) = found?;
                        if keep {
                            match self.node.put_here(Block::new(key, data.clone()), Durability::Cache).await {
                                Ok(_) => self.node.metrics().read_replicas_kept.inc(),
                                Err(e) => tracing::debug!(chunk = index, error = %e, "keeping a read replica failed"),
                            }
                        }
                        return Some(data);
                    }
                    Err(e) => tracing::debug!(%owner, error = %e, "a chunk's owner did not fetch it; trying the next"),
                }
            }
        }
        self.fetch_chunk_here(ns, info, index).await
    }

    /// `Peer/FetchChunk` on the chunk's primary: chunk `index` of `info` for member
    /// `reader`, and whether it keeps it as a read replica.
    pub async fn fetch_chunk_for(
        &self,
        ns: &Namespace,
        info: &ObjectInfo,
        index: u64,
        reader: &str,
    ) -> (Option<Bytes>, bool) {
        let found = self.fetch_chunk_here(ns, info, index).await;
        let keep = found.is_some() && self.node.keeps_fetched(&info.chunk_key(ns, index), reader);
        (found, keep)
    }

    /// Chunk `index` of `info` from the object's file, read by this node: one read per
    /// chunk at a time (concurrent asks share it), skipped if a copy is here by then.
    pub(crate) async fn fetch_chunk_here(&self, ns: &Namespace, info: &ObjectInfo, index: u64) -> Option<Bytes> {
        let exports = self.exports()?.clone();
        let (manager, ns, info) = (self.clone(), ns.clone(), info.clone());
        let key = info.chunk_key(&ns, index);
        exports.reads.run(&key, move || Box::pin(async move { manager.read_chunk_file(&ns, &info, index).await })).await
    }

    /// Chunk `index` of `info` read from the object's file (unless a copy is here now),
    /// checked against the manifest and cached here.
    async fn read_chunk_file(&self, ns: &Namespace, info: &ObjectInfo, index: u64) -> Option<Bytes> {
        let key = info.chunk_key(ns, index);
        if let GetOutcome::Hit { block, .. } = self.node.get_here(&key).await {
            return Some(block.data);
        }
        let exports = self.exports()?;
        let want = info.chunk_crc32c(index)?;
        let name = exports.blobs.name(ns, &info.path);
        let bytes = match exports.blobs.read(&name, info.chunk_range(index)).await {
            Ok(found) => found?,
            Err(e) => {
                tracing::warn!(object = %name, chunk = index, error = %e, "reading a chunk from the object's file failed");
                return None;
            }
        };
        let block = Block::new(key, bytes);
        if block.crc32c != want {
            tracing::warn!(object = %name, chunk = index, "the object's file in Blob holds other bytes (another version)");
            return None;
        }
        self.node.metrics().object_blob_reads.inc();
        self.node.metrics().object_blob_read_bytes.inc_by(block.len());
        let data = block.data.clone();
        if let Err(e) = self.node.put_here(block, Durability::Cache).await {
            tracing::debug!(object = %name, chunk = index, error = %e, "caching a chunk read from Blob failed");
        }
        Some(data)
    }

    /// Which of `keys` need no flush, as this node knows (`Peer/InBlob`): a block in its
    /// own segments; a chunk of a current version whose manifest it flushed (the export
    /// flushes the manifest last); a chunk that a settled version retired (replaced or
    /// deleted: no version names it any more; a copy of it on a node that was away when it
    /// was deleted waited for ever). A cache copy vouches for nothing.
    pub(crate) fn in_blob_here(&self, keys: &[BlockKey]) -> Vec<BlockKey> {
        // Per namespace: the chunk ids of exported versions, and those settled ones retired.
        let mut known: HashMap<Namespace, (HashSet<u64>, HashSet<u64>)> = HashMap::new();
        for key in keys.iter().filter(|k| super::is_chunk_key(k)) {
            let ns = &key.namespace;
            if known.contains_key(ns) {
                continue;
            }
            let (mut exported, mut retired) = (HashSet::new(), HashSet::new());
            for info in self.list_versions_here(ns, "", |_| true) {
                let manifest = super::manifest_key(ns, &info.path, info.generation);
                if !info.deleted && self.node.in_own_blob(&manifest) {
                    exported.extend(info.chunk_ids());
                }
                if self.settled(&info) {
                    retired.extend(info.retired.iter().copied());
                }
            }
            known.insert(ns.clone(), (exported, retired));
        }
        keys.iter()
            .filter(|k| match (super::chunk_id(k), known.get(&k.namespace)) {
                (Some(id), Some((exported, retired))) => exported.contains(&id) || retired.contains(&id),
                (Some(_), None) => false,
                (None, _) => self.node.in_own_blob(k),
            })
            .cloned()
            .collect()
    }

    /// Releases this node's write-back copies that Blob has, as this node or any member
    /// vouches (`Peer/InBlob`): a copy whose `Flushed` never came (the node was down,
    /// stopped or restarted, which brings the SSD's write-back mark back) would otherwise
    /// stay pinned, counted against `blob.max_unflushed`, for ever. How many.
    pub(crate) async fn release_what_blob_has(&self) -> usize {
        let pinned: Vec<BlockKey> =
            self.node.unflushed_keys().into_iter().filter(|k| !self.node.flushes_here(k)).collect();
        if pinned.is_empty() {
            return 0;
        }
        let mut vouched: HashSet<BlockKey> = self.in_blob_here(&pinned).into_iter().collect();
        if let Some(cluster) = self.node.cluster() {
            let others: Vec<String> =
                cluster.view().addrs.keys().filter(|id| *id != cluster.local_id()).cloned().collect();
            for member in others {
                match cluster.in_blob_on(&member, &pinned).await {
                    Ok(found) => vouched.extend(found),
                    Err(e) => tracing::debug!(%member, error = %e, "asking what Blob has failed"),
                }
            }
        }
        let (released, kept): (Vec<BlockKey>, Vec<BlockKey>) = pinned.into_iter().partition(|k| vouched.contains(k));
        if !kept.is_empty() {
            // What waits for a flush another node owes, or for a manifest no member vouches for
            // yet: a stuck node shows here (and in unflushed_oldest_seconds).
            tracing::info!(copies = kept.len(), example = %kept[0], "write-back copies wait: no member vouches Blob has them");
        }
        let released: Vec<(BlockKey, Option<u32>)> = released.into_iter().map(|k| (k, None)).collect();
        if !released.is_empty() {
            tracing::info!(blocks = released.len(), "released write-back copies Blob already has");
            self.node.flushed_elsewhere(&released).await;
        }
        released.len()
    }
}
