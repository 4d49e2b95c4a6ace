//! Copies on other nodes. With a cluster, a put stores the block here and sends it to the
//! key's other owners, acknowledging once the write quorum holds it; a get that misses here
//! asks the owners and keeps what it finds; a delete reaches every owner.
//!
//! Each copy's durability is the sender's decision: the primary owner takes the put's own
//! (so a write-back block is flushed to Blob by the primary alone: each byte once), another
//! owner keeps it on disk, and a node that owns no copy (the one a client happened to write
//! to, or one that read it) keeps an evictable cache copy.

use std::sync::Arc;

use futures::future::join_all;
use kvtier_tiers::{Block, BlockKey, Error as TierError, TierExt, TierKind};

use super::{Durability, GetOutcome, Inner, Manager, MissReason, PutOutcome};
use crate::{
    client::MemberRead,
    cluster::{Cluster, Plan, ReadRoute},
};

/// How this node answers a member's read of a key the member lacks.
pub(crate) enum MemberAnswer {
    /// The outcome here; `true`: the reader keeps it as a read replica.
    Here(GetOutcome, bool),
    /// Read it from these read replicas instead; `true`: the reader is one now (keeps it).
    Elsewhere(Vec<String>, bool),
}

/// The owners other than `local`, starting at one that depends on `local` and `key`:
/// readers spread over the copies instead of all asking the primary first.
fn spread<'a>(owners: &'a [String], local: &str, key: &BlockKey) -> impl Iterator<Item = &'a str> {
    let others: Vec<&str> = owners.iter().map(String::as_str).filter(|o| *o != local).collect();
    let n = others.len();
    let h = xxhash_rust::xxh3::xxh3_64(&[local.as_bytes(), &[0], key.key.as_bytes()].concat());
    let start = if n == 0 { 0 } else { (h % n as u64) as usize };
    others.into_iter().cycle().skip(start).take(n)
}

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
        let replicas = ns.replicas.unwrap_or(if crate::objects::is_object_key(key) { 2 } else { 1 });
        (replicas, ns.write_quorum.unwrap_or(replicas).min(replicas))
    }

    fn plan_in(&self, cluster: &Cluster, key: &BlockKey) -> Plan {
        let (replicas, quorum) = self.replication(key);
        cluster.plan(&crate::objects::placement_key(key), replicas, quorum)
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
            tokio::spawn(async move {
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
        self.inner.flushes(key) && !(self.inner.exports.is_some() && crate::objects::is_chunk_key(key))
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

    pub(crate) fn exports(&self) -> Option<&Arc<crate::objects::Exports>> {
        self.inner.exports.as_ref()
    }

    /// A handle that does not keep the manager alive (for its background tasks).
    pub(crate) fn downgrade(&self) -> WeakManager {
        WeakManager {
            inner: Arc::downgrade(&self.inner),
            catalog: Arc::downgrade(&self.catalog),
            cluster: self.cluster.clone(),
            here_only: self.here_only,
        }
    }
}

/// A [`Manager`] held weakly.
pub(crate) struct WeakManager {
    inner: std::sync::Weak<Inner>,
    catalog: std::sync::Weak<crate::objects::Catalog>,
    cluster: Option<Arc<Cluster>>,
    here_only: bool,
}

impl WeakManager {
    /// The manager, unless it was dropped.
    pub(crate) fn upgrade(&self) -> Option<Manager> {
        Some(Manager {
            inner: self.inner.upgrade()?,
            catalog: self.catalog.upgrade()?,
            cluster: self.cluster.clone(),
            here_only: self.here_only,
        })
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
    pub async fn put(&self, block: Block, durability: Durability) -> Result<PutOutcome, TierError> {
        self.put_reporting(block, durability).await.0
    }

    /// [`Manager::put`], and the other owners that may hold a copy (they stored it, or did
    /// not answer): what undoing it must reach.
    pub(crate) async fn put_reporting(
        &self,
        block: Block,
        durability: Durability,
    ) -> (Result<PutOutcome, TierError>, Vec<String>) {
        let (local, route) = self.route(&block.key, durability);
        let here = self.put_here(block.clone(), local).await;
        if here.is_ok() && crate::objects::is_manifest_key(&block.key) {
            self.learn_manifest(&block.key).await;
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

    /// Sends the block to the owners other than this node and waits for the quorum. `here`
    /// is this node's own outcome; `block` is `None` when it is not in hand (this node
    /// failed to store it, or it left before it could be read back).
    pub(super) async fn replicate(
        &self,
        route: Box<Route>,
        block: Option<Block>,
        here: Result<PutOutcome, TierError>,
    ) -> Result<PutOutcome, TierError> {
        self.replicate_reporting(route, block, here).await.0
    }

    /// [`Manager::replicate`], and the other owners that may hold a copy.
    async fn replicate_reporting(
        &self,
        route: Box<Route>,
        block: Option<Block>,
        here: Result<PutOutcome, TierError>,
    ) -> (Result<PutOutcome, TierError>, Vec<String>) {
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
        if let Some(block) = &block {
            let others: Vec<&String> = plan.owners.iter().filter(|id| *id != local).collect();
            let sends = others.iter().map(|id| {
                let copy = self.copy_durability(&plan, id, durability);
                cluster.put_on(id, block, copy)
            });
            for (id, answer) in others.iter().zip(join_all(sends).await) {
                match answer {
                    Ok(()) => {
                        stored += 1;
                        holding.push(id.to_string());
                    }
                    Err((e, outcome)) => {
                        failures.push(e);
                        if outcome == crate::wire::Outcome::Unknown {
                            holding.push(id.to_string());
                        }
                    }
                }
            }
        } else {
            failures.push(format!("{local}: the block left this node before it could be sent on"));
        }
        match (&here, plan.owns(local)) {
            (Ok(_), true) => stored += 1,
            (Err(e), true) => failures.push(format!("{local}: {e}")),
            _ => {}
        }
        if stored < plan.quorum {
            let failures = failures.join("; ");
            return (Err(TierError::Quorum { key, stored, wanted: plan.quorum, failures }), holding);
        }
        if !failures.is_empty() {
            tracing::warn!(%key, stored, wanted = plan.owners.len(), failures = %failures.join("; "), "a copy failed; the quorum holds the block");
        }
        // A node that owns no copy may have had no room for its cache copy: fine.
        (here.or(Ok(PutOutcome { status: kvtier_tiers::PutStatus::Stored, tier: TierKind::Cpu })), holding)
    }

    /// Reads `key`: from this node's tiers, else from its owners (the other owners in an
    /// order that differs by reader and key, so reads spread over the copies), or from the
    /// read replicas an owner names. An owner that lacked its copy keeps what it reads; any
    /// other node keeps it only when the owner says the key is popular (a read replica).
    pub async fn get(&self, key: &BlockKey) -> GetOutcome {
        let outcome = self.get_here(key).await;
        let Some((cluster, plan)) = self.plan(key) else { return outcome };
        if !matches!(outcome, GetOutcome::Miss { reason: MissReason::NotFound, .. }) {
            return outcome;
        }
        for owner in spread(&plan.owners, cluster.local_id(), key) {
            if let Some(hit) = self.read_through_owner(cluster, &plan, owner, key).await {
                return hit;
            }
        }
        outcome
    }

    /// Reads `key` from `owner`, or from the read replicas it names (and from `owner` again,
    /// telling it which of them lacked the key): the hit, kept here as the owner says.
    async fn read_through_owner(
        &self,
        cluster: &Cluster,
        plan: &Plan,
        owner: &str,
        key: &BlockKey,
    ) -> Option<GetOutcome> {
        let mut tried: Vec<String> = Vec::new();
        loop {
            match cluster.read_from(owner, key, &tried).await {
                Ok(MemberRead::Hit { data, crc32c, tier, keep }) => {
                    let block = Block::with_crc32c(key.clone(), data, crc32c);
                    self.keep_read(plan, &block, keep).await;
                    return Some(GetOutcome::Hit { block, tier });
                }
                Ok(MemberRead::Elsewhere { holders, keep }) if tried.is_empty() => {
                    for holder in holders {
                        match cluster.read_from_replica(&holder, key).await {
                            Ok(MemberRead::Hit { data, crc32c, tier, .. }) => {
                                let block = Block::with_crc32c(key.clone(), data, crc32c);
                                self.keep_read(plan, &block, keep).await;
                                return Some(GetOutcome::Hit { block, tier });
                            }
                            Ok(_) => {}
                            Err(e) => tracing::debug!(%key, %holder, error = %e, "a read replica could not be read"),
                        }
                        tried.push(holder);
                    }
                }
                Ok(_) => return None,
                Err(e) => {
                    tracing::debug!(%key, %owner, error = %e, "an owner could not be read");
                    return None;
                }
            }
        }
    }

    /// Keeps a copy of `block` read from another node: an owner's own (a repair), or a read
    /// replica when `popular`; otherwise nothing.
    async fn keep_read(&self, plan: &Plan, block: &Block, popular: bool) {
        let owner = self.cluster().is_some_and(|c| plan.owns(c.local_id()));
        let durability = match (owner, popular) {
            (true, _) => self.inner.owner_copy(false),
            (false, true) => Durability::Cache,
            (false, false) => return,
        };
        match self.put_here(block.clone(), durability).await {
            Ok(_) if !owner => self.metrics().read_replicas_kept.inc(),
            Ok(_) => {}
            Err(e) => tracing::debug!(key = %block.key, error = %e, "keeping a copy read from a peer failed"),
        }
    }

    /// Answers member `reader`'s read of `key`, which it lacks (`tried`: read replicas it
    /// was sent to that lacked it too). An owner counts the read, and may tell the reader
    /// to keep its copy as a read replica or send it to one (see cluster/read_replicas.rs);
    /// any other node (a read replica) answers what it holds.
    pub(crate) async fn answer_member_read(&self, key: &BlockKey, reader: &str, tried: &[String]) -> MemberAnswer {
        let Some(cluster) = self.inner.cluster.clone() else {
            return MemberAnswer::Here(self.get_here(key).await, false);
        };
        let plan = self.inner.plan_in(&cluster, key);
        let answered = |outcome: &GetOutcome, by: &str| {
            if matches!(outcome, GetOutcome::Hit { .. }) {
                self.metrics().peer_reads.with_label_values(&[by]).inc();
            }
        };
        if !plan.owns(cluster.local_id()) {
            let outcome = self.get_here(key).await;
            answered(&outcome, "replica");
            return MemberAnswer::Here(outcome, false);
        }
        match cluster.route_read(key, &plan, reader, tried, true) {
            ReadRoute::Elsewhere { holders, keep } => {
                self.metrics().peer_reads.with_label_values(&["redirect"]).inc();
                MemberAnswer::Elsewhere(holders, keep)
            }
            ReadRoute::Here { keep } => {
                let outcome = self.get_here(key).await;
                answered(&outcome, "owner");
                let keep = keep && matches!(outcome, GetOutcome::Hit { .. }) && cluster.reads.kept(key, reader);
                MemberAnswer::Here(outcome, keep)
            }
        }
    }

    /// Whether member `reader`, asking this node (the primary) for a chunk read from Blob,
    /// keeps it as a read replica; counted as a read of it.
    pub(crate) fn keeps_fetched(&self, key: &BlockKey, reader: &str) -> bool {
        let Some(cluster) = &self.inner.cluster else { return false };
        let route = cluster.route_read(key, &self.inner.plan_in(cluster, key), reader, &[], false);
        route == ReadRoute::Here { keep: true } && cluster.reads.kept(key, reader)
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
