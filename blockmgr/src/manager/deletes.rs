//! Deletes: a block here and on its owners (and the read replicas its owners know of).

use futures::future::join_all;
use kvtier_tiers::BlockKey;

use super::Manager;

impl Manager {
    /// Removes `key` here, from every owner and from the read replicas this node knows of:
    /// whether any owner had it.
    pub async fn delete(&self, key: &BlockKey) -> bool {
        let (any, failures) = self.delete_on_owners(key).await;
        for (owner, failure) in failures {
            tracing::warn!(%key, %owner, error = %failure, "deleting a copy failed");
        }
        any
    }

    /// Deletes `key` here and on every owner: whether any held it, and each owner that did
    /// not answer with what it said (it may keep its copy).
    pub(crate) async fn delete_on_owners(&self, key: &BlockKey) -> (bool, Vec<(String, String)>) {
        let owners = self.plan(key).map(|(_, plan)| plan.owners).unwrap_or_default();
        self.delete_on_these(key, &owners, None).await
    }

    /// Deletes `key` here and on `members` (but this node), which refuse it past `deadline`:
    /// whether any held it, and each member that did not answer, or refused, with what it
    /// said (it may keep its copy).
    pub(crate) async fn delete_on_these(
        &self,
        key: &BlockKey,
        members: &[String],
        deadline: Option<std::time::SystemTime>,
    ) -> (bool, Vec<(String, String)>) {
        // A copy this node's put sent on after its quorum could land after the delete and
        // bring the block back on its owner: it ends (stored, refused, or timed out) first.
        self.inner.copies_in_flight.settled(key).await;
        let here = self.delete_here(key).await;
        self.deleted(key);
        if let Some(cluster) = &self.inner.cluster {
            // In the background: a read replica that does not answer must not fail the delete.
            for holder in cluster.reads.forget(key) {
                let (cluster, key) = (cluster.clone(), key.clone());
                self.tasks().spawn(async move {
                    if let Err(e) = cluster.delete_on(&holder, &key).await {
                        tracing::debug!(%key, %holder, error = %e, "deleting a read replica failed (it stays a cache copy)");
                    }
                });
            }
        }
        let Some(cluster) = self.cluster() else { return (here, Vec::new()) };
        let local = cluster.local_id();
        let others: Vec<&String> = members.iter().filter(|id| *id != local).collect();
        let (mut any, mut failures) = (here, Vec::new());
        let deletes = others.iter().map(|id| cluster.delete_on_by(id, key, deadline));
        for (id, result) in others.iter().zip(join_all(deletes).await) {
            match result {
                Ok(had) => any |= had,
                Err(e) => failures.push((id.to_string(), e.to_string())),
            }
        }
        (any, failures)
    }
}
