//! The export queue: objects whose file must reach Blob (objects/export.rs does one export).
//!
//! Exports run `blob.export_concurrency` at a time, and each one that fails backs off on its
//! own (100 ms doubling to 30 s) while the others go on: one object that cannot be exported
//! (its chunks unreadable, its name refused by the store) never holds up the rest. Two
//! versions of one path are never exported at once (the older, finishing last, would
//! replace the newer's file), and a manifest is not exported before its commit has its
//! write quorum (a commit that fails is undone: its file must never replace the last one). A
//! version another node committed (this node took over the path's flushes, or pulled the
//! copy) waits until it is settled: its committer may still be undoing it, and a file
//! deleted or replaced in Blob for a commit then undone is gone for good (the fault run at
//! 38b3562 found deleted files back with that signature: the marker gone everywhere, the
//! version before it taught back, its file gone from Blob). What is queued, how long the
//! oldest has waited and why exports fail are metrics, so a stuck export shows
//! (`exports_queued`, `export_oldest_seconds`, `object_export_failures_total{reason}`).

use std::{
    collections::{HashSet, VecDeque},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use kvtier_tiers::{BlockKey, ObjectBlobs};
use parking_lot::Mutex;
use tokio::{sync::Notify, time::Instant};

use super::Objects;
use super::staging::StagedUploads;
use crate::{flight::SingleFlight, tasks::Tasks};

/// One object's export, queued or running.
#[derive(Debug)]
struct Job {
    key: BlockKey,
    /// First queued: what `export_oldest_seconds` measures.
    since: Instant,
    /// Not to be tried before this (a failed one backs off).
    due: Instant,
    failures: u32,
}

#[derive(Debug, Default)]
struct Queue {
    waiting: VecDeque<Job>,
    /// When each running export was first queued.
    running: Vec<(BlockKey, Instant)>,
    /// Waiting or running: never queued twice (a take-over of the flushes while an export
    /// runs must not start a second one).
    members: HashSet<BlockKey>,
    /// Exported, their manifest's own flush still to come: not exported again meanwhile.
    exported: HashSet<BlockKey>,
    /// Manifests whose commit is still waiting for its quorum, and those of them whose
    /// export was asked for meanwhile.
    held: HashSet<BlockKey>,
    deferred: HashSet<BlockKey>,
    /// Manifests this node committed (its quorum reached, or an outcome unknown that stands),
    /// with when: exported at once, settled or not, since only their committer can undo them.
    /// Kept while they may be unsettled (then `settled` says the same for them).
    committed: HashSet<BlockKey>,
    committed_at: VecDeque<(BlockKey, Instant)>,
}

/// A manifest's export held back while its commit runs ([`Exports::hold`]).
#[must_use = "the export stays held until the hold is released or dropped"]
pub(crate) struct Hold {
    exports: Arc<Exports>,
    key: BlockKey,
    committed: bool,
}

impl Hold {
    /// The commit ended: it stands (`committed`: its quorum reached, or its outcome
    /// unknown), or it was undone everywhere.
    pub(crate) fn release(mut self, committed: bool) {
        self.committed = committed;
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.exports.release(&self.key, self.committed);
    }
}

/// How long past its settling a commit of this node's is still remembered as such (its
/// generation is the commit's start; the margin covers a commit that took long to store).
const COMMITTED_MARGIN: Duration = Duration::from_secs(60);

/// How one export ended.
#[derive(Debug, Clone, Copy)]
enum Ended {
    Done,
    Failed,
    PutOff(Duration),
}

/// What an export did: nothing more to do, or not yet (the version is another node's commit,
/// not settled for this long).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Exported {
    Done,
    NotSettled(Duration),
}

/// The path a manifest key belongs to: its namespace and the hash of the path (the key
/// less its generation).
fn path_of(key: &BlockKey) -> (&kvtier_tiers::Namespace, &[u8]) {
    let k = key.key.as_bytes();
    (&key.namespace, &k[..k.len().min(26)])
}

/// Where objects' files go, and the manifests whose export waits (queued by the flush).
#[derive(Debug)]
pub(crate) struct Exports {
    pub(crate) blobs: Arc<ObjectBlobs>,
    queue: Mutex<Queue>,
    wake: Notify,
    concurrency: usize,
    /// How long a version may be undone after its commit (four peer timeouts).
    settling: Duration,
    /// Chunks being read back from their object's file (one read each at a time).
    pub(super) reads: SingleFlight<Option<Bytes>>,
    /// What failed exports staged, by manifest, for their next try (objects/staging.rs).
    pub(super) staged: StagedUploads,
}

impl Exports {
    /// Exports to `blobs`, `concurrency` at a time; a version may be undone for `settling`
    /// after its commit.
    pub(crate) fn new(blobs: ObjectBlobs, concurrency: usize, settling: Duration, tasks: Tasks) -> Self {
        Exports {
            blobs: Arc::new(blobs),
            queue: Mutex::default(),
            wake: Notify::new(),
            concurrency: concurrency.max(1),
            settling,
            reads: SingleFlight::new(tasks),
            staged: StagedUploads::default(),
        }
    }

    /// Queues the export of the object whose manifest is `key`, unless it is queued,
    /// being exported, or exported already.
    pub(crate) fn enqueue(&self, key: BlockKey) {
        let mut q = self.queue.lock();
        if q.held.contains(&key) {
            q.deferred.insert(key);
            return;
        }
        if !q.exported.contains(&key) && q.members.insert(key.clone()) {
            let now = Instant::now();
            q.waiting.push_back(Job { key, since: now, due: now, failures: 0 });
            drop(q);
            self.wake.notify_one();
        }
    }

    /// Holds back the export of `key` (a manifest being committed) until the [`Hold`] is
    /// released, or dropped: a commit whose request went away mid-way (its sender cancelled
    /// it) ends with it, its outcome unknown, and must not keep its export held for ever.
    pub(crate) fn hold(self: &Arc<Self>, key: &BlockKey) -> Hold {
        self.queue.lock().held.insert(key.clone());
        Hold { exports: self.clone(), key: key.clone(), committed: true }
    }

    /// Ends a hold: an export asked for meanwhile is queued if `committed` (the commit
    /// stands: its quorum reached, or its outcome unknown), and the commit is remembered as
    /// this node's.
    fn release(&self, key: &BlockKey, committed: bool) {
        let deferred = {
            let mut q = self.queue.lock();
            q.held.remove(key);
            if committed {
                let now = Instant::now();
                let kept = self.settling + COMMITTED_MARGIN;
                while let Some((old, _)) = q.committed_at.front().filter(|(_, at)| now - *at > kept) {
                    let old = old.clone();
                    q.committed.remove(&old);
                    q.committed_at.pop_front();
                }
                q.committed.insert(key.clone());
                q.committed_at.push_back((key.clone(), now));
            }
            q.deferred.remove(key)
        };
        if deferred && committed {
            self.enqueue(key.clone());
        }
    }

    /// Whether this node committed `key` (lately: while it may be unsettled).
    pub(crate) fn committed_here(&self, key: &BlockKey) -> bool {
        self.queue.lock().committed.contains(key)
    }

    /// The first waiting job that is due and whose path has no export running, now running;
    /// else when the next one is due.
    fn take(&self) -> Result<Job, Option<Instant>> {
        let mut q = self.queue.lock();
        let now = Instant::now();
        let busy =
            |key: &BlockKey, running: &[(BlockKey, Instant)]| running.iter().any(|(r, _)| path_of(r) == path_of(key));
        match q.waiting.iter().position(|job| job.due <= now && !busy(&job.key, &q.running)) {
            Some(at) => {
                let job = q.waiting.remove(at).expect("a position in the queue");
                q.running.push((job.key.clone(), job.since));
                Ok(job)
            }
            None => Err(q.waiting.iter().map(|job| job.due).min()),
        }
    }

    /// `job` ended: done (or moot), failed and queued again after its backoff, or put off
    /// (queued again for then, not a failure).
    fn finish(&self, mut job: Job, ended: Ended) {
        let mut q = self.queue.lock();
        q.running.retain(|(key, _)| *key != job.key);
        job.due = match ended {
            Ended::Done => {
                q.members.remove(&job.key);
                q.committed.remove(&job.key);
                return;
            }
            Ended::Failed => {
                job.failures += 1;
                Instant::now() + crate::manager::RETRY.pause_after(job.failures)
            }
            Ended::PutOff(wait) => Instant::now() + wait,
        };
        q.waiting.push_back(job);
    }

    /// Exports queued or running, and how long the oldest has waited since first queued.
    pub(crate) fn backlog(&self) -> (usize, Duration) {
        let q = self.queue.lock();
        let oldest = q.waiting.iter().map(|job| job.since).chain(q.running.iter().map(|(_, since)| *since)).min();
        (q.waiting.len() + q.running.len(), oldest.map(|t| t.elapsed()).unwrap_or_default())
    }

    /// `key`'s file is in Blob; its manifest's flush comes next.
    pub(crate) fn exported(&self, key: &BlockKey) {
        self.queue.lock().exported.insert(key.clone());
    }

    /// Whether `key`'s file is in Blob, its manifest's own flush still to come.
    pub(crate) fn is_exported(&self, key: &BlockKey) -> bool {
        self.queue.lock().exported.contains(key)
    }

    /// `key`'s manifest is flushed (or gone): it needs no memory of its export any more.
    pub(crate) fn forget(&self, key: &BlockKey) {
        self.queue.lock().exported.remove(key);
    }
}

impl Objects {
    /// Starts the exporters: `blob.export_concurrency` tasks taking due exports from the
    /// queue. They hold the manager weakly (strongly only while exporting), so they end
    /// once it is dropped, or at shutdown (an export under way finishes first; what is
    /// queued is queued again at the next start).
    pub(crate) fn spawn_exporter(&self) {
        let Some(exports) = self.exports().cloned() else { return };
        for _ in 0..exports.concurrency {
            let (weak, exports, tasks) = (self.downgrade(), exports.clone(), self.node.tasks().clone());
            self.node.tasks().spawn(async move {
                while !tasks.stopping() {
                    let work = exports.wake.notified();
                    let job = match exports.take() {
                        Ok(job) => job,
                        Err(next) => {
                            // New work, the next retry coming due, or a look at whether the
                            // manager was dropped, whichever is first.
                            let second = Instant::now() + Duration::from_secs(1);
                            let due = next.map_or(second, |t| t.min(second));
                            let _ = tasks.unless_stopped(tokio::time::timeout_at(due, work)).await;
                            if weak.upgrade().is_none() {
                                return;
                            }
                            continue;
                        }
                    };
                    let Some(manager) = weak.upgrade() else { return };
                    let ended = match manager.export(&job.key).await {
                        Ok(Exported::Done) => Ended::Done,
                        Ok(Exported::NotSettled(wait)) => {
                            manager.node.metrics().exports_waiting_to_settle.inc();
                            tracing::debug!(manifest = %job.key, ?wait, "export put off until the version settles");
                            Ended::PutOff(wait)
                        }
                        Err(failure) => {
                            let reason = failure.reason.as_str();
                            manager.node.metrics().object_export_failures.with_label_values(&[reason]).inc();
                            // Said at the first failures and then ever more rarely: a
                            // stuck export shows in the metrics, not in a flood of lines.
                            let n = job.failures + 1;
                            if n.is_power_of_two() {
                                tracing::warn!(manifest = %job.key, failures = n, reason, error = %failure.error,
                                    "exporting an object to Blob failed; retrying with backoff");
                            }
                            Ended::Failed
                        }
                    };
                    drop(manager);
                    exports.finish(job, ended);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exports() -> (tempfile::TempDir, Arc<Exports>) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let blobs = ObjectBlobs::open(&url, &[], kvtier_tiers::Retries::default()).unwrap();
        (dir, Arc::new(Exports::new(blobs, 1, Duration::from_secs(40), Tasks::default())))
    }

    /// A commit's hold holds back its export until it ends; one dropped unreleased (its
    /// request cancelled mid-commit) lets it go as a commit of unknown outcome, which stands.
    #[test]
    fn a_hold_dropped_unreleased_lets_its_export_go() {
        let (_dir, exports) = exports();
        let key = BlockKey::parse("ns", b"m/held").unwrap();
        let hold = exports.hold(&key);
        exports.enqueue(key.clone());
        assert_eq!(exports.backlog().0, 0, "held back");
        drop(hold);
        assert_eq!(exports.backlog().0, 1, "queued once the hold went");
        assert!(exports.committed_here(&key));

        // Released as undone everywhere: nothing to export, and not this node's commit.
        let undone = BlockKey::parse("ns", b"m/undone").unwrap();
        let hold = exports.hold(&undone);
        exports.enqueue(undone.clone());
        hold.release(false);
        assert_eq!(exports.backlog().0, 1);
        assert!(!exports.committed_here(&undone));
    }
}
