//! Per-key coordination: striped locks for changes of where a block lives, and single
//! flight for slow reads.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
};

use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use kvtier_tiers::BlockKey;
use parking_lot::Mutex;
use tokio::sync::{Mutex as AsyncMutex, MutexGuard};

/// Striped async locks keyed by [`BlockKey`]. Holders never take a second stripe with
/// `lock` (only `try_lock`), so stripes cannot deadlock.
#[derive(Debug)]
pub(crate) struct KeyLocks {
    stripes: Box<[AsyncMutex<()>]>,
    hasher: RandomState,
}

impl KeyLocks {
    pub(crate) fn new(stripes: usize) -> Self {
        KeyLocks { stripes: (0..stripes).map(|_| AsyncMutex::new(())).collect(), hasher: RandomState::new() }
    }

    fn stripe(&self, key: &BlockKey) -> &AsyncMutex<()> {
        &self.stripes[self.hasher.hash_one(key) as usize % self.stripes.len()]
    }

    /// Waits for `key`'s lock.
    pub(crate) async fn lock(&self, key: &BlockKey) -> MutexGuard<'_, ()> {
        self.stripe(key).lock().await
    }

    /// `key`'s lock if free now (also refused when the caller holds the same stripe).
    pub(crate) fn try_lock(&self, key: &BlockKey) -> Option<MutexGuard<'_, ()>> {
        self.stripe(key).try_lock().ok()
    }
}

/// Coalesces concurrent calls for one key into one execution whose result all share.
pub(crate) struct SingleFlight<V: Clone> {
    inflight: Mutex<HashMap<BlockKey, Shared<BoxFuture<'static, V>>>>,
}

impl<V: Clone> std::fmt::Debug for SingleFlight<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SingleFlight({} in flight)", self.inflight.lock().len())
    }
}

impl<V: Clone + Send + Sync + 'static> SingleFlight<V> {
    pub(crate) fn new() -> Self {
        SingleFlight { inflight: Mutex::new(HashMap::new()) }
    }

    /// Runs `make()` unless a call for `key` is already running, in which case its result
    /// is awaited instead.
    pub(crate) async fn run(&self, key: &BlockKey, make: impl FnOnce() -> BoxFuture<'static, V>) -> V {
        let fut = self.inflight.lock().entry(key.clone()).or_insert_with(|| make().shared()).clone();
        let value = fut.clone().await;
        let mut inflight = self.inflight.lock();
        if inflight.get(key).is_some_and(|f| Shared::ptr_eq(f, &fut)) {
            inflight.remove(key);
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn concurrent_calls_share_one_execution() {
        let flight = SingleFlight::<u64>::new();
        let runs = AtomicUsize::new(0);
        let key = BlockKey::parse("ns", b"k").unwrap();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let release_rx = Mutex::new(Some(release_rx));
        let calls = futures::future::join_all((0..16).map(|_| {
            flight.run(&key, || {
                runs.fetch_add(1, Ordering::SeqCst);
                let rx = release_rx.lock().take().expect("only the first caller runs");
                Box::pin(async move {
                    rx.await.unwrap();
                    42
                })
            })
        }));
        // `join` polls all 16 calls (each joins the flight and waits) before releasing it.
        let (results, ()) = futures::future::join(calls, async { release_tx.send(()).unwrap() }).await;
        assert_eq!(results, vec![42; 16]);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(flight.run(&key, || Box::pin(async { 7 })).await, 7, "a finished flight is not reused");
    }
}
