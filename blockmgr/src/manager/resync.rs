//! Resync: a node pulls from its peers the blocks it owns and lacks. It runs when the node
//! starts, whenever the member list changes, and every `cluster.resync_interval`:
//! - a node that was away pulls the writes it missed (what hinted handoff would replay);
//! - after a member leaves for good, the nodes that now own its keys pull them from the
//!   surviving copies, so every key is back to R copies.
//!
//! Comparing is cheap when nothing differs: each side hashes the keys it holds that the
//! asking node owns into [`BUCKETS`] buckets (count and XOR of key hashes per bucket); only
//! the buckets that differ are listed key by key, and only the keys missing here are read.

use std::{collections::HashSet, sync::Arc, time::Duration};

use kvtier_tiers::{BlockKey, Key, Namespace};
use xxhash_rust::xxh3::xxh3_64;

use super::Manager;
use crate::cluster::Cluster;

/// Buckets the key space is compared in.
pub(crate) const BUCKETS: usize = 256;

/// A bucket's digest: how many keys, and the XOR of their hashes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Digest {
    pub(crate) count: u64,
    pub(crate) xor: u64,
}

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

impl Manager {
    /// Whether member `node` is among `key`'s owners.
    fn owned_by(&self, key: &BlockKey, node: &str) -> bool {
        self.plan(key).is_some_and(|(_, plan)| plan.owns(node))
    }

    /// Digests of the keys this node holds that `node` owns, per bucket.
    pub(crate) fn owned_digests(&self, node: &str) -> Vec<Digest> {
        let mut digests = vec![Digest::default(); BUCKETS];
        for key in self.inner.index.keys_where(|k| self.owned_by(k, node)) {
            let (bucket, hash) = bucket_and_hash(&key);
            digests[bucket].count += 1;
            digests[bucket].xor ^= hash;
        }
        digests
    }

    /// The keys this node holds that `node` owns, in `bucket`.
    pub(crate) fn owned_keys(&self, node: &str, bucket: usize) -> Vec<BlockKey> {
        self.inner.index.keys_where(|k| bucket_and_hash(k).0 == bucket && self.owned_by(k, node))
    }

    /// Pulls from every other member the blocks this node owns and lacks.
    pub async fn resync(&self) -> ResyncReport {
        let Some(cluster) = self.cluster().cloned() else { return ResyncReport::default() };
        let me = cluster.local_id().to_string();
        let mine = self.owned_digests(&me);
        let peers: Vec<String> = cluster.view().addrs.keys().filter(|id| **id != me).cloned().collect();
        let metrics = self.metrics().clone();
        let mut report = ResyncReport { peers: peers.len(), ..Default::default() };
        // Drawn only where stderr is a terminal (a node run by hand); metrics count the rest.
        let bar = indicatif::ProgressBar::new(0).with_style(
            indicatif::ProgressStyle::with_template("resync {bar:30} {pos}/{len} blocks {msg}")
                .expect("a valid template"),
        );
        for peer in &peers {
            let theirs = match cluster.digests_on(peer, &me).await {
                Ok(d) => d,
                Err(e) => {
                    report.failures.push(e);
                    continue;
                }
            };
            let differing: Vec<usize> =
                (0..BUCKETS).filter(|&b| theirs.get(b).is_some_and(|d| *d != mine[b])).collect();
            report.buckets += differing.len();
            for bucket in differing {
                let listed = match cluster.owned_keys_on(peer, &me, bucket).await {
                    Ok(keys) => keys,
                    Err(e) => {
                        report.failures.push(e);
                        continue;
                    }
                };
                let have: HashSet<BlockKey> = self.owned_keys(&me, bucket).into_iter().collect();
                let missing: Vec<(BlockKey, bool)> =
                    listed.into_iter().filter(|(k, _)| !have.contains(k) && self.owned_by(k, &me)).collect();
                bar.inc_length(missing.len() as u64);
                bar.set_message(format!("from {peer}"));
                for (key, unflushed) in missing {
                    bar.inc(1);
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
        }
        bar.finish_and_clear();
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
        let Some((block, _)) = cluster.get_from(peer, key).await? else { return Ok(None) };
        let len = block.len();
        self.put_here(block, self.inner.owner_copy(unflushed))
            .await
            .map_err(|e| format!("{key}: keeping the copy pulled from {peer}: {e}"))?;
        if crate::objects::is_manifest_key(key) {
            self.learn_manifest(key).await;
        }
        Ok(Some(len))
    }

    /// Runs [`Manager::resync`] at start, after every change of the member list, and every
    /// `interval` (never with zero), one at a time.
    pub(crate) fn spawn_resync(&self, interval: Duration) {
        let Some(cluster) = self.cluster().cloned() else { return };
        let me = self.clone();
        let mut changes = cluster.changes();
        tokio::spawn(async move {
            loop {
                // Let a burst of changes (several members joining) settle first.
                tokio::time::sleep(Duration::from_millis(500)).await;
                let taken = me.take_over_flushes();
                if taken > 0 {
                    tracing::info!(blocks = taken, "flush take-over: this node is now the primary of unflushed blocks");
                }
                me.resync().await;
                me.release_what_blob_has().await;
                let periodic = async {
                    if interval.is_zero() {
                        std::future::pending::<()>().await
                    } else {
                        tokio::time::sleep(interval).await
                    }
                };
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    () = periodic => {}
                }
            }
        });
    }
}

/// A key as listed by a peer.
pub(crate) fn key_from_wire(namespace: &str, key: &[u8]) -> Option<BlockKey> {
    Some(BlockKey::new(Namespace::new(namespace).ok()?, Key::new(key).ok()?))
}
