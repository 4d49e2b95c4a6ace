//! Writing a named object: [`ObjectWriter`] stores chunks as they fill and commits the
//! manifest (objects.rs describes the layout).

use crate::NodeError;
use bytes::BytesMut;
use kvtier_tiers::{Block, BlockKey, Namespace};

use super::Objects;
use super::{CommitIf, ObjectInfo, check_path, chunk_key, now_unix};
use crate::Durability;

/// Bytes of a new object arriving piece by piece; chunks are stored as they fill.
/// Nothing is visible until [`ObjectWriter::commit`]. A writer dropped before its commit or
/// abort (a request cancelled by its client, a dropped Python upload) deletes its chunks
/// in the background, as an abort would.
pub struct ObjectWriter {
    objects: Objects,
    namespace: Namespace,
    path: String,
    durability: Durability,
    /// The manifest's durability: the chunks' (or, for a part, never write-back).
    manifest_durability: Durability,
    chunk_size: u64,
    id: u64,
    buf: BytesMut,
    /// Chunks whose store began (the last may have failed or been cut short).
    begun: u64,
    size: u64,
    crc32c: u32,
    chunk_crc32c: Vec<u32>,
    /// What the writer says of the object besides its bytes (`ObjectInfo::attributes`).
    attributes: std::collections::BTreeMap<String, String>,
    /// Set at commit or abort: from then on `Drop` leaves the chunks alone.
    finished: bool,
    /// The runtime the chunks were stored from, for `Drop`'s clean-up.
    runtime: Option<tokio::runtime::Handle>,
    /// This upload's chunks are being written: no orphan sweep takes them.
    _writing: super::orphans::WritingGuard,
}

impl std::fmt::Debug for ObjectWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectWriter")
            .field("namespace", &self.namespace)
            .field("path", &self.path)
            .field("size", &self.size)
            .field("chunks_begun", &self.begun)
            .finish_non_exhaustive()
    }
}

impl ObjectWriter {
    /// Appends bytes.
    pub async fn write(&mut self, mut data: &[u8]) -> Result<(), NodeError> {
        self.crc32c = kvtier_tiers::crc32c_append(self.crc32c, data);
        self.size += data.len() as u64;
        while !data.is_empty() {
            let room = self.chunk_size as usize - self.buf.len();
            let (now, rest) = data.split_at(room.min(data.len()));
            self.buf.extend_from_slice(now);
            data = rest;
            if self.buf.len() as u64 == self.chunk_size {
                self.store_chunk().await?;
            }
        }
        Ok(())
    }

    async fn store_chunk(&mut self) -> Result<(), NodeError> {
        let bytes = self.buf.split().freeze();
        let key = chunk_key(&self.namespace, self.id, self.begun);
        self.runtime.get_or_insert_with(tokio::runtime::Handle::current);
        self.begun += 1;
        let block = Block::new(key, bytes);
        self.chunk_crc32c.push(block.crc32c);
        self.objects.node.put(block, self.durability).await?;
        Ok(())
    }

    /// Deletes every chunk this writer may have stored, on a task of its own: a caller
    /// cancelled while waiting (hyper drops a handler whose client reset the stream) does not
    /// cut the clean-up short. `None` if nothing was stored.
    fn delete_chunks(&mut self) -> Option<tokio::task::JoinHandle<()>> {
        self.finished = true;
        let runtime = self.runtime.take()?;
        let keys: Vec<BlockKey> = (0..self.begun).map(|i| chunk_key(&self.namespace, self.id, i)).collect();
        let objects = self.objects.clone();
        Some(runtime.spawn(async move {
            for key in keys {
                objects.node.delete(&key).await;
            }
        }))
    }

    /// Bytes received so far, and their CRC-32C.
    pub fn received(&self) -> (u64, u32) {
        (self.size, self.crc32c)
    }

    /// The manifest of what was written (taking the chunks' CRCs).
    fn manifest(&mut self) -> ObjectInfo {
        ObjectInfo {
            path: self.path.clone(),
            size: self.size,
            generation: 0, // the path's primary assigns it
            chunk_size: self.chunk_size,
            crc32c: self.crc32c,
            created_unix: now_unix(),
            id: self.id,
            chunk_crc32c: std::mem::take(&mut self.chunk_crc32c),
            runs: Vec::new(),
            deleted: false,
            retired: Vec::new(),
            attributes: std::mem::take(&mut self.attributes),
        }
    }

    /// Sets what the version will say of itself besides its bytes (S3's metadata: see
    /// `ObjectInfo::attributes`).
    pub fn set_attributes(&mut self, attributes: std::collections::BTreeMap<String, String>) {
        self.attributes = attributes;
    }

    /// Stores the last chunk and commits the manifest: from here readers see this version.
    pub async fn commit(self) -> Result<ObjectInfo, NodeError> {
        Ok(self.commit_if(CommitIf::Any).await?.expect("an unconditional commit commits"))
    }

    /// Commits only if `path` has no version yet (S3's `If-None-Match: *`).
    pub async fn commit_if_absent(self) -> Result<Option<ObjectInfo>, NodeError> {
        self.commit_if(CommitIf::Absent).await
    }

    /// Stores the last chunk and commits the manifest only if the path's current version
    /// meets `condition`, decided by the path's primary under its lock, so of writers racing
    /// through any nodes one at most meets it. `None`: it did not; this one's chunks are
    /// deleted.
    ///
    /// Once called, the commit runs to its end in the node's tasks even if the caller goes
    /// away (an HTTP client that resets its request drops the handler awaiting this): half a
    /// commit would leave its chunks to the start-up sweep, and its outcome to nobody. A
    /// shutdown waits for it.
    pub async fn commit_if(self, condition: CommitIf) -> Result<Option<ObjectInfo>, NodeError> {
        let tasks = self.objects.node.tasks().clone();
        crate::manager::detached(&tasks, self.commit_to_end(condition)).await
    }

    async fn commit_to_end(mut self, condition: CommitIf) -> Result<Option<ObjectInfo>, NodeError> {
        if !self.buf.is_empty() {
            // Before the manifest: a failure here commits nothing (dropped, the writer
            // deletes its chunks), whatever the chunk's own put left behind.
            self.store_chunk().await.map_err(|e| NodeError::NotCommitted {
                what: format!("{}/{}", self.namespace, self.path),
                cause: format!("storing its last chunk: {e}"),
            })?;
        }
        let info = self.manifest();
        // From here a manifest may name the chunks, so they are never deleted on this
        // writer's behalf: a commit that fails or is cut short leaves them to the start-up
        // sweep of unnamed chunks rather than risk breaking a version that did commit.
        self.finished = true;
        let committed = self.objects.commit_manifest(&self.namespace, info, self.manifest_durability, condition).await;
        // Refused (the current version is another writer's: one of this writer's own,
        // committed by a call whose answer was lost, is answered as committed), or failed
        // and undone everywhere: no manifest names these chunks. (After a failure of unknown
        // outcome a manifest may; they stay, and the orphan sweep finds them if none does.)
        if matches!(committed, Ok(None) | Err(NodeError::NotCommitted { .. }))
            && let Some(deleting) = self.delete_chunks()
        {
            let _ = deleting.await;
        }
        committed
    }

    /// Gives up: the chunks stored so far are deleted; the object stays as it was.
    pub async fn abort(mut self) {
        if let Some(deleting) = self.delete_chunks() {
            let _ = deleting.await;
        }
    }
}

impl Drop for ObjectWriter {
    fn drop(&mut self) {
        if !self.finished && self.delete_chunks().is_some() {
            tracing::debug!(path = %self.path, "an object upload dropped before its commit: deleting its chunks");
        }
    }
}

impl Objects {
    /// Starts a new version of `path` in `namespace`.
    pub fn write_object(&self, namespace: &str, path: &str, durability: Durability) -> Result<ObjectWriter, NodeError> {
        self.object_writer(namespace, path, durability, durability)
    }

    /// Starts a part of an object to be joined ([`ObjectInfo::joined`]): its chunks are
    /// stored with `durability`, but a write-back part is never exported to Blob on its own
    /// (its manifest stays on local disk), so its chunks stay pinned until the joined object
    /// that adopts them is exported, or the part is deleted.
    pub fn write_part(&self, namespace: &str, path: &str, durability: Durability) -> Result<ObjectWriter, NodeError> {
        let manifest = if durability == Durability::WriteBack { Durability::LocalDisk } else { durability };
        self.object_writer(namespace, path, durability, manifest)
    }

    fn object_writer(
        &self,
        namespace: &str,
        path: &str,
        durability: Durability,
        manifest_durability: Durability,
    ) -> Result<ObjectWriter, NodeError> {
        check_path(path)?;
        let namespace = Namespace::new(namespace)?;
        let id = rand::random();
        Ok(ObjectWriter {
            _writing: self.writing(&namespace, [id]),
            objects: self.clone(),
            namespace,
            path: path.to_string(),
            durability,
            manifest_durability,
            chunk_size: self.node.object_chunk_size(),
            id,
            buf: BytesMut::new(),
            begun: 0,
            size: 0,
            crc32c: 0,
            chunk_crc32c: Vec::new(),
            attributes: Default::default(),
            finished: false,
            runtime: None,
        })
    }
}
