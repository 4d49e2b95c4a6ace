//! Copies still on their way to a key's owners after its put was acknowledged at the write
//! quorum (replicas.rs). A delete of the key on this node waits for them first: one sent
//! after the delete would otherwise land on its owner afterwards and bring the block back
//! there (and resync would spread it again). Each copy is bounded by the peer timeout, and
//! an owner refuses a copy that reaches it past its deadline, so the wait is bounded too.

use std::{collections::HashMap, sync::Arc};

use kvtier_tiers::BlockKey;
use parking_lot::Mutex;
use tokio::sync::watch;

/// Keys with copies in flight, each with how many.
#[derive(Debug, Default)]
pub(super) struct CopiesInFlight {
    keys: Mutex<HashMap<BlockKey, watch::Sender<usize>>>,
}

/// One copy of `key` in flight: dropping it says the copy ended (stored, refused or timed out).
#[must_use = "the copy counts as in flight until this is dropped"]
pub(super) struct InFlight {
    copies: Arc<CopiesInFlight>,
    key: BlockKey,
}

impl CopiesInFlight {
    /// Counts a copy of `key` in flight until the returned guard is dropped.
    pub(super) fn begin(self: &Arc<Self>, key: &BlockKey) -> InFlight {
        let mut keys = self.keys.lock();
        keys.entry(key.clone()).or_insert_with(|| watch::channel(0).0).send_modify(|n| *n += 1);
        InFlight { copies: self.clone(), key: key.clone() }
    }

    /// Returns once no copy of `key` is in flight.
    pub(super) async fn settled(&self, key: &BlockKey) {
        let Some(mut count) = self.keys.lock().get(key).map(watch::Sender::subscribe) else { return };
        // The last copy says 0 before its entry goes: a closed channel has said it.
        let _ = count.wait_for(|n| *n == 0).await;
    }

    /// Keys with a copy in flight.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.keys.lock().len()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut keys = self.copies.keys.lock();
        let Some(count) = keys.get(&self.key) else { return };
        count.send_modify(|n| *n -= 1);
        if *count.borrow() == 0 {
            keys.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;

    /// A delete's wait ends when the last copy of its key ends, not before; keys without
    /// copies do not wait, and nothing is left behind.
    #[tokio::test]
    async fn a_wait_ends_with_the_last_copy_of_its_key() {
        let copies = Arc::new(CopiesInFlight::default());
        let (a, b) = (BlockKey::parse("ns", b"a").unwrap(), BlockKey::parse("ns", b"b").unwrap());
        copies.settled(&b).await; // nothing in flight: at once

        let first = copies.begin(&a);
        let second = copies.begin(&a);
        let (tx, mut ended) = tokio::sync::oneshot::channel();
        let waiter = {
            let (copies, a) = (copies.clone(), a.clone());
            tokio::spawn(async move {
                copies.settled(&a).await;
                let _ = tx.send(());
            })
        };
        drop(first);
        // One copy is still in flight: the wait goes on (checked without a fixed sleep: the
        // waiter has had every chance to run on this single-threaded runtime).
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        assert!(ended.try_recv().is_err(), "the wait ended with a copy still in flight");
        drop(second);
        tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert_eq!(copies.len(), 0);
    }
}
