//! Named objects across nodes. A path's manifests are placed like one block (all
//! generations alike), so the same R nodes, the path's owners, hold its versions; their
//! catalogs are the truth about it. The primary owner commits and deletes (the generation is
//! assigned under its lock, so two writers on two nodes never claim the same one); a node
//! that owns no copy asks the owners, in order, and a listing asks every member for the
//! paths it owns. Chunks are ordinary blocks with their own owners.

use crate::NodeError;
use kvtier_tiers::{BlockKey, Namespace};

use super::Objects;
use super::{CommitIf, ObjectInfo, check_path, is_manifest_key, manifest_key};
use crate::{Durability, GetOutcome, cluster::Plan, wire::Outcome};

/// Where a path's metadata is decided: here, or on which members in order.
enum Owners {
    /// A node alone: this node's catalog.
    Here,
    /// The owners, primary first (this node among them when it is one).
    These(Plan),
}

/// What [`Objects::on_path_primary`] does to a path.
#[derive(Debug, Clone, Copy)]
enum Removal {
    /// Delete the object, chunks and all, if its live version meets the condition.
    Delete(CommitIf),
    /// Retire this generation, keeping its chunks.
    Forget(u64),
}

/// One owner's answer to "what is the current manifest": by owner id.
type OwnerAnswer = (String, Result<Option<Vec<u8>>, crate::cluster::PeerError>);

fn parse(json: &[u8], from: &str) -> Result<ObjectInfo, NodeError> {
    serde_json::from_slice(json).map_err(|e| NodeError::Unreachable {
        what: "an object's manifest".into(),
        failures: format!("{from} sent a manifest that does not parse: {e}"),
    })
}

impl Objects {
    fn path_owners(&self, ns: &Namespace, path: &str) -> Owners {
        match self.node.plan(&manifest_key(ns, path, 0)) {
            Some((_, plan)) => Owners::These(plan),
            None => Owners::Here,
        }
    }

    /// The path's owners, and what each of the others says its current manifest is (the
    /// JSON, or `None` for no such object); `None` for a node alone.
    async fn ask_other_owners(&self, ns: &Namespace, path: &str) -> Option<(Plan, Vec<OwnerAnswer>)> {
        let (Owners::These(plan), Some(cluster)) = (self.path_owners(ns, path), self.node.cluster()) else {
            return None;
        };
        let others = plan.owners.iter().filter(|id| *id != cluster.local_id());
        let answers = futures::future::join_all(
            others.map(|id| async move { (id.clone(), cluster.stat_object_on(id, ns.as_str(), path).await) }),
        )
        .await;
        Some((plan, answers))
    }

    /// The newest version of `path` the other owners know (those that answer; with
    /// `all_answer`, an owner out of reach is an error: a decision that must see every copy,
    /// as a conditional create's, is not taken without it).
    pub(crate) async fn newest_elsewhere(
        &self,
        ns: &Namespace,
        path: &str,
        all_answer: bool,
    ) -> Result<Option<ObjectInfo>, NodeError> {
        let Some((_, answers)) = self.ask_other_owners(ns, path).await else { return Ok(None) };
        let mut newest: Option<ObjectInfo> = None;
        let mut failures = Vec::new();
        for (id, answer) in answers {
            match answer {
                Ok(Some(json)) => {
                    let info = parse(&json, &id)?;
                    if newest.as_ref().is_none_or(|n| n.generation < info.generation) {
                        newest = Some(info);
                    }
                }
                Ok(None) => {}
                Err(e) => failures.push(format!("{id}: {e}")),
            }
        }
        if all_answer && !failures.is_empty() {
            let what = format!("deciding whether {ns}/{path} exists");
            return Err(NodeError::Unreachable { what, failures: failures.join("; ") });
        }
        Ok(newest)
    }

    /// Whether this node holds `path`'s manifests (always, alone).
    pub(crate) fn owns_path(&self, ns: &Namespace, path: &str) -> bool {
        match (self.path_owners(ns, path), self.node.cluster()) {
            (Owners::Here, _) | (_, None) => true,
            (Owners::These(plan), Some(c)) => plan.owns(c.local_id()),
        }
    }

    /// Commits `info` (its chunks stored) on the path's primary, or the next owner that
    /// answers: the committed version, with its generation. Only if the path's current
    /// version there meets `condition` (`None`: it does not, nothing was committed).
    pub(crate) async fn commit_manifest(
        &self,
        ns: &Namespace,
        info: ObjectInfo,
        durability: Durability,
        condition: CommitIf,
    ) -> Result<Option<ObjectInfo>, NodeError> {
        let (plan, cluster) = match (self.path_owners(ns, &info.path), self.node.cluster()) {
            (Owners::These(plan), Some(cluster)) => (plan, cluster),
            _ => return self.commit_here(ns, info, durability, condition, None).await,
        };
        let json = serde_json::to_vec(&info).expect("serializes");
        let what = format!("committing {ns}/{}", info.path);
        let mut failures = Vec::new();
        // Whether every owner asked did nothing (never reached, or answered so): only then
        // is the failure definite.
        let mut not_applied = true;
        for id in &plan.owners {
            if id == cluster.local_id() {
                return match self.commit_here(ns, info, durability, condition, None).await {
                    Err(e) if !not_applied && Outcome::of_commit(&e) == Outcome::NotApplied => {
                        failures.push(format!("{id}: {e}"));
                        break; // an owner before this one may have committed: unknown
                    }
                    done => done,
                };
            }
            match cluster.commit_object_on(id, ns.as_str(), json.clone(), durability, condition).await {
                Ok(Some(json)) => return parse(&json, id).map(Some),
                Ok(None) if condition != CommitIf::Any => return Ok(None),
                Ok(None) => failures.push(format!("{id} answered no manifest")),
                Err(e) => {
                    not_applied &= e.outcome() == Outcome::NotApplied;
                    failures.push(e.to_string());
                }
            }
        }
        let failures = failures.join("; ");
        Err(if not_applied {
            NodeError::NotCommitted { what, cause: failures }
        } else {
            NodeError::Unreachable { what, failures }
        })
    }

    /// The current version of `path`, if any: the newest its owners know (all of them are
    /// asked, this node's catalog among them when it is one: an owner back from an absence
    /// may not have resynced the latest commit yet).
    pub async fn stat_object(&self, namespace: &str, path: &str) -> Result<Option<ObjectInfo>, NodeError> {
        let ns = Namespace::new(namespace)?;
        let (Some((plan, answers)), Some(cluster)) = (self.ask_other_owners(&ns, path).await, self.node.cluster())
        else {
            return Ok(self.stat_object_here(&ns, path));
        };
        let mut failures = Vec::new();
        let mut answered = plan.owns(cluster.local_id());
        // Delete markers take part: an owner that missed a delete is outvoted.
        let mut newest = if answered { self.version_here(&ns, path) } else { None };
        for (id, answer) in answers {
            match answer {
                Ok(json) => {
                    answered = true;
                    if let Some(json) = json {
                        let info = parse(&json, &id)?;
                        if newest.as_ref().is_none_or(|n| n.generation < info.generation) {
                            newest = Some(info);
                        }
                    }
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
        // "No such object" only when no owner that could hold it was out of reach: an owner
        // that answered may be one back from an absence (not resynced yet) while the one
        // holding the object does not answer.
        if !answered || (newest.is_none() && !failures.is_empty()) {
            return Err(NodeError::Unreachable { what: format!("{namespace}/{path}"), failures: failures.join("; ") });
        }
        Ok(newest.filter(|info| !info.deleted))
    }

    /// Objects of `namespace` whose path starts with `prefix`, sorted by path: with a
    /// cluster, every member's owned paths (the newest generation wins where two disagree).
    pub async fn list_objects(&self, namespace: &str, prefix: &str) -> Result<Vec<ObjectInfo>, NodeError> {
        let ns = Namespace::new(namespace)?;
        let Some(cluster) = self.node.cluster() else { return Ok(self.list_objects_here(&ns, prefix, |_| true)) };
        let mut found: std::collections::BTreeMap<String, ObjectInfo> = std::collections::BTreeMap::new();
        let mut keep = |info: ObjectInfo| {
            if found.get(&info.path).is_none_or(|have| have.generation < info.generation) {
                found.insert(info.path.clone(), info);
            }
        };
        self.list_versions_here(&ns, prefix, |p| self.owns_path(&ns, p)).into_iter().for_each(&mut keep);
        let others: Vec<String> = cluster.view().addrs.keys().filter(|id| *id != cluster.local_id()).cloned().collect();
        let answers =
            futures::future::join_all(others.iter().map(|id| cluster.list_objects_on(id, namespace, prefix))).await;
        let mut failures = Vec::new();
        for (id, answer) in others.iter().zip(answers) {
            match answer {
                Ok(manifests) => {
                    for json in manifests {
                        keep(parse(&json, id)?);
                    }
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
        // A member down is covered by the other owners of its paths (R >= 2).
        if !failures.is_empty() {
            tracing::warn!(namespace, prefix, failures = %failures.join("; "), "objects: listing without some members");
        }
        Ok(found.into_values().filter(|info| !info.deleted).collect())
    }

    /// Removes `path` (on its primary, or the next owner that answers): whether it existed.
    pub async fn delete_object(&self, namespace: &str, path: &str) -> Result<bool, NodeError> {
        self.delete_object_if(namespace, path, CommitIf::Any).await
    }

    /// Removes `path` if its live version meets `condition` (S3's `If-Match` on a delete),
    /// decided by its primary: whether there was a version that met it, now deleted.
    pub async fn delete_object_if(&self, namespace: &str, path: &str, condition: CommitIf) -> Result<bool, NodeError> {
        check_path(path)?;
        self.on_path_primary(&Namespace::new(namespace)?, path, Removal::Delete(condition)).await
    }

    /// Retires `info`'s generation of its path without its chunks (a joined object adopted
    /// them), on the path's primary: whether it was the current one.
    pub async fn forget_object(&self, namespace: &str, info: &ObjectInfo) -> Result<bool, NodeError> {
        self.on_path_primary(&Namespace::new(namespace)?, &info.path, Removal::Forget(info.generation)).await
    }

    /// Runs `removal` of `path` on its primary (this node, or the first owner that answers).
    async fn on_path_primary(&self, ns: &Namespace, path: &str, removal: Removal) -> Result<bool, NodeError> {
        let here = async || match removal {
            Removal::Delete(condition) => self.delete_object_here(ns, path, None, condition).await,
            Removal::Forget(generation) => Ok(self.forget_object_here(ns, path, generation).await),
        };
        let (plan, cluster) = match (self.path_owners(ns, path), self.node.cluster()) {
            (Owners::These(plan), Some(cluster)) => (plan, cluster),
            _ => return here().await,
        };
        let mut failures = Vec::new();
        for id in &plan.owners {
            if id == cluster.local_id() {
                return here().await;
            }
            let asked = match removal {
                Removal::Delete(condition) => cluster.delete_object_on(id, ns.as_str(), path, condition).await,
                Removal::Forget(generation) => cluster.forget_object_on(id, ns.as_str(), path, generation).await,
            };
            match asked {
                Ok(existed) => return Ok(existed),
                Err(e) => failures.push(e.to_string()),
            }
        }
        let doing = match removal {
            Removal::Delete(_) => "deleting",
            Removal::Forget(_) => "retiring",
        };
        Err(NodeError::Unreachable { what: format!("{doing} {ns}/{path}"), failures: failures.join("; ") })
    }

    /// A manifest just stored on this node (a copy from the path's primary, a resync or a
    /// handoff): the catalog takes it when it is newer than what it has. Of the two, the
    /// older version's manifest here is dead once the newer one is settled (its commit can
    /// no longer be undone; see objects/superseded.rs): a copy a delete or replace did not
    /// reach, brought back by a member that was away, is dropped where it lands; so is a
    /// delete marker past its time.
    pub(crate) async fn learn_manifest(&self, key: &BlockKey) {
        if !is_manifest_key(key) {
            return;
        }
        let GetOutcome::Hit { block, .. } = self.node.get_here(key).await else { return };
        let Ok(info) = serde_json::from_slice::<ObjectInfo>(&block.data) else { return };
        let ns = key.namespace.clone();
        if self.marker_expired(&ns, &info) {
            tracing::info!(manifest = %key, "objects: dropping a delete marker past its time");
            self.node.delete_here(key).await;
            return;
        }
        let slot = (ns.clone(), info.path.clone());
        // (the older generation, whether the newer one is settled)
        let older = {
            let mut objects = self.catalog.objects.write();
            match objects.get(&slot) {
                Some(have) if have.generation > info.generation => Some((info.generation, self.settled(have))),
                Some(have) if have.generation == info.generation => None,
                have => {
                    let older = have.map(|h| (h.generation, self.settled(&info)));
                    objects.insert(slot, info.clone());
                    older
                }
            }
        };
        if older.is_none_or(|(generation, _)| generation != info.generation) {
            self.node.keep_owned_manifest(key); // the version this node knows as the newest
        }
        if let Some((generation, newer_settled)) = older {
            self.superseded(&ns, &info.path, generation, newer_settled).await;
        }
    }
}
