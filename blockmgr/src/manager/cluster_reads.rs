//! Reads across the cluster: a get that misses here asks the key's owners (spread over the
//! copies) or the read replicas an owner names, and keeps what it finds when it should; an
//! owner answers a member's read (cluster/read_replicas.rs decides who keeps copies).

use kvtier_client::MemberRead;
use kvtier_tiers::{Block, BlockKey};

use super::{Durability, GetOutcome, Manager, MissReason};
use crate::cluster::{Cluster, Plan, ReadRoute};

/// How this node answers a member's read of a key the member lacks.
#[derive(Debug)]
pub enum MemberAnswer {
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

impl Manager {
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
    pub async fn answer_member_read(&self, key: &BlockKey, reader: &str, tried: &[String]) -> MemberAnswer {
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
}
