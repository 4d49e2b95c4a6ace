//! Named objects: files of any size (checkpoint shards, model weights) stored as blocks.
//!
//! An object is a **manifest** plus **chunks**, all blocks in the object's namespace:
//! - chunk `i` of generation `g`: key `c/` + the generation's random id (8 bytes) + `i`
//!   (4 bytes, big-endian), at most `objects.chunk_size` bytes;
//! - the manifest of generation `g`: key `m/` + the first 24 bytes of SHA-256(path) + `g`
//!   (8 bytes, big-endian), a JSON document naming the path, size, chunk size, generation
//!   id and CRC-32C of the whole object.
//!
//! An object joined from parts (S3's CompleteMultipartUpload) adopts their chunks instead of
//! copying them: its manifest lists **runs**, each the chunks of one part's generation (its
//! id, where it starts in the object, its chunk size), and the parts' manifests are retired
//! without their chunks. No node reads or relays the parts' bytes to join them.
//!
//! Blocks are immutable, so a new version never touches the old one: its chunks go under
//! a new id, then its manifest under the next generation (the commit), then the catalog
//! (in memory) points at it, then the old manifest and chunks are deleted. A reader
//! resolves the path once and reads one generation: the old or the new, never a mix (a
//! reader of an old generation whose chunks were deleted meanwhile gets an error, not
//! bytes of the new one). At start the catalog is rebuilt from the manifests the index
//! holds (local tiers and Blob); the highest generation of a path wins and older ones left
//! by a crash mid-commit are removed. A delete is a version too: a delete marker
//! (objects/deletes.rs), so that no copy of the deleted version can bring it back.

use std::{collections::HashMap, sync::Arc};

use crate::NodeError;
use bytes::Bytes;
use kvtier_tiers::{Block, BlockKey, CpuTier, Error as TierError, Namespace, Tier};
use parking_lot::RwLock;

pub(crate) use crate::keys::{is_chunk_key, is_manifest_key};
use crate::{
    Config, Durability, Error, GetOutcome, Manager, Metrics,
    clock::{now_unix, unix_ms},
    keys::{chunk_id, chunk_key, manifest_key},
    manager::Tiers,
    tasks::Tasks,
};

pub use self::manifest::ObjectInfo;
pub use kvtier_types::CommitIf;

/// Named objects over one node (and, through it, its cluster). Cloning shares it.
#[derive(Clone)]
pub struct Objects {
    /// The node the objects' blocks live on.
    node: Manager,
    catalog: Arc<Catalog>,
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Objects").field("node", &self.node).finish_non_exhaustive()
    }
}

/// An [`Objects`] that does not keep its node alive (for its background tasks).
pub(crate) struct WeakObjects {
    node: crate::manager::WeakManager,
    catalog: Arc<Catalog>,
}

impl WeakObjects {
    /// The objects, unless their node was dropped.
    pub(crate) fn upgrade(&self) -> Option<Objects> {
        Some(Objects { node: self.node.upgrade()?, catalog: self.catalog.clone() })
    }
}

impl Objects {
    /// Opens a node as `config` sets it, with named objects on it. Must run inside a tokio
    /// runtime.
    pub async fn open(config: &Config, metrics: Metrics) -> Result<Objects, Error> {
        Self::build(Tiers::from_config(config).await?, config, metrics, None).await
    }

    /// Named objects on a node over a CPU and a slow tier built by the caller, no Blob tier
    /// (tests).
    pub async fn with_tiers(
        cpu: CpuTier,
        ssd: Option<Arc<dyn Tier>>,
        config: &Config,
        metrics: Metrics,
    ) -> Result<Objects, Error> {
        Self::build(Tiers::given(cpu, ssd), config, metrics, None).await
    }

    /// Named objects on a node over a CPU and a slow tier built by the caller, its Blob
    /// tier from `config`, that reaches the other members through `dialer` instead of TCP
    /// (the cluster simulation of `kvtier-bench sim` runs many such nodes in one process).
    pub async fn with_transport(
        cpu: CpuTier,
        ssd: Arc<dyn Tier>,
        config: &Config,
        metrics: Metrics,
        dialer: crate::cluster::Dialer,
    ) -> Result<Objects, Error> {
        Self::build(Tiers::given_with_blob(cpu, ssd, config)?, config, metrics, Some(dialer)).await
    }

    async fn build(
        tiers: Tiers,
        config: &Config,
        metrics: Metrics,
        dialer: Option<crate::cluster::Dialer>,
    ) -> Result<Objects, Error> {
        let tasks = Tasks::default();
        // Objects' files in Blob go with write-back (an SSD and a Blob tier to flush to).
        let exports = match (tiers.flushes(), config.objects_url()) {
            (true, Some(url)) => {
                let retries =
                    kvtier_tiers::Retries { max_retries: config.blob.retries, timeout: config.blob.retry_timeout };
                let options: Vec<(String, String)> = config.blob.options.clone().into_iter().collect();
                let blobs = kvtier_tiers::ObjectBlobs::open(&url, &options, retries)?;
                Some(Arc::new(Exports::new(
                    blobs,
                    config.blob.export_concurrency,
                    // How long a commit can still be undone: see Objects::settled.
                    4 * config.cluster.peer_timeout,
                    tasks.clone(),
                )))
            }
            _ => None,
        };
        let catalog = Arc::new(Catalog::new(config.cluster.delete_marker_ttl, exports));
        let node = Manager::build(tiers, config, metrics, dialer, tasks, Some(catalog.clone())).await?;
        Ok(Objects { node, catalog })
    }

    /// The node under the objects.
    pub fn node(&self) -> &Manager {
        &self.node
    }

    /// A handle that does not keep the node alive (for background tasks).
    pub(crate) fn downgrade(&self) -> WeakObjects {
        WeakObjects { node: self.node.downgrade(), catalog: self.catalog.clone() }
    }

    /// Where objects' files go in Blob, when they go there.
    pub(crate) fn exports(&self) -> Option<&Arc<Exports>> {
        self.catalog.exports.as_ref()
    }
}

/// Namespace + path -> the current generation's manifest.
#[derive(Debug)]
pub(crate) struct Catalog {
    objects: RwLock<HashMap<(Namespace, String), ObjectInfo>>,
    /// Chunk ids of uploads and joins in progress here (see objects/orphans.rs).
    writing: orphans::Writing,
    /// One commit or delete of a path at a time.
    locks: crate::flight::KeyLocks,
    /// How long a member keeps a delete marker (`cluster.delete_marker_ttl`).
    marker_ttl: std::time::Duration,
    /// Older manifests waiting for the version that replaced them to settle.
    superseded: superseded::Superseded,
    /// Objects' files in Blob (with write-back to Blob): a write-back object's chunks are
    /// exported with it, never flushed into segments.
    exports: Option<Arc<Exports>>,
}

impl Catalog {
    pub(crate) fn new(marker_ttl: std::time::Duration, exports: Option<Arc<Exports>>) -> Self {
        Catalog {
            objects: RwLock::default(),
            writing: orphans::Writing::default(),
            locks: crate::flight::KeyLocks::new(256),
            marker_ttl,
            superseded: superseded::Superseded::default(),
            exports,
        }
    }
}

fn invalid(what: String) -> NodeError {
    NodeError::Tier(TierError::InvalidKey { reason: what })
}

fn check_path(path: &str) -> Result<(), NodeError> {
    if path.is_empty() || path.len() > 1024 || path.contains('\0') {
        return Err(invalid(format!("object path {path:?}: 1 to 1024 bytes, no NUL")));
    }
    Ok(())
}

impl Objects {
    /// Commits a new version on this node (the path's primary, or a node alone): the next
    /// generation under the path's lock, its manifest stored (on the path's owners), the
    /// catalog switched to it, the previous version deleted. Nothing is done (`None`) when
    /// the path's current version, here or on another owner, does not meet `condition`; a
    /// delete marker is committed only over a version (`None`: there was none).
    pub(crate) async fn commit_here(
        &self,
        ns: &Namespace,
        mut info: ObjectInfo,
        durability: Durability,
        condition: CommitIf,
        deadline_unix_ms: Option<u64>,
    ) -> Result<Option<ObjectInfo>, NodeError> {
        let slot = (ns.clone(), info.path.clone());
        let _one_at_a_time = self.catalog.locks.lock(&manifest_key(ns, &info.path, 0)).await;
        let old = self.catalog.objects.read().get(&slot).cloned();
        // Another owner may know a newer version than this one (it was away meanwhile). A
        // conditional write, and a delete of a path this node knows no live version of,
        // must hear from every owner: one out of reach may hold the only copy (or the newest).
        let must_hear_all = condition != CommitIf::Any || (info.deleted && old.as_ref().is_none_or(|o| o.deleted));
        let elsewhere = self.newest_elsewhere(ns, &info.path, must_hear_all).await?;
        let current = match (&old, elsewhere) {
            (Some(o), Some(e)) if e.generation > o.generation => Some(e),
            (Some(o), _) => Some(o.clone()),
            (None, e) => e,
        };
        // This very version, committed by a call whose answer was lost (a primary that failed
        // after storing the manifest, the retry now on the next owner): the same version
        // again, not a new one, which would retire the chunks it names.
        if let Some(c) = current.as_ref().filter(|c| !c.deleted && c.id == info.id) {
            return Ok(Some(c.clone()));
        }
        let live = current.as_ref().filter(|c| !c.deleted);
        if !condition.holds(live.map(|l| (l.generation, l.crc32c))) {
            return Ok(None);
        }
        // A delete finds no version to delete.
        if info.deleted && live.is_none() {
            return Ok(None);
        }
        info.retired = live
            .map(|c| c.chunk_ids().into_iter().filter(|id| !info.names_chunks_of(*id)).collect())
            .unwrap_or_default();
        // Past every generation known, and at least the time in ms (as GCS numbers its
        // generations): a stand-in primary that cannot reach an owner holding a newer copy
        // (stopped, cut off) still numbers its commit above that copy's, so the later commit
        // wins when they meet instead of two versions sharing one number.
        info.generation = (current.map_or(0, |c| c.generation) + 1).max(unix_ms(std::time::SystemTime::now()));
        let manifest = Bytes::from(serde_json::to_vec(&info).expect("serializes"));
        let key = manifest_key(ns, &info.path, info.generation);
        // A request that waited past its sender's patience (this node was stopped or cut off)
        // commits nothing: the sender has moved on to the next owner.
        if let Some(deadline) = deadline_unix_ms.filter(|&d| unix_ms(std::time::SystemTime::now()) > d) {
            self.node.metrics().late_commits_refused.inc();
            return Err(NodeError::NotCommitted {
                what: format!("{ns}/{}", info.path),
                cause: format!("the commit arrived after its deadline ({deadline} ms since the epoch)"),
            });
        }
        // Its export waits for the quorum: the file of a commit that fails must never
        // replace the last version's in Blob.
        let hold = self.exports().map(|exports| exports.hold(&key));
        let (stored, holding) = self.node.put_reporting(Block::new(key.clone(), manifest), durability).await;
        let failed = match stored {
            Ok(_) => None,
            Err(e) => Some(self.undo_commit(&key, info.generation, slot.clone(), old.clone(), e, &holding).await),
        };
        if let Some(hold) = hold {
            // An undone commit's manifest is gone from here: nothing to export. One too late
            // to undo, or not undone everywhere, stands, and is exported.
            hold.release(!matches!(failed, Some(NodeError::NotCommitted { .. })));
        }
        if let Some(e) = failed {
            return Err(e);
        }
        self.catalog.objects.write().insert(slot, info.clone());
        if let Some(old) = old {
            self.remove_generation_keeping(ns, &old, Some(&info)).await;
        }
        Ok(Some(info))
    }

    /// A commit whose manifest put failed (too few copies): its copy is deleted here and on
    /// every owner that may hold one (`holding`: it stored one, or did not answer the put,
    /// which past its deadline it will now refuse to store), and every catalog that took it
    /// gets `old` back (the owners by its manifest put again, which they hold: learning it
    /// again). When every such owner answered the delete, nothing of the commit remains and
    /// [`NodeError::NotCommitted`] says so; otherwise a copy may stand on an owner that did
    /// not answer (and land when it returns), and `failed` stands (an unknown outcome).
    ///
    /// Members treat a version as settled (never undone: what it replaced may be dropped,
    /// its export done by any owner) four peer timeouts after its generation, so no step of
    /// an undo may land later: the undo begins by two timeouts after it, its deletes are
    /// refused by a member they reach past three (a member stopped meanwhile), and its puts,
    /// each refused past a timeout from its sending, are sent by three or not at all. An undo
    /// cut short so (this node or an owner was stopped mid-commit) leaves the version
    /// standing where it was stored, resync spreads it, and the outcome is unknown.
    async fn undo_commit(
        &self,
        key: &BlockKey,
        generation: u64,
        slot: (Namespace, String),
        old: Option<ObjectInfo>,
        failed: NodeError,
        holding: &[String],
    ) -> NodeError {
        // Its deletes, then its puts, each at most a peer timeout (all owners at once).
        let after = |timeouts: u32| {
            let t = self.node.cluster().map_or(std::time::Duration::ZERO, |c| timeouts * c.peer_timeout());
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(generation) + t
        };
        let too_late = |what: &str| {
            tracing::warn!(manifest = %key, error = %failed,
                "a failed commit is past the time {what}: it stands, its outcome is unknown");
        };
        if self.node.cluster().is_some() && std::time::SystemTime::now() > after(2) {
            too_late("it could be undone in");
            return failed;
        }
        let (_, unanswered) = self.node.delete_on_these(key, holding, self.node.cluster().map(|_| after(3))).await;
        if self.node.cluster().is_some() && std::time::SystemTime::now() > after(3) {
            too_late("its undo could teach the owners the version before it");
            return failed;
        }
        if let Some(old) = old {
            let old_key = manifest_key(&slot.0, &slot.1, old.generation);
            self.catalog.objects.write().entry(slot.clone()).or_insert(old);
            // As this node holds it: a copy still waiting for its export stays write-back.
            let durability = if self.node.unflushed(&old_key) { Durability::WriteBack } else { Durability::LocalDisk };
            if let (Some(cluster), GetOutcome::Hit { block, .. }) =
                (self.node.cluster(), self.node.get_here(&old_key).await)
            {
                let puts = holding.iter().map(|owner| cluster.put_on(owner, &block, durability));
                for (owner, put) in holding.iter().zip(futures::future::join_all(puts).await) {
                    if let Err(e) = put {
                        tracing::debug!(%owner, error = %e, "teaching an owner the version before an undone commit failed");
                    }
                }
            } else {
                tracing::warn!(manifest = %old_key, "the version before an undone commit is not here to teach its owners again");
            }
        }
        if unanswered.is_empty() {
            let what = format!("{}/{}", slot.0, slot.1);
            return NodeError::NotCommitted { what, cause: format!("{failed}; its copies were removed") };
        }
        let unanswered: Vec<String> = unanswered.into_iter().map(|(owner, e)| format!("{owner}: {e}")).collect();
        tracing::warn!(manifest = %key, error = %failed, unanswered = %unanswered.join("; "),
            "a failed commit could not be undone everywhere: its outcome is unknown");
        failed
    }

    /// The current version of `path` as this node's catalog has it (`None` if deleted).
    pub(crate) fn stat_object_here(&self, namespace: &Namespace, path: &str) -> Option<ObjectInfo> {
        self.version_here(namespace, path).filter(|info| !info.deleted)
    }

    /// The newest version of `path` this node's catalog has, a delete marker included (what
    /// members compare).
    pub(crate) fn version_here(&self, namespace: &Namespace, path: &str) -> Option<ObjectInfo> {
        self.catalog.objects.read().get(&(namespace.clone(), path.to_string())).cloned()
    }

    /// Every object of this node's catalog at `path`, whatever its namespace (the S3
    /// endpoint's bucket markers).
    pub fn objects_named_here(&self, path: &str) -> Vec<(String, ObjectInfo)> {
        let catalog = self.catalog.objects.read();
        catalog
            .iter()
            .filter(|((_, p), info)| p == path && !info.deleted)
            .map(|((ns, _), info)| (ns.to_string(), info.clone()))
            .collect()
    }

    /// This node's objects of `namespace` under `prefix` that `keep` accepts, by path.
    pub(crate) fn list_objects_here(
        &self,
        namespace: &Namespace,
        prefix: &str,
        keep: impl Fn(&str) -> bool,
    ) -> Vec<ObjectInfo> {
        let mut found = self.list_versions_here(namespace, prefix, keep);
        found.retain(|info| !info.deleted);
        found
    }

    /// [`Objects::list_objects_here`] with delete markers (what members compare).
    pub(crate) fn list_versions_here(
        &self,
        namespace: &Namespace,
        prefix: &str,
        keep: impl Fn(&str) -> bool,
    ) -> Vec<ObjectInfo> {
        let mut found: Vec<ObjectInfo> = self
            .catalog
            .objects
            .read()
            .iter()
            .filter(|((ns, path), _)| ns == namespace && path.starts_with(prefix) && keep(path))
            .map(|(_, info)| info.clone())
            .collect();
        found.sort_by(|a, b| a.path.cmp(&b.path));
        found
    }

    /// `len` bytes of `info`'s generation from `offset` (clamped to the object), a chunk at
    /// a time. A chunk that cannot be read ends the stream with an error naming it: never
    /// other bytes.
    pub fn read_object(
        &self,
        namespace: &Namespace,
        info: &ObjectInfo,
        offset: u64,
        len: u64,
    ) -> impl futures::Stream<Item = Result<Bytes, NodeError>> + Send + 'static {
        let end = offset.saturating_add(len).min(info.size);
        let state = (self.clone(), namespace.clone(), info.clone(), offset.min(end), false);
        futures::stream::unfold(state, move |(m, ns, info, at, failed)| async move {
            if at >= end || failed {
                return None;
            }
            let index = info.chunk_at(at);
            let chunk = match m.node.get(&info.chunk_key(&ns, index)).await {
                GetOutcome::Hit { block, .. } => block.data,
                // No node holds it: the object's file in Blob may.
                GetOutcome::Miss { .. } if let Some(data) = m.chunk_from_blob(&ns, &info, index).await => data,
                GetOutcome::Miss { reason, message } => {
                    let what = format!(
                        "{ns}/{}: chunk {index} of generation {} cannot be read ({reason:?}: {message})",
                        info.path, info.generation
                    );
                    return Some((
                        Err(NodeError::Tier(TierError::Unsupported { tier: "objects".into(), what })),
                        (m, ns, info, at, true),
                    ));
                }
            };
            let start = info.chunk_range(index).start;
            let from = (at - start) as usize;
            let to = ((end - start) as usize).min(chunk.len());
            let next = start + to as u64;
            Some((Ok(chunk.slice(from..to)), (m, ns, info, next, false)))
        })
    }

    /// Deletes a generation's manifest, then its chunks.
    pub(crate) async fn remove_generation(&self, ns: &Namespace, info: &ObjectInfo) {
        self.remove_generation_keeping(ns, info, None).await;
    }

    /// Deletes a generation's manifest, then its chunks but those `keep` (the version that
    /// replaces it) names too.
    pub(crate) async fn remove_generation_keeping(&self, ns: &Namespace, info: &ObjectInfo, keep: Option<&ObjectInfo>) {
        self.node.delete(&manifest_key(ns, &info.path, info.generation)).await;
        for i in 0..info.chunks() {
            if keep.is_some_and(|k| k.names_chunks_of(info.key_id_of(i))) {
                continue;
            }
            self.node.delete(&info.chunk_key(ns, i)).await;
        }
    }
}

mod catalog;
mod cluster;
mod deletes;
mod export;
mod exports;
mod failure;
mod hooks;
mod join;
mod manifest;
mod orphans;
mod staging;
mod superseded;
#[cfg(test)]
mod tests;
mod writer;

pub(crate) use exports::Exports;
pub use writer::ObjectWriter;
