//! The node's background work, owned: every task is spawned on one [`TaskTracker`], and
//! [`Tasks::shutdown`] stops the loops at their next wait and joins every task (the way
//! tokio's graceful-shutdown guide pairs a tracker with a [`CancellationToken`]).
//!
//! A loop stops only where it waits (a sleep, a queue, a timer): work under way (a demotion,
//! a flush attempt, a copy after the quorum) runs to its end, so shutdown never leaves a
//! lock held, an index half updated or a write half made.

use std::{future::Future, time::Duration};

use tokio::task::JoinHandle;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// The tasks of one node. Cloning shares them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tasks {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Tasks {
    /// Starts `work` as one of the node's tasks: [`Tasks::shutdown`] waits for it.
    pub(crate) fn spawn<F>(&self, work: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(work)
    }

    /// Waits for `wait` unless shutdown begins first (then `None`): a loop's wait point.
    pub(crate) async fn unless_stopped<F: Future>(&self, wait: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => None,
            out = wait => Some(out),
        }
    }

    /// Sleeps for `pause`; false when shutdown began meanwhile.
    pub(crate) async fn pause(&self, pause: Duration) -> bool {
        self.unless_stopped(tokio::time::sleep(pause)).await.is_some()
    }

    /// Whether shutdown has begun.
    pub(crate) fn stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Completes when shutdown begins.
    pub(crate) async fn stopped(&self) {
        self.stop.cancelled().await
    }

    /// Tasks not yet finished.
    pub(crate) fn running(&self) -> usize {
        self.tracker.len()
    }

    /// Stops the loops at their next wait and waits for every task to end (those spawned
    /// meanwhile too: work under way may start a last piece of its own).
    pub(crate) async fn shutdown(&self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    use super::*;

    #[tokio::test]
    async fn shutdown_ends_a_loop_at_its_wait_and_lets_work_under_way_finish() {
        let tasks = Tasks::default();
        let looping = tasks.clone();
        let sleeper = tasks.spawn(async move {
            let mut rounds = 0u32;
            while looping.pause(Duration::from_secs(3600)).await {
                rounds += 1;
            }
            rounds
        });
        let finished = Arc::new(AtomicBool::new(false));
        let flag = finished.clone();
        tasks.spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            flag.store(true, Ordering::SeqCst);
        });
        assert_eq!(tasks.running(), 2);
        tasks.shutdown().await;
        assert!(finished.load(Ordering::SeqCst), "the work under way ran to its end");
        assert_eq!(sleeper.await.unwrap(), 0, "the loop stopped at its first wait");
        assert_eq!(tasks.running(), 0);
        assert!(tasks.stopping());
        assert!(tasks.unless_stopped(std::future::pending::<()>()).await.is_none());
    }

    /// A node whose resync round hangs on a member that takes connections and never
    /// answers: `shutdown` cuts the round short and joins every task, so nothing holds the
    /// node any more and its data dir opens again at once. (The resync loop once held the
    /// manager for good: a second open in the same process was refused as a second user of
    /// the data dir.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_cuts_a_hung_resync_round_short_and_lets_the_data_dir_go() {
        use crate::{Manager, Metrics};
        let dir = tempfile::tempdir().unwrap();
        let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut config = crate::config::small_for_tests(dir.path());
        config.cluster.node_id = "n1".into();
        config.cluster.members = vec!["n1=127.0.0.1:1".into(), format!("n2={}", hung.local_addr().unwrap())];
        config.cluster.peer_timeout = Duration::from_secs(600);
        let node = Manager::open(&config, Metrics::new()).await.unwrap();

        // The first resync round dials the member, which never answers: a round under way.
        let dialed = tokio::time::timeout(Duration::from_secs(60), hung.accept()).await;
        let _held = dialed.expect("the resync round dials the member").unwrap();
        node.refresh_gauges().await;
        assert!(node.metrics().background_tasks.get() > 0);

        node.shutdown().await;
        node.refresh_gauges().await;
        assert_eq!(node.metrics().background_tasks.get(), 0, "every task joined");
        drop(node);
        let again = Manager::open(&config, Metrics::new()).await.expect("the data dir is free once the node shut down");
        again.shutdown().await;
    }
}
