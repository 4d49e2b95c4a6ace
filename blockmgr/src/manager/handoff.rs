//! Handoff: after a change of the member list, each block whose owners changed is offered
//! to its owners now by the nodes that hold it as an owner (now or before the change): each
//! owner answers which it lacks (`Peer/Offer`), and gets those put. A change thus costs
//! requests in proportion to what moved: when one of 1000 members leaves, the holders of its
//! keys reach those keys' new owners, where a pull by every member would ask all 999 others.
//!
//! It covers a member that left for good (its keys' surviving owners give them to the new
//! owners), a member that returns (the owners and the members that held its keys meanwhile
//! give them back), and one that joins. Current owners offer first; former owners, no
//! longer owners, a second later, so a block both hold is mostly sent once (to a new owner
//! that still lacks it by then). Cache copies on other nodes offer nothing. The pull resync
//! (at start, on return, every `cluster.resync_interval`) is the backstop.

use std::{collections::BTreeMap, sync::Arc};

use kvtier_tiers::BlockKey;

use super::{Durability, Manager, ResyncReport};
use crate::cluster::{Cluster, View};

impl Manager {
    /// Offers the blocks held here whose owners changed since `before` to their owners now,
    /// and puts what they lack. What it did, and the member list it placed them over (the
    /// next handoff's `before`, unless something failed: then this one is tried again).
    pub(crate) async fn handoff(&self, before: &View) -> (ResyncReport, Arc<View>) {
        let ownership = self.ownership();
        let Some(cluster) = self.cluster().cloned() else { return (ResyncReport::default(), ownership.view.clone()) };
        let me = cluster.local_id();
        // (owner, keys) offered at once (this node an owner now), then a second later (an
        // owner before only).
        let (mut first, mut later): (Offers, Offers) = Default::default();
        for (key, _, _, owners) in &ownership.keys {
            let (replicas, _) = self.inner.replication(key);
            let former = before.placement.owners(&crate::keys::placement_key(key), replicas);
            if former.len() == owners.len() && former.iter().all(|f| owners.iter().any(|o| o == f)) {
                continue; // the same owners (a new primary takes the flush over, not the copy)
            }
            let offers = if owners.iter().any(|o| o == me) {
                &mut first
            } else if former.contains(&me) {
                &mut later
            } else {
                continue; // a cache copy: the owners hand it
            };
            let unflushed = self.unflushed(key);
            for owner in owners.iter().filter(|o| *o != me) {
                offers.entry(owner.clone()).or_default().push((key.clone(), unflushed));
            }
        }
        let mut report = ResyncReport { peers: first.len() + later.len(), ..Default::default() };
        self.offer(&cluster, first, &mut report).await;
        if !later.is_empty() {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            self.offer(&cluster, later, &mut report).await;
        }
        if report.blocks > 0 || !report.failures.is_empty() {
            tracing::info!(
                owners = report.peers,
                blocks = report.blocks,
                bytes = report.bytes,
                failures = %report.failures.join("; "),
                "handoff: gave owners the blocks they lacked"
            );
        }
        (report, ownership.view.clone())
    }

    /// Offers each owner its keys and puts those it lacks.
    async fn offer(&self, cluster: &Cluster, offers: Offers, report: &mut ResyncReport) {
        let metrics = self.metrics().clone();
        for (owner, keys) in offers {
            let wanted = match cluster.offer_to(&owner, &keys).await {
                Ok(wanted) => wanted,
                Err(e) => {
                    report.failures.push(e.to_string());
                    continue;
                }
            };
            for key in wanted {
                // A write-back block Blob lacks stays one on its new owner (which flushes it
                // if it is the primary now).
                let durability = if self.unflushed(&key) { Durability::WriteBack } else { Durability::LocalDisk };
                let Some(block) = self.copy_for_peers(&key).await else { continue };
                let len = block.len();
                match cluster.put_on(&owner, &block, durability).await {
                    Ok(()) => {
                        report.blocks += 1;
                        report.bytes += len;
                        metrics.handoff_blocks.inc();
                        metrics.handoff_bytes.inc_by(len);
                    }
                    Err(e) => report.failures.push(e.to_string()),
                }
            }
        }
    }
}

/// Keys to offer, by owner, each with whether it is a write-back block Blob lacks.
type Offers = BTreeMap<String, Vec<(BlockKey, bool)>>;
