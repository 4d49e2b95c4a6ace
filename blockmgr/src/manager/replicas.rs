//! Copies on other nodes. With a cluster, a put stores the block here and sends it to the
//! key's other owners, acknowledging once the write quorum holds it (reads across the
//! cluster: cluster_reads.rs); a delete reaches every owner.
//!
//! Each copy's durability is the sender's decision: the primary owner takes the put's own
//! (so a write-back block is flushed to Blob by the primary alone: each byte once), another
//! owner keeps it on disk, and a node that owns no copy (the one a client happened to write
//! to, or one that read it) keeps an evictable cache copy.

use std::sync::Arc;

use crate::NodeError;
use futures::{StreamExt, stream::FuturesUnordered};
use kvtier_tiers::{Block, BlockKey, TierExt, TierKind};

use super::{Durability, GetOutcome, Inner, Manager, PutOutcome};

use crate::cluster::{Cluster, Plan};

/// Where a put's copies go, decided when it starts.
pub(crate) struct Route {
    cluster: Arc<Cluster>,
    plan: Plan,
    /// What the client asked for (the primary's copy).
    durability: Durability,
}

impl Inner {
    /// Copies of `key` and the write quorum, from its namespace's `[namespaces]` entry:
    /// 1 for blocks and 2 for named objects unless set.
    pub(super) fn replication(&self, key: &BlockKey) -> (usize, usize) {
        let ns = self.config.namespace(key.namespace.as_str());
        let replicas = ns.replicas.unwrap_or_else(|| self.role(key).replicas());
        (replicas, ns.write_quorum.unwrap_or(replicas).min(replicas))
    }

    pub(super) fn plan_in(&self, cluster: &Cluster, key: &BlockKey) -> Plan {
        let (replicas, quorum) = self.replication(key);
        cluster.plan(&crate::keys::placement_key(key), replicas, quorum)
    }

    /// The durability of an owner's copy fetched from a peer (a repair or a resync pull):
    /// write-back when the peer's copy is not flushed yet (and this node can flush), else on
    /// disk when there is one.
    pub(super) fn owner_copy(&self, unflushed: bool) -> Durability {
        match (unflushed && self.flusher.is_some(), self.ssd.is_some()) {
            (true, _) => Durability::WriteBack,
            (false, true) => Durability::LocalDisk,
            (false, false) => Durability::Cache,
        }
    }

    /// Whether this node flushes `key` to Blob: alone, or as its primary owner now. The
    /// other owners hold their write-back copies unflushed (never evicted) until the
    /// primary says it flushed them, and flush them themselves if they become primary.
    pub(super) fn flushes(&self, key: &BlockKey) -> bool {
        let Some(cluster) = &self.cluster else { return true };
        self.plan_in(cluster, key).owners.first().is_none_or(|p| p == cluster.local_id())
    }

    /// After a flush: tells the other owners of the write-back blocks among those flushed
    /// that Blob has them, so their copies become evictable (in the background; one that
    /// misses the news flushes its copy again if it becomes primary).
    pub(super) fn tell_owners_flushed(&self, flushed: &[Block]) {
        let write_back = flushed.iter().filter(|b| self.index.get(&b.key).is_some_and(|e| e.durable));
        self.tell_other_owners_flushed(write_back.map(|b| (&b.key, Some(b.crc32c))));
    }

    /// Tells each other owner of `keys`, in the background, that Blob has them, with the
    /// CRC-32C of the bytes it has when known (`Peer/Flushed`).
    fn tell_other_owners_flushed<'a>(&self, keys: impl Iterator<Item = (&'a BlockKey, Option<u32>)>) {
        let Some(cluster) = &self.cluster else { return };
        let mut by_owner: std::collections::HashMap<String, Vec<(BlockKey, Option<u32>)>> =
            std::collections::HashMap::new();
        for (key, crc32c) in keys {
            for owner in self.plan_in(cluster, key).owners.into_iter().filter(|o| o != cluster.local_id()) {
                by_owner.entry(owner).or_default().push((key.clone(), crc32c));
            }
        }
        for (owner, keys) in by_owner {
            let cluster = cluster.clone();
            self.tasks.spawn(async move {
                if let Err(e) = cluster.flushed_on(&owner, &keys).await {
                    tracing::debug!(%owner, error = %e, "telling an owner its copies are flushed failed");
                }
            });
        }
    }

    /// Another owner flushed these blocks (Blob has the bytes of the CRC-32C given, when
    /// given): this node's write-back copies of them need no flush any more (and may be
    /// evicted), but for a manifest, which goes into this node's own segments first (see
    /// [`Inner::keep_in_own_segments`]). A copy of other bytes is left alone.
    pub(crate) async fn flushed_elsewhere(&self, keys: &[(BlockKey, Option<u32>)]) {
        for (key, crc32c) in keys {
            let _guard = self.locks.lock(key).await;
            match self.index.get(key) {
                Some(e) if e.unflushed() && crc32c.is_none_or(|c| c == e.crc32c) => {
                    if !self.keep_in_own_segments(key) {
                        self.index.insert(key.clone(), crate::index::Entry { durable: false, ..e });
                    }
                }
                Some(_) => {}
                // The news overtook the copy (the primary flushed before this owner's copy
                // arrived): the copy, if of the same bytes, is released when it comes.
                None => {
                    if let Some(c) = crc32c {
                        self.flushed_ahead.insert(key.clone(), *c);
                    }
                }
            }
        }
    }
}

impl Manager {
    pub(crate) fn plan(&self, key: &BlockKey) -> Option<(&Arc<Cluster>, Plan)> {
        let cluster = self.cluster()?;
        Some((cluster, self.inner.plan_in(cluster, key)))
    }

    /// Write-back blocks here that Blob lacks.
    pub(crate) fn unflushed_keys(&self) -> Vec<BlockKey> {
        self.inner.index.unflushed_keys()
    }

    /// Whether this node flushes `key` itself (alone, or as its primary) and is not an
    /// object's chunk (which its object's export flushes): what it must not wait to be told.
    pub(crate) fn flushes_here(&self, key: &BlockKey) -> bool {
        self.inner.flushes(key) && !(self.inner.exports().is_some() && self.inner.role(key) == super::Role::Piece)
    }

    /// Whether this node's index holds `key` (in any tier).
    pub(crate) fn holds(&self, key: &BlockKey) -> bool {
        self.inner.index.get(key).is_some()
    }

    /// Whether `key` is only in this node's own Blob segments (no local copy).
    pub(crate) fn only_in_own_blob(&self, key: &BlockKey) -> bool {
        self.inner.index.get(key).is_some_and(|e| e.tiers == crate::index::TierSet::of(TierKind::Blob))
    }

    /// Whether this node's own Blob segments hold `key` (it flushed it, or found it there).
    pub(crate) fn in_own_blob(&self, key: &BlockKey) -> bool {
        self.inner.index.get(key).is_some_and(|e| e.tiers.has(TierKind::Blob))
    }

    /// Write-back blocks here that Blob lacks and that have waited longer than `age`.
    pub(crate) fn waiting_longer_than(&self, age: std::time::Duration) -> Vec<BlockKey> {
        self.inner.index.unflushed_longer_than(age)
    }

    /// Whether `key` is a write-back block here that Blob lacks.
    pub(crate) fn unflushed(&self, key: &BlockKey) -> bool {
        self.inner.index.is_unflushed(key)
    }

    /// Queues `key` (a manifest) for this node's own segments if it is an owner of it whose
    /// copy is neither a write-back one (that one goes there once the primary's export says
    /// it is done, see [`Inner::flushed_elsewhere`]) nor there already: a copy handed off or
    /// pulled when the member list changed, which was evictable and so could be lost with
    /// the only copies that knew a delete.
    pub(crate) fn keep_owned_manifest(&self, key: &BlockKey) {
        let owner = self.membership().is_some_and(|c| self.inner.plan_in(c, key).owns(c.local_id()));
        let copy = self.inner.index.get(key);
        if owner && copy.is_some_and(|e| !e.durable && !e.tiers.has(TierKind::Blob)) {
            self.inner.keep_in_own_segments(key);
        }
    }

    /// Another owner flushed these blocks (see [`Inner::flushed_elsewhere`]).
    pub(crate) async fn flushed_elsewhere(&self, keys: &[(BlockKey, Option<u32>)]) {
        self.inner.flushed_elsewhere(keys).await;
    }

    /// Queues the flush of the write-back blocks Blob lacks that this node is now the
    /// primary of (the primary that held them left): the flush takes over.
    pub(crate) fn take_over_flushes(&self) -> usize {
        if self.inner.flusher.is_none() {
            return 0;
        }
        let mine: Vec<BlockKey> =
            self.inner.index.unflushed_keys().into_iter().filter(|k| self.inner.flushes(k)).collect();
        let n = mine.len();
        for key in mine {
            self.inner.queue_flush(key, true);
        }
        n
    }

    /// Blob has these write-back blocks by another route (their object's file): no owner
    /// needs to flush them, here or elsewhere (told in the background, as after a flush).
    pub(crate) async fn released_everywhere(&self, keys: &[(BlockKey, Option<u32>)]) {
        self.inner.flushed_elsewhere(keys).await;
        self.inner.tell_other_owners_flushed(keys.iter().map(|(k, c)| (k, *c)));
    }

    /// Queues `key` for a segment of its own kind's flush (a manifest, once its object's file
    /// is in Blob), bypassing the export.
    pub(crate) fn queue_segment_flush(&self, key: BlockKey) {
        if let Some(flusher) = &self.inner.flusher {
            flusher.enqueue(key);
        }
    }

    /// Named objects' files in Blob, when there is a Blob tier to flush to.
    /// Whether a put of `key` with `durability` would be taken (the tiers it needs exist).
    pub(crate) fn accepts_durability(&self, key: &BlockKey, durability: crate::Durability) -> bool {
        self.inner.check_durability(key, durability).is_ok()
    }

    /// A handle that does not keep the manager alive (for its background tasks).
    pub(crate) fn downgrade(&self) -> WeakManager {
        WeakManager { inner: Arc::downgrade(&self.inner), cluster: self.cluster.clone(), here_only: self.here_only }
    }
}

/// A [`Manager`] held weakly.
pub(crate) struct WeakManager {
    inner: std::sync::Weak<Inner>,
    cluster: Option<Arc<Cluster>>,
    here_only: bool,
}

impl WeakManager {
    /// The manager, unless it was dropped.
    pub(crate) fn upgrade(&self) -> Option<Manager> {
        Some(Manager { inner: self.inner.upgrade()?, cluster: self.cluster.clone(), here_only: self.here_only })
    }
}

impl Manager {
    /// The durability of this node's own copy, and where the others go.
    pub(super) fn route(&self, key: &BlockKey, durability: Durability) -> (Durability, Option<Box<Route>>) {
        let Some((cluster, plan)) = self.plan(key) else { return (durability, None) };
        let local = self.copy_durability(&plan, cluster.local_id(), durability);
        (local, Some(Box::new(Route { cluster: cluster.clone(), plan, durability })))
    }

    /// What `node`'s copy keeps of a put asked with `durability`: an owner the same (a
    /// write-back copy is flushed by the primary alone, see [`Inner::flushes`]), a node
    /// that owns no copy an evictable one.
    fn copy_durability(&self, plan: &Plan, node: &str, durability: Durability) -> Durability {
        if plan.owns(node) { durability } else { Durability::Cache }
    }

    /// Stores `block` here and on its other owners.
    pub async fn put(&self, block: Block, durability: Durability) -> Result<PutOutcome, NodeError> {
        self.put_reporting(block, durability).await.0
    }

    /// [`Manager::put`], and the other owners that may hold a copy (they stored it, or did
    /// not answer): what undoing it must reach.
    pub(crate) async fn put_reporting(
        &self,
        block: Block,
        durability: Durability,
    ) -> (Result<PutOutcome, NodeError>, Vec<String>) {
        let (local, route) = self.route(&block.key, durability);
        let here = self.put_here(block.clone(), local).await;
        if here.is_ok() {
            self.stored(&block.key).await;
        }
        match route {
            None => (here, Vec::new()),
            Some(route) => self.replicate_reporting(route, Some(block), here).await,
        }
    }

    /// The bytes of a block just stored here, to send to its other owners.
    pub(super) async fn copy_for_peers(&self, key: &BlockKey) -> Option<Block> {
        if let Ok(Some(block)) = self.inner.cpu.get(key).await {
            return Some(block);
        }
        match self.get_here(key).await {
            GetOutcome::Hit { block, .. } => Some(block),
            GetOutcome::Miss { .. } => None,
        }
    }

    /// Sends the block to the owners other than this node and waits for the quorum, not for
    /// every owner: once the write quorum holds it the put is acknowledged and the copies
    /// still in flight finish in the background (a slow or frozen owner costs the put
    /// nothing while the quorum stands). `here` is this node's own outcome; `block` is
    /// `None` when it is not in hand (this node failed to store it, or it left before it
    /// could be read back).
    pub(super) async fn replicate(
        &self,
        route: Box<Route>,
        block: Option<Block>,
        here: Result<PutOutcome, NodeError>,
    ) -> Result<PutOutcome, NodeError> {
        self.replicate_reporting(route, block, here).await.0
    }

    /// [`Manager::replicate`], and the other owners that may hold a copy.
    async fn replicate_reporting(
        &self,
        route: Box<Route>,
        block: Option<Block>,
        here: Result<PutOutcome, NodeError>,
    ) -> (Result<PutOutcome, NodeError>, Vec<String>) {
        let Route { cluster, plan, durability } = *route;
        let local = cluster.local_id();
        let key = match (&block, &here) {
            (Some(b), _) => b.key.to_string(),
            (None, Err(_)) => return (here, Vec::new()),
            (None, Ok(_)) => "a block".to_string(),
        };
        let mut failures = Vec::new();
        let mut stored = 0;
        let mut holding = Vec::new();
        match (&here, plan.owns(local)) {
            (Ok(_), true) => stored += 1,
            (Err(e), true) => failures.push(format!("{local}: {e}")),
            _ => {}
        }
        if let Some(block) = &block {
            // The other owners; those still unanswered when the quorum holds may yet hold a copy.
            let mut pending: Vec<String> = plan.owners.iter().filter(|id| *id != local).cloned().collect();
            let mut sends: FuturesUnordered<_> = pending
                .iter()
                .map(|id| {
                    let (cluster, block, id) = (cluster.clone(), block.clone(), id.clone());
                    let copy = self.copy_durability(&plan, &id, durability);
                    async move {
                        let answer = cluster.put_on(&id, &block, copy).await;
                        (id, answer)
                    }
                })
                .collect();
            while stored < plan.quorum {
                let Some((id, answer)) = sends.next().await else { break };
                pending.retain(|p| *p != id);
                match answer {
                    Ok(()) => {
                        stored += 1;
                        holding.push(id);
                    }
                    Err(e) => {
                        if e.outcome() == crate::wire::Outcome::Unknown {
                            holding.push(id);
                        }
                        failures.push(e.to_string());
                    }
                }
            }
            if !sends.is_empty() {
                // The quorum holds it: the rest land (or fail, logged) after the answer. An
                // owner still in flight may come to hold a copy: an undo must reach it.
                holding.extend(pending);
                // Counted as background work: a graceful shutdown (`settle`) waits for them.
                let (key, inner) = (key.clone(), self.inner.clone());
                inner.background.start();
                // A delete of the key on this node waits for these copies (in_flight.rs).
                let in_flight = inner.copies_in_flight.begin(&block.key);
                self.inner.tasks.spawn(async move {
                    while let Some((id, answer)) = sends.next().await {
                        if let Err(e) = answer {
                            tracing::warn!(%key, member = %id, error = %e, "a copy after the quorum failed; resync repairs it");
                        }
                    }
                    drop(in_flight);
                    inner.background.finish();
                });
            }
        } else {
            failures.push(format!("{local}: the block left this node before it could be sent on"));
        }
        if stored < plan.quorum {
            let failures = failures.join("; ");
            return (Err(NodeError::Quorum { key, stored, wanted: plan.quorum, failures }), holding);
        }
        if !failures.is_empty() {
            tracing::warn!(%key, stored, wanted = plan.owners.len(), failures = %failures.join("; "), "a copy failed; the quorum holds the block");
        }
        // A node that owns no copy may have had no room for its cache copy: fine.
        (here.or(Ok(PutOutcome { status: kvtier_tiers::PutStatus::Stored, tier: TierKind::Cpu })), holding)
    }

    /// The other nodes, with a cluster, for acting on them (placing, copying, forwarding):
    /// none for a [`Manager::here_only`] handle.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref().filter(|_| !self.here_only)
    }

    /// The cluster this node is a member of, for judging as a member does (whether a
    /// version is settled, whether a delete marker is still needed, whether this node owns a
    /// key), also on a [`Manager::here_only`] handle: one serving a member's request judged
    /// as a node alone dropped the delete markers members handed it at once (they were
    /// "settled" and past their time) and kept no handed-off manifest in its own segments.
    pub(crate) fn membership(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// This manager acting on this node alone: what a member's request is served by (a copy
    /// is never forwarded again).
    pub fn here_only(&self) -> Manager {
        Manager { here_only: true, ..self.clone() }
    }
}
