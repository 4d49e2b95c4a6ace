//! Deletes leave a marker. A delete commits a version of the path that says "deleted" (a
//! delete marker, as S3's versioned buckets keep one), through the same commit as a put: on
//! the path's primary under its lock, at the next generation, stored on the path's owners
//! with the write quorum (a delete short of it is undone, as a commit is), and exported,
//! which removes the object's file from Blob (retried like any export while Blob is down).
//!
//! Why a marker and not only the removal: a copy of the old manifest that the delete did
//! not reach (on a member away at the time, or on a node that held it without owning it
//! after the member list changed) otherwise came back through resync or handoff, and with
//! it the object: in listings, in an export that could never finish (its chunks were gone)
//! and in copies pinned as unflushed for ever. Members compare generations, and the
//! marker's is newer: such a copy is dropped where it lands, and the chunks the delete
//! retired are released wherever a copy still waits for a flush. Each owner keeps its
//! markers, as its other manifests, in its own segments (`Inner::keep_in_own_segments`):
//! an owner that knew a delete only in its cache forgot it with an eviction and a restart.
//!
//! Stats, reads and listings never show a marker; members exchange them. A marker is kept
//! for `cluster.delete_marker_ttl` (1 day), then removed on each member: a member away for
//! longer than that may bring a deleted object back, so come back from such an absence
//! with a wiped data dir. A node alone keeps one only until its export is done.

use std::time::{Duration, SystemTime};

use crate::NodeError;
use kvtier_tiers::Namespace;

use super::Objects;
use super::{CommitIf, ObjectInfo, manifest_key, now_unix, unix_ms};
use crate::Durability;

/// How often a node looks for delete markers past their time.
const EXPIRY_EVERY: Duration = Duration::from_secs(30);
/// How often it looks for manifests a version replaced that is settled by now (a
/// write-back copy stays pinned as unflushed until then: the fault run's settle waits on it).
const UPKEEP_EVERY: Duration = Duration::from_secs(2);

impl ObjectInfo {
    /// The delete marker of `path` (its generation is the primary's to assign).
    pub(crate) fn delete_marker(path: &str) -> ObjectInfo {
        ObjectInfo {
            path: path.to_string(),
            size: 0,
            generation: 0,
            chunk_size: 1,
            crc32c: 0,
            created_unix: now_unix(),
            id: rand::random(),
            chunk_crc32c: Vec::new(),
            runs: Vec::new(),
            deleted: true,
            retired: Vec::new(),
            attributes: Default::default(),
        }
    }
}

impl Objects {
    /// Deletes `path` on this node (its primary, or a node alone): commits its delete
    /// marker, unless the request is past its sender's deadline, or the live version does
    /// not meet `condition`. Whether there was an object to delete (that met it).
    pub(crate) async fn delete_object_here(
        &self,
        ns: &Namespace,
        path: &str,
        deadline_unix_ms: Option<u64>,
        condition: CommitIf,
    ) -> Result<bool, NodeError> {
        let durability = self.marker_durability(&manifest_key(ns, path, 0));
        let marker = ObjectInfo::delete_marker(path);
        let Some(marker) = self.commit_here(ns, marker, durability, condition, deadline_unix_ms).await? else {
            return Ok(false);
        };
        // A node alone keeps it only while it has a file to remove from Blob.
        if self.marker_expired(ns, &marker) {
            self.drop_marker(ns, &marker).await;
        }
        Ok(true)
    }

    /// Write-back where objects are exported (the marker's export removes the file), else
    /// on disk where there is one.
    fn marker_durability(&self, key: &kvtier_tiers::BlockKey) -> Durability {
        let candidates = [Durability::WriteBack, Durability::LocalDisk];
        candidates
            .into_iter()
            .find(|d| {
                (*d != Durability::WriteBack || self.exports().is_some()) && self.node.accepts_durability(key, *d)
            })
            .unwrap_or(Durability::Cache)
    }

    /// Whether `info`'s commit is over for good: older than the longest a commit can take to
    /// be undone (its copies' puts, the deletes and puts of the undo: four peer timeouts).
    /// Until then a version it replaced may come back, so nothing of that one is dropped
    /// on its account.
    pub(crate) fn settled(&self, info: &ObjectInfo) -> bool {
        self.settles_in(info).is_none()
    }

    /// How long until `info` is [settled](Objects::settled); `None` if it is.
    pub(crate) fn settles_in(&self, info: &ObjectInfo) -> Option<std::time::Duration> {
        let cluster = self.node.membership()?;
        let settles_at = info.generation.saturating_add((4 * cluster.peer_timeout()).as_millis() as u64);
        let now = unix_ms(SystemTime::now());
        (settles_at >= now).then(|| std::time::Duration::from_millis(settles_at - now + 1))
    }

    /// Whether `info` (of `ns`) is a delete marker past its time (`cluster.delete_marker_ttl`;
    /// a node alone needs none once it is settled) whose export is done.
    pub(crate) fn marker_expired(&self, ns: &Namespace, info: &ObjectInfo) -> bool {
        let past_ttl = self.node.membership().is_none()
            || info.generation.saturating_add(self.catalog.marker_ttl.as_millis() as u64) < unix_ms(SystemTime::now());
        info.deleted
            && self.settled(info)
            && past_ttl
            && !self.node.unflushed(&manifest_key(ns, &info.path, info.generation))
    }

    /// Starts the upkeep of versions: every [`UPKEEP_EVERY`], the manifests a now-settled
    /// version replaced are dropped; every [`EXPIRY_EVERY`], the delete markers past their
    /// time. It holds the manager weakly, so it ends once the manager is dropped or shuts
    /// down.
    pub(crate) fn spawn_version_upkeep(&self) {
        let (weak, tasks) = (self.downgrade(), self.node.tasks().clone());
        self.node.tasks().spawn(async move {
            let mut last_expiry = tokio::time::Instant::now();
            while tasks.pause(UPKEEP_EVERY).await {
                let Some(manager) = weak.upgrade() else { return };
                manager.drop_settled_superseded().await;
                if last_expiry.elapsed() >= EXPIRY_EVERY {
                    last_expiry = tokio::time::Instant::now();
                    manager.expire_delete_markers().await;
                }
            }
        });
    }

    /// Removes the delete markers past their time from the catalog and this node's tiers
    /// (each member its own; one whose export is not done yet stays). How many.
    pub(crate) async fn expire_delete_markers(&self) -> usize {
        let expired: Vec<(Namespace, ObjectInfo)> = {
            let objects = self.catalog.objects.read();
            objects
                .iter()
                .filter(|((ns, _), info)| self.marker_expired(ns, info))
                .map(|((ns, _), info)| (ns.clone(), info.clone()))
                .collect()
        };
        let mut removed = 0;
        for (ns, marker) in expired {
            removed += usize::from(self.drop_marker(&ns, &marker).await);
        }
        if removed > 0 {
            tracing::debug!(markers = removed, "objects: delete markers past their time removed");
        }
        removed
    }

    /// Removes `marker` from the catalog and this node's tiers, unless a newer version of
    /// its path came meanwhile: whether it did.
    pub(crate) async fn drop_marker(&self, ns: &Namespace, marker: &ObjectInfo) -> bool {
        let _one_at_a_time = self.catalog.locks.lock(&manifest_key(ns, &marker.path, 0)).await;
        let slot = (ns.clone(), marker.path.clone());
        {
            let mut objects = self.catalog.objects.write();
            if objects.get(&slot).is_none_or(|now| now.generation != marker.generation) {
                return false;
            }
            objects.remove(&slot);
        }
        tracing::info!(%ns, path = %marker.path, generation = marker.generation, "objects: a delete marker dropped");
        self.node.delete_here(&manifest_key(ns, &marker.path, marker.generation)).await;
        self.drop_superseded_of(ns, &marker.path).await;
        true
    }
}
