//! Resync: a node pulls from its peers the blocks it owns and lacks. It runs when the node
//! starts, when it comes back after being out of the member list, and every
//! `cluster.resync_interval`; at every other change of the member list the blocks whose
//! owners changed are handed to their new owners instead (handoff.rs), so a change costs
//! requests in proportion to what moved, not to the square of the members:
//! - a node that was away pulls the writes it missed from the members that own them with
//!   it (and the members that held its keys meanwhile hand them back);
//! - after a member leaves for good, the surviving owner of each of its keys hands it to
//!   the key's new owner, so every key is back to R copies.
//!
//! Comparing is cheap when nothing differs: for a pair of members, each side hashes the keys
//! it holds that both own into [`BUCKETS`] buckets (count and XOR of key hashes per bucket:
//! the same set on both sides when they are in sync); only the buckets that differ are
//! listed key by key, and only the keys missing here are read.

use std::{sync::Arc, time::Duration};

use kvtier_tiers::{BlockKey, TierKind};
use xxhash_rust::xxh3::xxh3_64;

use super::Manager;
use crate::cluster::{BUCKETS, Cluster, Digest, View};

/// How soon a handoff that failed (an owner unreachable) is tried again.
const HANDOFF_RETRY: Duration = Duration::from_secs(5);

/// What one resync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResyncReport {
    /// Members compared with.
    pub peers: usize,
    /// Buckets that differed, over all peers.
    pub buckets: usize,
    /// Blocks pulled.
    pub blocks: u64,
    /// Their bytes.
    pub bytes: u64,
    /// What failed (a peer unreachable, a block unreadable), by peer.
    pub failures: Vec<String>,
}

/// The bucket and hash of `key` (namespace and key bytes, so equal keys of two namespaces
/// differ).
fn bucket_and_hash(key: &BlockKey) -> (usize, u64) {
    let h = xxh3_64(&[key.namespace.as_str().as_bytes(), &[0], key.key.as_bytes()].concat());
    ((h % BUCKETS as u64) as usize, h)
}

/// The keys a node holds, each with its bucket, hash and owners, as placed by one member
/// list over one set of keys. After a change of the member list every member asks every
/// other for digests at once; this is placed once and read by all of them (placing a key
/// costs a hash per member: at 1000 members, placing every key again for each of 999 asks
/// was most of a resync's work).
#[derive(Debug)]
pub(crate) struct Ownership {
    /// The member list the owners come from.
    pub(super) view: Arc<View>,
    /// The index key-set version it was computed at.
    key_set: u64,
    pub(super) keys: Vec<(BlockKey, usize, u64, Vec<String>)>,
}

impl Manager {
    /// Whether member `node` is among `key`'s owners.
    fn owned_by(&self, key: &BlockKey, node: &str) -> bool {
        self.plan(key).is_some_and(|(_, plan)| plan.owns(node))
    }

    /// The keys held here with their owners, for the current member list and keys (placed
    /// over one snapshot of the member list, which carries its own epoch).
    pub(super) fn ownership(&self) -> Arc<Ownership> {
        let view = self.cluster().map(|c| c.view()).unwrap_or_default();
        let key_set = self.inner.index.key_set_version();
        let mut cached = self.inner.ownership.lock();
        if let Some(o) = cached.as_ref().filter(|o| o.view.epoch == view.epoch && o.key_set == key_set) {
            return o.clone();
        }
        let keys = self
            .inner
            .index
            .keys_where(|_| true)
            .into_iter()
            .map(|key| {
                let (bucket, hash) = bucket_and_hash(&key);
                let (replicas, _) = self.inner.replication(&key);
                let owners = view.placement.owners(&crate::keys::placement_key(&key), replicas);
                let owners = owners.into_iter().map(String::from).collect();
                (key, bucket, hash, owners)
            })
            .collect();
        let fresh = Arc::new(Ownership { view, key_set, keys });
        *cached = Some(fresh.clone());
        fresh
    }

    /// Whether `owners` holds both `node` and `me`.
    fn co_owned(owners: &[String], node: &str, me: &str) -> bool {
        owners.iter().any(|o| o == node) && owners.iter().any(|o| o == me)
    }

    /// Digests of the keys this node holds that `node` and this node both own, per bucket.
    pub(crate) fn owned_digests(&self, node: &str) -> Vec<Digest> {
        let me = self.local_id();
        let mut digests = vec![Digest::default(); BUCKETS];
        for (_, bucket, hash, owners) in &self.ownership().keys {
            if Self::co_owned(owners, node, &me) {
                digests[*bucket].count += 1;
                digests[*bucket].xor ^= hash;
            }
        }
        digests
    }

    /// The keys this node holds that `node` and this node both own, in `bucket`.
    pub(crate) fn owned_keys(&self, node: &str, bucket: usize) -> Vec<BlockKey> {
        let (me, ownership) = (self.local_id(), self.ownership());
        let owned = ownership.keys.iter().filter(|(_, b, _, owners)| *b == bucket && Self::co_owned(owners, node, &me));
        owned.map(|(key, ..)| key.clone()).collect()
    }

    /// The keys this node keeps on disk or as write-back that `node` owns and this node
    /// does not (`Peer/OwnedKeys` with `held_not_owned`), and the delete markers it keeps
    /// only in its own segments: an owner of a delete that restarted after the member list
    /// moved on hands nothing off (its first view is the new one), and with its marker
    /// evicted from disk no other route told the new owners of the delete.
    pub(crate) fn held_for(&self, node: &str) -> Vec<BlockKey> {
        let (me, ownership) = (self.local_id(), self.ownership());
        let markers = self.inner.hooks.as_ref().map(|hooks| hooks.kept_in_blob()).unwrap_or_default();
        let held = ownership.keys.iter().filter(|(key, _, _, owners)| {
            owners.iter().any(|o| o == node)
                && !owners.contains(&me)
                && self.inner.index.get(key).is_some_and(|e| {
                    e.durable || e.tiers.has(TierKind::Ssd) || (e.tiers.has(TierKind::Blob) && markers.contains(key))
                })
        });
        held.map(|(key, ..)| key.clone()).collect()
    }

    /// This node's id in its cluster ("" alone).
    fn local_id(&self) -> String {
        self.cluster().map(|c| c.local_id().to_string()).unwrap_or_default()
    }

    /// Which of `keys` this node owns and lacks (`Peer/Offer`; `true`: a write-back block
    /// Blob lacks).
    pub(crate) fn wanted(&self, keys: &[(BlockKey, bool)]) -> Vec<BlockKey> {
        let Some(cluster) = self.cluster() else { return Vec::new() };
        keys.iter()
            .filter(|(k, unflushed)| self.lacks(k, *unflushed) && self.owned_by(k, cluster.local_id()))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Whether an owner's copy of `key` would be more than this node holds: none, or only
    /// a cache copy (in memory, not write-back), or a copy not marked write-back where the
    /// other side's is (`unflushed`) and Blob lacks it. A put of it makes the copy here that
    /// (see `Inner::existing`).
    fn lacks(&self, key: &BlockKey, unflushed: bool) -> bool {
        match self.inner.index.get(key) {
            None => true,
            Some(e) => {
                (!e.durable && !e.tiers.has(TierKind::Ssd)) || (unflushed && !e.durable && !e.tiers.has(TierKind::Blob))
            }
        }
    }

    /// Pulls from every other member the blocks this node owns and lacks.
    pub async fn resync(&self) -> ResyncReport {
        let Some(cluster) = self.cluster().cloned() else { return ResyncReport::default() };
        let me = cluster.local_id().to_string();
        let peers: Vec<String> = cluster.view().addrs.keys().filter(|id| **id != me).cloned().collect();
        let metrics = self.metrics().clone();
        let mut report = ResyncReport { peers: peers.len(), ..Default::default() };
        let bar = metrics.progress().start("resync", 0);
        for peer in &peers {
            let listed = self.listed_by(&cluster, peer, &mut report).await;
            let missing: Vec<(BlockKey, bool)> = listed
                .into_iter()
                .filter(|(k, unflushed)| self.lacks(k, *unflushed) && self.owned_by(k, &me))
                .collect();
            bar.grow(missing.len() as u64);
            bar.note(format!("from {peer}"));
            for (key, unflushed) in missing {
                bar.advance(1);
                match self.pull(&cluster, peer, &key, unflushed).await {
                    Ok(Some(len)) => {
                        report.blocks += 1;
                        report.bytes += len;
                        metrics.resync_blocks.inc();
                        metrics.resync_bytes.inc_by(len);
                    }
                    Ok(None) => {} // gone meanwhile (deleted)
                    Err(e) => report.failures.push(e),
                }
            }
        }
        drop(bar);
        metrics.resync_runs.inc();
        if !report.failures.is_empty() {
            metrics.resync_failures.inc_by(report.failures.len() as u64);
        }
        if report.blocks > 0 || !report.failures.is_empty() {
            tracing::info!(
                peers = report.peers,
                buckets = report.buckets,
                blocks = report.blocks,
                bytes = report.bytes,
                failures = %report.failures.join("; "),
                "resync: pulled the blocks this node owns and lacked"
            );
        }
        report
    }

    /// The keys `peer` holds that this node owns and may lack: those of the buckets whose
    /// digests of the keys both own differ, and those `peer` keeps without owning them (it
    /// held them while this node was away, or owned them before the member list changed).
    async fn listed_by(&self, cluster: &Cluster, peer: &str, report: &mut ResyncReport) -> Vec<(BlockKey, bool)> {
        let me = cluster.local_id();
        let mut listed = match cluster.held_for_on(peer, me).await {
            Ok(keys) => keys,
            Err(e) => {
                report.failures.push(e.to_string());
                return Vec::new();
            }
        };
        let theirs = match cluster.digests_on(peer, me).await {
            Ok(d) => d,
            Err(e) => {
                report.failures.push(e.to_string());
                return listed;
            }
        };
        let mine = self.owned_digests(peer);
        let differing: Vec<usize> = (0..BUCKETS).filter(|&b| theirs.get(b).is_some_and(|d| *d != mine[b])).collect();
        report.buckets += differing.len();
        for bucket in differing {
            match cluster.owned_keys_on(peer, me, bucket).await {
                Ok(keys) => listed.extend(keys),
                Err(e) => report.failures.push(e.to_string()),
            }
        }
        listed
    }

    /// Reads `key` from `peer` and keeps it here as an owner's copy (a write-back one when
    /// the peer's is `unflushed`: if this node is the primary now, it flushes it): its
    /// length, or `None` if the peer no longer has it.
    async fn pull(
        &self,
        cluster: &Arc<Cluster>,
        peer: &str,
        key: &BlockKey,
        unflushed: bool,
    ) -> Result<Option<u64>, String> {
        let Some((block, _)) = cluster.get_from(peer, key).await.map_err(|e| e.to_string())? else { return Ok(None) };
        let len = block.len();
        self.put_here(block, self.inner.owner_copy(unflushed))
            .await
            .map_err(|e| format!("{key}: keeping the copy pulled from {peer}: {e}"))?;
        self.stored(key).await;
        Ok(Some(len))
    }

    /// Runs [`Manager::resync`] at start, when this node comes back into the member list,
    /// and every `interval` (never with zero), and [`Manager::handoff`] at every change of
    /// the member list (again every few seconds until it succeeds), one at a time; after
    /// each round, the release of copies Blob has and the sweep of chunks that waited past
    /// `orphan_after` with no manifest naming them. It holds the manager weakly (strongly
    /// only for a round) and ends at shutdown, cutting a round short: every round repairs
    /// what the last one left, and each copy it makes is a put that runs to its end.
    pub(crate) fn spawn_resync(&self, interval: Duration, orphan_after: Duration) {
        let Some(cluster) = self.cluster().cloned() else { return };
        let (weak, tasks) = (self.downgrade(), self.tasks().clone());
        let mut changes = cluster.changes();
        self.tasks().spawn(async move {
            let mut handed_from = cluster.view();
            let mut full = true;
            loop {
                // Let a burst of changes (several members joining) settle first.
                if !tasks.pause(Duration::from_millis(500)).await {
                    return;
                }
                let Some(me) = weak.upgrade() else { return };
                let round = async {
                    let taken = me.take_over_flushes();
                    if taken > 0 {
                        tracing::info!(
                            blocks = taken,
                            "flush take-over: this node is now the primary of unflushed blocks"
                        );
                    }
                    let mut retry = false;
                    if cluster.view().addrs != handed_from.addrs {
                        let (report, placed_over) = me.handoff(&handed_from).await;
                        if report.failures.is_empty() {
                            handed_from = placed_over;
                        } else {
                            retry = true; // an owner did not take what it lacks: offer it again
                        }
                    }
                    let rejoined = cluster.take_rejoined();
                    if full || rejoined {
                        me.resync().await;
                    }
                    if let Some(hooks) = &me.inner.hooks {
                        hooks.clone().resynced(&me, orphan_after).await;
                    }
                    retry
                };
                let Some(retry) = tasks.unless_stopped(round).await else { return };
                drop(me);
                full = false;
                let periodic = async {
                    if interval.is_zero() {
                        std::future::pending::<()>().await
                    } else {
                        tokio::time::sleep(interval).await
                    }
                };
                let again = async {
                    if retry { tokio::time::sleep(HANDOFF_RETRY).await } else { std::future::pending::<()>().await }
                };
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    () = periodic => full = true,
                    () = cluster.rejoined() => {}
                    () = again => {}
                    () = tasks.stopped() => return,
                }
            }
        });
    }
}
