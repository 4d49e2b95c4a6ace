//! Which blocks are stored, cluster-wide, without reading them (`Has`): what an engine asks
//! before it loads blocks (Dynamo KVBM's `has_blocks`). Lookup answers this node's longest
//! present prefix; in a cluster a block lives on its owners, so a key this node lacks is
//! asked of them: every owner once for all the missing keys it owns, the next owner only for
//! what the first did not answer.

use std::collections::BTreeMap;

use futures::future::join_all;
use kvtier_tiers::BlockKey;

use super::Manager;

use kvtier_types::Presence;

impl Manager {
    /// Whether each of `keys` is stored (see the module documentation), in order.
    pub async fn has(&self, keys: &[BlockKey]) -> Vec<Option<Presence>> {
        let mut found: Vec<Option<Presence>> = keys.iter().map(|k| self.has_here(k)).collect();
        let Some(cluster) = self.cluster() else { return found };
        // Each missing key's other owners, in rank order; the next round asks the next one.
        let owners: Vec<Vec<String>> = keys
            .iter()
            .zip(&found)
            .map(|(key, here)| match (here, self.plan(key)) {
                (None, Some((_, plan))) => plan.owners.into_iter().filter(|o| o != cluster.local_id()).collect(),
                _ => Vec::new(),
            })
            .collect();
        for round in 0.. {
            // One ask per owner and namespace (a request names one namespace).
            let mut by_owner: BTreeMap<(&str, &str), Vec<usize>> = BTreeMap::new();
            for (i, of_key) in owners.iter().enumerate() {
                if found[i].is_none()
                    && let Some(owner) = of_key.get(round)
                {
                    by_owner.entry((owner.as_str(), keys[i].namespace.as_str())).or_default().push(i);
                }
            }
            if by_owner.is_empty() {
                break;
            }
            let asks = by_owner.into_iter().map(|((owner, _), at)| async move {
                let asked: Vec<BlockKey> = at.iter().map(|&i| keys[i].clone()).collect();
                (owner, at, cluster.has_on(owner, &asked).await)
            });
            for (owner, at, answer) in join_all(asks).await {
                match answer {
                    Ok(answers) => at.into_iter().zip(answers).for_each(|(i, a)| found[i] = found[i].or(a)),
                    Err(e) => tracing::debug!(%owner, error = %e, "asking an owner which blocks it has failed"),
                }
            }
        }
        found
    }

    /// `key` on this node, from its index.
    fn has_here(&self, key: &BlockKey) -> Option<Presence> {
        let entry = self.inner.index.get(key)?;
        Some(Presence { length: entry.len, tier: entry.tiers.fastest()? })
    }
}
