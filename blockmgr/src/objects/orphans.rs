//! Chunks no manifest names, swept across a cluster.
//!
//! A write-back chunk waits, pinned, for its object's export; a chunk of an upload that never
//! committed (its writer's node died mid-upload, or its commit failed with an unknown outcome
//! and no copy of its manifest landed) would wait for ever, counted against
//! `blob.max_unflushed`. A lone node removes such chunks at its start; in a cluster the
//! manifest naming a chunk lives on other nodes (its path's owners), so every member is
//! asked (`Peer/ChunksNamed`): a chunk that has waited longer than `cluster.orphan_after`,
//! that no manifest of any member names (its catalog, or a version a learned manifest
//! replaced) and no upload or join in progress anywhere is writing, is removed here and on
//! its other owners (removing only this copy, an owner's resync would pull it back, pinned
//! again, for ever). A round where a member does not answer removes nothing.
//!
//! Known limit: a manifest held only by a node that is out of the member list for longer
//! than `orphan_after` (and whose commit's outcome was unknown) comes back naming chunks
//! that are gone; a read of that version then fails naming the chunk, never returns other
//! bytes.

use std::collections::{HashMap, HashSet};

use kvtier_tiers::{BlockKey, Namespace};
use parking_lot::Mutex;

use super::chunk_id;
use crate::Manager;

/// Chunk ids of uploads and joins in progress on this node (a count per id: a join may hold
/// the same part's id as an upload does).
#[derive(Debug, Default)]
pub(crate) struct Writing(Mutex<HashMap<(Namespace, u64), usize>>);

/// Holds chunk ids as being written until dropped.
#[derive(Debug)]
pub(crate) struct WritingGuard {
    catalog: std::sync::Weak<super::Catalog>,
    ids: Vec<(Namespace, u64)>,
}

impl Writing {
    fn contains(&self, ns: &Namespace, id: u64) -> bool {
        self.0.lock().contains_key(&(ns.clone(), id))
    }
}

impl Drop for WritingGuard {
    fn drop(&mut self) {
        let Some(catalog) = self.catalog.upgrade() else { return };
        let mut writing = catalog.writing.0.lock();
        for id in &self.ids {
            if let Some(n) = writing.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    writing.remove(id);
                }
            }
        }
    }
}

impl Manager {
    /// Marks chunk `ids` of `ns` as being written (an upload, a join) until the guard drops:
    /// no sweep takes them meanwhile.
    pub(crate) fn writing(&self, ns: &Namespace, ids: impl IntoIterator<Item = u64>) -> WritingGuard {
        let ids: Vec<(Namespace, u64)> = ids.into_iter().map(|id| (ns.clone(), id)).collect();
        let mut writing = self.catalog.writing.0.lock();
        for id in &ids {
            *writing.entry(id.clone()).or_default() += 1;
        }
        WritingGuard { catalog: std::sync::Arc::downgrade(&self.catalog), ids }
    }

    /// Which of `keys` (chunks) a manifest this node holds names, or an upload or join in
    /// progress here is writing (`Peer/ChunksNamed`).
    pub(crate) fn chunks_named_here(&self, keys: &[BlockKey]) -> Vec<BlockKey> {
        let mut named: HashSet<(Namespace, u64)> = HashSet::new();
        for catalog in [&self.catalog.objects, &self.catalog.replaced] {
            for ((ns, _), info) in catalog.read().iter() {
                named.extend(info.chunk_ids().into_iter().map(|id| (ns.clone(), id)));
            }
        }
        keys.iter()
            .filter(|k| {
                chunk_id(k).is_some_and(|id| {
                    named.contains(&(k.namespace.clone(), id)) || self.catalog.writing.contains(&k.namespace, id)
                })
            })
            .cloned()
            .collect()
    }

    /// Removes this node's write-back chunks that have waited longer than `orphan_after`
    /// and that no member names (see the module documentation); how many.
    pub(crate) async fn sweep_orphan_chunks(&self, orphan_after: std::time::Duration) -> usize {
        let Some(cluster) = self.cluster() else { return 0 };
        if orphan_after.is_zero() {
            return 0;
        }
        let waiting: Vec<BlockKey> =
            self.waiting_longer_than(orphan_after).into_iter().filter(super::is_chunk_key).collect();
        if waiting.is_empty() {
            return 0;
        }
        let named: HashSet<BlockKey> = self.chunks_named_here(&waiting).into_iter().collect();
        let mut candidates: Vec<BlockKey> = waiting.into_iter().filter(|k| !named.contains(k)).collect();
        let others: Vec<String> = cluster.view().addrs.keys().filter(|id| *id != cluster.local_id()).cloned().collect();
        for member in others {
            if candidates.is_empty() {
                return 0;
            }
            match cluster.chunks_named_on(&member, &candidates).await {
                Ok(named) => {
                    let named: HashSet<BlockKey> = named.into_iter().collect();
                    candidates.retain(|k| !named.contains(k));
                }
                Err(e) => {
                    tracing::debug!(%member, error = %e, "orphan sweep skipped: a member did not answer");
                    return 0;
                }
            }
        }
        for key in &candidates {
            self.delete(key).await;
        }
        if !candidates.is_empty() {
            self.metrics().orphan_chunks_removed.inc_by(candidates.len() as u64);
            tracing::info!(chunks = candidates.len(), "removed write-back chunks no member's manifest names");
        }
        candidates.len()
    }
}
