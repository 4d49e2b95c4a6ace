//! How far long work has come (the resync at start, persisting memory at shutdown), for
//! whoever shows it: the `kvtier` binary draws progress bars on a terminal; a library user
//! gets nothing unless it asks ([`Metrics::with_progress`](crate::Metrics::with_progress)).
//! The library never draws itself.

use std::sync::Arc;

/// Receives the long tasks a node runs.
pub trait Progress: Send + Sync + std::fmt::Debug {
    /// A task named `what` (`resync`, `persisting`) of `total` units so far (it may grow);
    /// done when the returned handle drops.
    fn start(&self, what: &'static str, total: u64) -> Box<dyn ProgressTask>;
}

/// One task's progress.
pub trait ProgressTask: Send + Sync {
    /// `n` more units to do.
    fn grow(&self, n: u64);
    /// `n` units done.
    fn advance(&self, n: u64);
    /// What it does now (`from n2`).
    fn note(&self, message: String);
}

/// Reports nowhere (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: &'static str, _: u64) -> Box<dyn ProgressTask> {
        Box::new(NoProgress)
    }
}

impl ProgressTask for NoProgress {
    fn grow(&self, _: u64) {}
    fn advance(&self, _: u64) {}
    fn note(&self, _: String) {}
}

/// The default sink, shared.
pub(crate) fn none() -> Arc<dyn Progress> {
    Arc::new(NoProgress)
}
