//! Named objects (checkpoint files) in an object store under their own names, so other
//! tools find a file where its name says: `<prefix>/<namespace>/<path>`, the namespace with
//! each `/` written `%2F` (as in `kvtier://` URLs).
//!
//! A file is written as a multipart upload: any node may stage a part (Azure Put Block, S3
//! UploadPart, a staged file for a local directory) and one commit joins them (Put Block
//! List, CompleteMultipartUpload, a rename). That is the fan-in: each node sends Blob the
//! parts it holds, and no node relays the whole file. `object_store`'s `MultipartStore`
//! gives this for Azure, S3 and GCS, so kvtier needs no Azure-only crate for it.

use std::{ops::Range, sync::Arc};

use bytes::Bytes;
use object_store::{
    ObjectStore, PutPayload,
    multipart::{MultipartStore, PartId},
    path::{Path, PathPart},
};

use super::{Counters, Retries, StoreRequests, store};
use crate::{Error, Namespace, Result};

/// The smallest part S3 accepts (all but the last part); parts are at least this big.
pub const MIN_PART: u64 = 5 << 20;
/// The most parts of one upload S3 accepts.
pub const MAX_PARTS: u64 = 10_000;

/// A multipart upload under way: what a node needs to stage a part of it (it crosses the
/// wire to peers, so it is plain strings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// The object's name in the store.
    pub name: String,
    /// The store's id of the upload (empty for Azure, which needs none).
    pub id: String,
}

/// Named objects in one store. See the module documentation.
pub struct ObjectBlobs {
    store: Arc<dyn ObjectStore>,
    parts: Arc<dyn MultipartStore>,
    prefix: Path,
    url: String,
    counters: Counters,
}

impl std::fmt::Debug for ObjectBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectBlobs({})", self.url)
    }
}

impl std::fmt::Display for ObjectBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "objects({})", self.url)
    }
}

impl ObjectBlobs {
    /// The objects under `url` (`az://container/prefix`, `s3://...`, `gs://...`,
    /// `file:///dir`), with `object_store`'s `options`; nothing is sent until used.
    pub fn open(url: &str, options: &[(String, String)], retries: Retries) -> Result<Self> {
        let (parsed, _) = store::parse(url, "blob.objects_url")?;
        let store::Opened { store, parts, prefix } = store::open(&parsed, options, retries)?;
        Ok(ObjectBlobs { store, parts, prefix, url: url.to_string(), counters: Counters::default() })
    }

    /// The name of `path` of `namespace` in the store.
    pub fn name(&self, namespace: &Namespace, path: &str) -> String {
        let parts = self.prefix.parts().chain(std::iter::once(PathPart::from(namespace.as_str())));
        Path::from_iter(parts.chain(path.split('/').map(PathPart::from))).to_string()
    }

    /// Requests sent since opening (PUTs count staged parts and commits).
    pub fn requests(&self) -> StoreRequests {
        self.counters.snapshot()
    }

    fn error(&self, op: &'static str, object: &str, source: object_store::Error) -> Error {
        Error::Store { tier: self.to_string(), op, object: object.to_string(), source: Box::new(source) }
    }

    /// Starts an upload of `name`.
    pub async fn begin(&self, name: &str) -> Result<Upload> {
        Counters::count(&self.counters.other, 1);
        let id = self.parts.create_multipart(&path_of(name)).await.map_err(|e| self.error("begin upload", name, e))?;
        Ok(Upload { name: name.to_string(), id })
    }

    /// Stages part `index` (from 0) of `upload`; the id the commit names it by.
    pub async fn stage(&self, upload: &Upload, index: usize, data: Bytes) -> Result<String> {
        Counters::count(&self.counters.puts, 1);
        Counters::count(&self.counters.put_bytes, data.len() as u64);
        let part = self
            .parts
            .put_part(&path_of(&upload.name), &upload.id, index, PutPayload::from_bytes(data))
            .await
            .map_err(|e| self.error("stage part", &format!("{} (part {index})", upload.name), e))?;
        Ok(part.content_id)
    }

    /// Commits `upload` from its staged `parts`, in order: the object is replaced whole.
    pub async fn finish(&self, upload: &Upload, parts: Vec<String>) -> Result<()> {
        Counters::count(&self.counters.puts, 1);
        let parts = parts.into_iter().map(|content_id| PartId { content_id }).collect();
        self.parts
            .complete_multipart(&path_of(&upload.name), &upload.id, parts)
            .await
            .map(|_| ())
            .map_err(|e| self.error("commit upload", &upload.name, e))
    }

    /// Gives `upload` up (what was staged is dropped; Azure drops staged blocks itself).
    pub async fn abort(&self, upload: &Upload) {
        Counters::count(&self.counters.other, 1);
        if let Err(e) = self.parts.abort_multipart(&path_of(&upload.name), &upload.id).await {
            tracing::warn!(object = %upload.name, error = %e, "aborting an object upload failed");
        }
    }

    /// Stores `name` whole in one PUT (an object too small for parts, or empty).
    pub async fn put(&self, name: &str, data: Bytes) -> Result<()> {
        Counters::count(&self.counters.puts, 1);
        Counters::count(&self.counters.put_bytes, data.len() as u64);
        self.store
            .put(&path_of(name), PutPayload::from_bytes(data))
            .await
            .map(|_| ())
            .map_err(|e| self.error("put", name, e))
    }

    /// Bytes `range` of `name`, or `None` if there is no such object.
    pub async fn read(&self, name: &str, range: Range<u64>) -> Result<Option<Bytes>> {
        Counters::count(&self.counters.gets, 1);
        match self.store.get_range(&path_of(name), range).await {
            Ok(bytes) => {
                Counters::count(&self.counters.get_bytes, bytes.len() as u64);
                Ok(Some(bytes))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error("get", name, e)),
        }
    }

    /// The size of `name`, or `None` if there is no such object.
    pub async fn size(&self, name: &str) -> Result<Option<u64>> {
        Counters::count(&self.counters.other, 1);
        match self.store.head(&path_of(name)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error("head", name, e)),
        }
    }

    /// Removes `name` (no error if it is not there).
    pub async fn delete(&self, name: &str) -> Result<()> {
        Counters::count(&self.counters.other, 1);
        match self.store.delete(&path_of(name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error("delete", name, e)),
        }
    }
}

/// A name made by [`ObjectBlobs::name`], already encoded (`Path::from` would encode its
/// `%` again).
fn path_of(name: &str) -> Path {
    Path::parse(name).unwrap_or_else(|_| Path::from(name))
}

/// How an object of `size` bytes in chunks of `chunk_size` is cut into parts: chunks per
/// part, so every part but the last is at least [`MIN_PART`] and there are at most
/// [`MAX_PARTS`].
pub fn chunks_per_part(size: u64, chunk_size: u64) -> u64 {
    let chunk_size = chunk_size.max(1);
    let chunks = size.div_ceil(chunk_size);
    MIN_PART.div_ceil(chunk_size).max(chunks.div_ceil(MAX_PARTS)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> (tempfile::TempDir, ObjectBlobs) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/objects", dir.path().display());
        let blobs = ObjectBlobs::open(&url, &[], Retries::default()).unwrap();
        (dir, blobs)
    }

    /// Every backend: a directory, memory, a real Azurite and a real S3 server (moto).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parts_staged_in_any_order_make_one_file_under_its_own_name() {
        let azurite = kvtier_testkit::Azurite::start();
        let s3 = kvtier_testkit::S3Server::start();
        let open =
            |url: &str, options: Vec<(String, String)>| ObjectBlobs::open(url, &options, Retries::default()).unwrap();
        let backends = [
            local(),
            (tempfile::tempdir().unwrap(), open("memory:///o", vec![])),
            (tempfile::tempdir().unwrap(), open("az://kvtier/objects", azurite.options())),
            (tempfile::tempdir().unwrap(), open("s3://kvtier/objects", s3.options())),
        ];
        for (dir, blobs) in backends {
            let ns = Namespace::new("acme/ckpt").unwrap();
            let name = blobs.name(&ns, "run1/step-100/rank-0.distcp");
            assert!(name.ends_with("acme%2Fckpt/run1/step-100/rank-0.distcp"), "{name}");
            let data: Vec<u8> = (0..(11u32 << 20)).map(|i| (i % 251) as u8).collect();
            let pieces: Vec<Bytes> = data.chunks(5 << 20).map(Bytes::copy_from_slice).collect();
            let upload = blobs.begin(&name).await.unwrap();
            let mut ids = vec![String::new(); pieces.len()];
            for i in [2, 0, 1] {
                ids[i] = blobs.stage(&upload, i, pieces[i].clone()).await.unwrap();
            }
            assert_eq!(blobs.read(&name, 0..1).await.unwrap(), None, "nothing shows before the commit");
            blobs.finish(&upload, ids).await.unwrap();
            let got = blobs.read(&name, 0..data.len() as u64).await.unwrap().unwrap();
            assert!(got == data, "the file is the parts in order");
            assert_eq!(blobs.read(&name, 5..8).await.unwrap().unwrap(), &data[5..8]);
            if blobs.url.starts_with("file://") {
                let file = dir.path().join("objects/acme%2Fckpt/run1/step-100/rank-0.distcp");
                assert_eq!(std::fs::read(&file).unwrap(), data, "other tools read it as a plain file");
                let staging = dir.path().join("objects/acme%2Fckpt/run1/step-100/.kvtier-staging");
                assert!(!staging.exists(), "the staged parts are gone");
            }
            // An abandoned upload leaves the old file as it was.
            let upload = blobs.begin(&name).await.unwrap();
            blobs.stage(&upload, 0, Bytes::from_static(b"partial")).await.unwrap();
            blobs.abort(&upload).await;
            assert_eq!(blobs.read(&name, 0..3).await.unwrap().unwrap(), &data[..3]);
            blobs.delete(&name).await.unwrap();
            blobs.delete(&name).await.unwrap();
            assert_eq!(blobs.read(&name, 0..1).await.unwrap(), None);
            assert!(blobs.requests().puts >= 5);
        }
    }

    #[tokio::test]
    async fn a_part_of_another_upload_is_refused() {
        let (_dir, blobs) = local();
        let ns = Namespace::new("ns").unwrap();
        let (a, b) = (blobs.name(&ns, "a.bin"), blobs.name(&ns, "b.bin"));
        let (ua, ub) = (blobs.begin(&a).await.unwrap(), blobs.begin(&b).await.unwrap());
        let foreign = blobs.stage(&ub, 0, Bytes::from_static(b"b's bytes")).await.unwrap();
        let err = blobs.finish(&ua, vec![foreign]).await.unwrap_err();
        assert!(err.to_string().contains("commit upload") && err.to_string().contains("a.bin"), "{err}");
        assert_eq!(blobs.read(&a, 0..1).await.unwrap(), None);
    }

    #[test]
    fn parts_are_at_least_5_mib_and_at_most_10000() {
        assert_eq!(chunks_per_part(100 << 20, 1 << 20), 5);
        assert_eq!(chunks_per_part(100 << 20, 2 << 20), 3);
        assert_eq!(chunks_per_part(100 << 20, 64 << 20), 1);
        assert_eq!(chunks_per_part(0, 1 << 20), 5);
        let huge = 200u64 << 30; // 200 GiB in 1 MiB chunks: 204800 chunks
        let per = chunks_per_part(huge, 1 << 20);
        assert!((huge >> 20).div_ceil(per) <= MAX_PARTS && per >= 5, "{per}");
    }
}
