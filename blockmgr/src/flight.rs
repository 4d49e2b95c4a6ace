//! Per-key coordination: striped locks for changes of where a block lives, and single
//! flight for slow reads.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use kvtier_tiers::BlockKey;
use parking_lot::Mutex;
use tokio::sync::{Mutex as AsyncMutex, MutexGuard};

use crate::tasks::Tasks;

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

    /// Whether two keys share a lock: holding one's lock covers the other.
    pub(crate) fn same_stripe(&self, a: &BlockKey, b: &BlockKey) -> bool {
        std::ptr::eq(self.stripe(a), self.stripe(b))
    }
}

type Flights<V> = Arc<Mutex<HashMap<BlockKey, (u64, Shared<BoxFuture<'static, V>>)>>>;

/// Coalesces concurrent calls for one key into one execution whose result all share.
///
/// The execution runs in its own task, so it finishes (and releases whatever it holds:
/// buffers, budget, I/O slots) even if every caller gives up, and it removes itself from the
/// table when done, so no later caller can join a finished or abandoned flight.
pub(crate) struct SingleFlight<V: Clone> {
    inflight: Flights<V>,
    next_id: AtomicU64,
    /// Where the flights run: a shutdown waits for them.
    tasks: Tasks,
}

impl<V: Clone> std::fmt::Debug for SingleFlight<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SingleFlight({} in flight)", self.inflight.lock().len())
    }
}

impl<V: Clone + Send + Sync + 'static> SingleFlight<V> {
    pub(crate) fn new(tasks: Tasks) -> Self {
        SingleFlight { inflight: Arc::new(Mutex::new(HashMap::new())), next_id: AtomicU64::new(0), tasks }
    }

    /// Runs `make()` in a task unless a call for `key` is already running, in which case
    /// its result is awaited instead. Must be called inside a tokio runtime.
    pub(crate) async fn run(&self, key: &BlockKey, make: impl FnOnce() -> BoxFuture<'static, V>) -> V {
        let flight = {
            let mut table = self.inflight.lock();
            match table.get(key) {
                Some((_, flight)) => flight.clone(),
                None => {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let (table_ref, owned) = (self.inflight.clone(), key.clone());
                    let work = make();
                    let task = self.tasks.spawn(async move {
                        let value = work.await;
                        let mut table = table_ref.lock();
                        if table.get(&owned).is_some_and(|(i, _)| *i == id) {
                            table.remove(&owned);
                        }
                        value
                    });
                    let flight = async move { task.await.expect("single-flight task panicked") }.boxed().shared();
                    table.insert(key.clone(), (id, flight.clone()));
                    flight
                }
            }
        };
        flight.await
    }

    /// Flights currently running.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inflight.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn concurrent_calls_share_one_execution() {
        let flight = SingleFlight::<u64>::new(Tasks::default());
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

    #[tokio::test]
    async fn an_abandoned_flight_still_finishes_and_leaves_the_table() {
        let flight = SingleFlight::<u64>::new(Tasks::default());
        let key = BlockKey::parse("ns", b"k").unwrap();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        {
            let call = flight.run(&key, move || {
                Box::pin(async move {
                    release_rx.await.unwrap();
                    let _ = done_tx.send(());
                    1
                })
            });
            futures::pin_mut!(call);
            assert!(futures::poll!(call.as_mut()).is_pending());
        } // the only caller gives up
        assert_eq!(flight.len(), 1);
        release_tx.send(()).unwrap();
        done_rx.await.expect("the work ran to the end without any caller");
        tokio::task::yield_now().await;
        assert_eq!(flight.run(&key, || Box::pin(async { 2 })).await, 2, "a new call starts a new flight");
        assert_eq!(flight.len(), 0);
    }
}
