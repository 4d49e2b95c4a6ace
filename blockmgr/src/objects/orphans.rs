//! Chunks no manifest names, swept across a cluster.
//!
//! A write-back chunk waits, pinned, for its object's export; a chunk of an upload that never
//! committed (its writer's node died mid-upload, or its commit failed with an unknown outcome
//! and no copy of its manifest landed) would wait for ever, counted against
//! `blob.max_unflushed`. A lone node removes such chunks at its start; in a cluster the
//! manifest naming a chunk lives on other nodes (its path's owners), so every member is
//! asked (`Peer/ChunksNamed`): a chunk that has waited longer than `cluster.orphan_after`,
//! that no manifest in any member's catalog names and no upload or join in progress (or
//! ended within two peer timeouts) anywhere is writing, in two rounds at least two peer
//! timeouts apart (the members are asked one after another: a commit landing between two
//! answers is seen by the next round), is removed here and on its other owners (removing only this
//! copy, an owner's resync would pull it back, pinned again, for ever). A round where a
//! member does not answer removes nothing.
//!
//! Known limit: a manifest held only by a node that is out of the member list for longer
//! than `orphan_after` (and whose commit's outcome was unknown) comes back naming chunks
//! that are gone; a read of that version then fails naming the chunk, never returns other
//! bytes.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use kvtier_tiers::{BlockKey, Namespace};
use parking_lot::Mutex;

use super::Objects;
use super::chunk_id;

/// Chunk ids of uploads and joins in progress on this node (a count per id: a join may hold
/// the same part's id as an upload does), those that ended lately, and the chunks a sweep
/// found unnamed once (since when).
#[derive(Debug, Default)]
pub(crate) struct Writing {
    live: Mutex<HashMap<(Namespace, u64), usize>>,
    ended: Mutex<HashMap<(Namespace, u64), Instant>>,
    suspects: Mutex<HashMap<BlockKey, Instant>>,
}

/// Holds chunk ids as being written until dropped.
#[derive(Debug)]
pub(crate) struct WritingGuard {
    catalog: std::sync::Weak<super::Catalog>,
    ids: Vec<(Namespace, u64)>,
}

impl Writing {
    /// Whether `id` is being written, or was less than `grace` ago (its commit may still be
    /// reaching its path's owners).
    fn contains(&self, ns: &Namespace, id: u64, grace: Duration) -> bool {
        let id = (ns.clone(), id);
        if self.live.lock().contains_key(&id) {
            return true;
        }
        let mut ended = self.ended.lock();
        ended.retain(|_, at| at.elapsed() < grace);
        ended.contains_key(&id)
    }

    /// Of `unnamed` (this round's), those a round at least `apart` earlier found unnamed
    /// too; the others are remembered for the next round.
    fn confirmed(&self, unnamed: &[BlockKey], apart: Duration) -> Vec<BlockKey> {
        let mut suspects = self.suspects.lock();
        let now: HashSet<&BlockKey> = unnamed.iter().collect();
        suspects.retain(|k, _| now.contains(k));
        let mut confirmed = Vec::new();
        for key in unnamed {
            match suspects.get(key) {
                Some(since) if since.elapsed() >= apart => confirmed.push(key.clone()),
                Some(_) => {}
                None => {
                    suspects.insert(key.clone(), Instant::now());
                }
            }
        }
        for key in &confirmed {
            suspects.remove(key);
        }
        confirmed
    }
}

impl Drop for WritingGuard {
    fn drop(&mut self) {
        let Some(catalog) = self.catalog.upgrade() else { return };
        let mut live = catalog.writing.live.lock();
        let mut ended = catalog.writing.ended.lock();
        for id in &self.ids {
            if let Some(n) = live.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    live.remove(id);
                    ended.insert(id.clone(), Instant::now());
                }
            }
        }
    }
}

impl Objects {
    /// Marks chunk `ids` of `ns` as being written (an upload, a join) until the guard drops:
    /// no sweep takes them meanwhile.
    pub(crate) fn writing(&self, ns: &Namespace, ids: impl IntoIterator<Item = u64>) -> WritingGuard {
        let ids: Vec<(Namespace, u64)> = ids.into_iter().map(|id| (ns.clone(), id)).collect();
        let mut writing = self.catalog.writing.live.lock();
        for id in &ids {
            *writing.entry(id.clone()).or_default() += 1;
        }
        WritingGuard { catalog: std::sync::Arc::downgrade(&self.catalog), ids }
    }

    /// Which of `keys` (chunks) a manifest this node holds names, or an upload or join in
    /// progress here (or ended within two peer timeouts) is writing (`Peer/ChunksNamed`).
    pub(crate) fn chunks_named_here(&self, keys: &[BlockKey]) -> Vec<BlockKey> {
        let grace = self.node.cluster().map_or(Duration::ZERO, |c| 2 * c.peer_timeout());
        let mut named: HashSet<(Namespace, u64)> = HashSet::new();
        for ((ns, _), info) in self.catalog.objects.read().iter() {
            named.extend(info.chunk_ids().into_iter().map(|id| (ns.clone(), id)));
        }
        keys.iter()
            .filter(|k| {
                chunk_id(k).is_some_and(|id| {
                    named.contains(&(k.namespace.clone(), id)) || self.catalog.writing.contains(&k.namespace, id, grace)
                })
            })
            .cloned()
            .collect()
    }

    /// Removes this node's write-back chunks that have waited longer than `orphan_after`
    /// and that no member names (see the module documentation); how many.
    pub(crate) async fn sweep_orphan_chunks(&self, orphan_after: std::time::Duration) -> usize {
        let Some(cluster) = self.node.cluster() else { return 0 };
        if orphan_after.is_zero() {
            return 0;
        }
        let waiting: Vec<BlockKey> =
            self.node.waiting_longer_than(orphan_after).into_iter().filter(super::is_chunk_key).collect();
        if waiting.is_empty() {
            return 0;
        }
        let named: HashSet<BlockKey> = self.chunks_named_here(&waiting).into_iter().collect();
        let waited = waiting.len();
        let mut candidates: Vec<BlockKey> = waiting.into_iter().filter(|k| !named.contains(k)).collect();
        let others: Vec<String> = cluster.view().addrs.keys().filter(|id| *id != cluster.local_id()).cloned().collect();
        for member in others {
            match cluster.chunks_named_on(&member, &candidates).await {
                Ok(named) => {
                    let named: HashSet<BlockKey> = named.into_iter().collect();
                    candidates.retain(|k| !named.contains(k));
                }
                Err(e) => {
                    tracing::info!(%member, error = %e, "orphan sweep skipped: a member did not answer");
                    return 0;
                }
            }
        }
        let unnamed = candidates.len();
        let candidates = self.catalog.writing.confirmed(&candidates, 2 * cluster.peer_timeout());
        tracing::debug!(waited, unnamed, confirmed = candidates.len(), "orphan sweep");
        for key in &candidates {
            self.node.delete(key).await;
        }
        if !candidates.is_empty() {
            self.node.metrics().orphan_chunks_removed.inc_by(candidates.len() as u64);
            tracing::info!(chunks = candidates.len(), "removed write-back chunks no member's manifest names");
        }
        candidates.len()
    }
}
