//! Manifests a newer version replaced, kept until that version is settled.
//!
//! A member that learns a newer version of a path (a commit, a delete marker, a copy that
//! resync or handoff brings) may not drop the older manifest at once: the newer commit may
//! still be undone (short of its quorum), and then the primary teaches its owners the older
//! version again from its own copy. So an older manifest goes only once the newer version
//! is settled ([`Objects::settled`]): at once when it already is, else when a later look
//! finds it so. Until then the older manifest stays where it is, out of the catalog; were it
//! never dropped, a write-back copy would stay pinned as unflushed for ever, and a restart
//! would rebuild the catalog from it after the newer version's marker expired.

use kvtier_tiers::{BlockKey, Namespace};
use parking_lot::Mutex;

use super::Objects;
use super::manifest_key;

/// An older manifest held on this node, waiting for the version that replaced it to settle.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Waiting {
    namespace: Namespace,
    path: String,
    generation: u64,
}

impl Waiting {
    fn key(&self) -> BlockKey {
        manifest_key(&self.namespace, &self.path, self.generation)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Drop,
    Wait,
    Keep,
}

/// The older manifests on this node that wait for a newer version to settle.
#[derive(Debug, Default)]
pub(crate) struct Superseded {
    waiting: Mutex<Vec<Waiting>>,
}

impl Objects {
    /// `path`'s manifest of `generation` (of `ns`) is older than the catalog's version,
    /// which is settled or not: dropped now if it is, else once it is.
    pub(crate) async fn superseded(&self, ns: &Namespace, path: &str, generation: u64, newer_settled: bool) {
        let waiting = Waiting { namespace: ns.clone(), path: path.to_string(), generation };
        if newer_settled {
            tracing::debug!(manifest = %waiting.key(), "objects: dropping the manifest of a version a settled one replaced");
            self.node.delete_here(&waiting.key()).await;
            return;
        }
        let mut all = self.catalog.superseded.waiting.lock();
        if !all.iter().any(|w| w.namespace == waiting.namespace && w.path == waiting.path && w.generation == generation)
        {
            all.push(waiting);
        }
    }

    /// What becomes of a waiting manifest, by the catalog now.
    fn verdict(&self, w: &Waiting) -> Verdict {
        match self.catalog.objects.read().get(&(w.namespace.clone(), w.path.clone())) {
            Some(now) if now.generation > w.generation && self.settled(now) => Verdict::Drop,
            Some(now) if now.generation > w.generation => Verdict::Wait,
            // The newer commit was undone: this version is current again.
            Some(_) => Verdict::Keep,
            // An undo between its delete and its teaching the older version again, or a
            // delete marker whose expiry drops it (`drop_superseded_of`).
            None => Verdict::Wait,
        }
    }

    /// Drops the waiting manifests whose newer version is now settled, each under its
    /// path's lock (an undo running long holds it: never dropped under it); forgets those
    /// whose version is current again. How many were dropped.
    pub(crate) async fn drop_settled_superseded(&self) -> usize {
        let mut due = Vec::new();
        self.catalog.superseded.waiting.lock().retain(|w| match self.verdict(w) {
            Verdict::Keep => false,
            Verdict::Drop => {
                due.push(w.clone());
                true
            }
            Verdict::Wait => true,
        });
        let mut dropped = 0;
        for w in due {
            let _path = self.catalog.locks.lock(&manifest_key(&w.namespace, &w.path, 0)).await;
            let verdict = self.verdict(&w);
            if verdict == Verdict::Drop {
                tracing::debug!(manifest = %w.key(), "objects: dropping the manifest of a version a settled one replaced");
                self.node.delete_here(&w.key()).await;
                dropped += 1;
            }
            if verdict != Verdict::Wait {
                self.catalog.superseded.waiting.lock().retain(|o| o != &w);
            }
        }
        dropped
    }

    /// Drops every waiting manifest of `path` (its delete marker expires: the versions it
    /// replaced are long settled).
    pub(crate) async fn drop_superseded_of(&self, ns: &Namespace, path: &str) {
        let dead: Vec<BlockKey> = {
            let mut waiting = self.catalog.superseded.waiting.lock();
            let mut dead = Vec::new();
            waiting.retain(|w| {
                let of_path = w.namespace == *ns && w.path == path;
                if of_path {
                    dead.push(w.key());
                }
                !of_path
            });
            dead
        };
        for key in &dead {
            self.node.delete_here(key).await;
        }
    }
}
