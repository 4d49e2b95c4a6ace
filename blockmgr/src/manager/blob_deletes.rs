//! Deletes of Blob copies that could not be made yet, kept until they are.
//!
//! A delete removes a block's local copies at once; its Blob copy goes with a deletion
//! record in Blob, which needs Blob to answer. One that could not be written (Blob down, or
//! not loaded yet at start) was only logged, and the copy stayed in the node's segments: a
//! restart, or a node started on a wiped disk, indexed it again, and a deleted object's
//! manifest came back (the fault run saw deleted files listed again after a wipe). Such a
//! delete is now held in a file in the data dir (`blob-deletes`, one `namespace<TAB>hex
//! key` per line: a hold appends a line, a drop rewrites the file), retried until Blob takes
//! it, applied when Blob is loaded, and dropped when the key is flushed again (the copy to
//! delete is the old one).

use std::{collections::HashSet, path::PathBuf};

use kvtier_tiers::{BlockKey, Key, Namespace};

/// The held deletes, and their file.
#[derive(Debug)]
pub(crate) struct BlobDeletes {
    path: PathBuf,
    keys: parking_lot::Mutex<HashSet<BlockKey>>,
    /// One change of the file at a time.
    writes: tokio::sync::Mutex<()>,
}

impl BlobDeletes {
    /// The deletes held in `path` (none when it does not exist; unreadable lines are skipped
    /// and named).
    pub(crate) fn open(path: PathBuf) -> BlobDeletes {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut keys = HashSet::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            match parse(line) {
                Some(key) => {
                    keys.insert(key);
                }
                None => tracing::warn!(file = %path.display(), line, "skipping a held Blob delete that does not parse"),
            }
        }
        if !keys.is_empty() {
            tracing::info!(blocks = keys.len(), "Blob deletes held from before the restart");
        }
        BlobDeletes { path, keys: parking_lot::Mutex::new(keys), writes: tokio::sync::Mutex::new(()) }
    }

    /// How many are held.
    pub(crate) fn len(&self) -> usize {
        self.keys.lock().len()
    }

    /// The keys held.
    pub(crate) fn keys(&self) -> Vec<BlockKey> {
        self.keys.lock().iter().cloned().collect()
    }

    /// The keys held, as a set.
    pub(crate) fn set(&self) -> HashSet<BlockKey> {
        self.keys.lock().clone()
    }

    /// Holds the delete of `key`'s Blob copy (a line appended to the file, on disk before
    /// this returns: a long outage costs a line per delete, not the whole list each time).
    pub(crate) async fn hold(&self, key: &BlockKey) {
        // The file's lock first: a drop's rewrite then either sees this key or comes after
        // its line (never a line for a key already dropped).
        let _one = self.writes.lock().await;
        if !self.keys.lock().insert(key.clone()) {
            return;
        }
        let (path, line) = (self.path.clone(), line(key));
        let appended = tokio::task::spawn_blocking(move || append(&path, line.as_bytes())).await;
        if let Ok(Err(e)) | Err(e) = appended.map_err(std::io::Error::other) {
            tracing::warn!(file = %self.path.display(), error = %e, "holding a Blob delete on disk failed (held in memory)");
        }
    }

    /// Drops the held deletes of `keys` (done, or the keys were stored again).
    pub(crate) async fn drop_keys(&self, keys: &[BlockKey]) {
        let changed = {
            let mut held = self.keys.lock();
            let before = held.len();
            if before == 0 {
                return;
            }
            for key in keys {
                held.remove(key);
            }
            held.len() != before
        };
        if changed {
            self.persist().await;
        }
    }

    /// Writes the list as it is now (a new file renamed over the old: a crash leaves one or
    /// the other). A failure is logged: the deletes stay held in memory and are retried.
    async fn persist(&self) {
        let _one = self.writes.lock().await;
        let text: String = self.keys.lock().iter().map(line).collect();
        let path = self.path.clone();
        let written = tokio::task::spawn_blocking(move || write_whole(&path, text.as_bytes())).await;
        if let Ok(Err(e)) | Err(e) = written.map_err(std::io::Error::other) {
            tracing::warn!(file = %self.path.display(), error = %e, "writing the held Blob deletes failed");
        }
    }
}

fn line(key: &BlockKey) -> String {
    format!("{}\t{}\n", key.namespace, hex::encode(key.key.as_bytes()))
}

fn append(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    file.write_all(bytes)?;
    file.sync_data()
}

fn parse(line: &str) -> Option<BlockKey> {
    let (ns, key) = line.split_once('\t')?;
    let key = Key::new(&hex::decode(key).ok()?).ok()?;
    Some(BlockKey::new(Namespace::new(ns).ok()?, key))
}

fn write_whole(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
