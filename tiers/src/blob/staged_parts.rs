//! Multipart uploads for stores whose own `object_store` lacks them (a local directory) or
//! gets them wrong (`InMemory` panics on parts staged out of order): each part is an object
//! of its own under a hidden staging directory beside the object, and the commit streams
//! them, in order, into the object (for a directory, a temporary file renamed into place,
//! so a reader never sees half of it), then removes them.

use std::sync::Arc;

use async_trait::async_trait;
use futures::TryStreamExt;
use object_store::{
    MultipartId, ObjectStore, PutPayload, PutResult, Result,
    multipart::{MultipartStore, PartId},
    path::Path,
};

/// The staging directory beside the objects of a directory.
const STAGING: &str = ".kvtier-staging";

/// [`MultipartStore`] made of plain objects (see the module documentation).
#[derive(Debug)]
pub(super) struct StagedParts {
    store: Arc<dyn ObjectStore>,
}

impl StagedParts {
    pub(super) fn new(store: Arc<dyn ObjectStore>) -> Self {
        StagedParts { store }
    }

    /// `<dir of path>/.kvtier-staging/<id>`.
    fn staging(path: &Path, id: &MultipartId) -> Path {
        let text = path.as_ref();
        let dir = text.rsplit_once('/').map_or("", |(dir, _)| dir);
        let sep = if dir.is_empty() { "" } else { "/" };
        // `dir` is encoded already: parsed, not encoded again.
        let staging = format!("{dir}{sep}{STAGING}/{id}");
        Path::parse(&staging).unwrap_or_else(|_| Path::from(staging))
    }
}

impl std::fmt::Display for StagedParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StagedParts({})", self.store)
    }
}

#[async_trait]
impl MultipartStore for StagedParts {
    async fn create_multipart(&self, _path: &Path) -> Result<MultipartId> {
        Ok(format!("{:032x}", rand::random::<u128>()))
    }

    async fn put_part(&self, path: &Path, id: &MultipartId, part_idx: usize, data: PutPayload) -> Result<PartId> {
        let part = Self::staging(path, id).child(format!("{part_idx:06}"));
        self.store.put(&part, data).await?;
        Ok(PartId { content_id: part.to_string() })
    }

    async fn complete_multipart(&self, path: &Path, id: &MultipartId, parts: Vec<PartId>) -> Result<PutResult> {
        let staging = Self::staging(path, id);
        let mut upload = self.store.put_multipart(path).await?;
        for part in &parts {
            let part_path = Path::parse(&part.content_id).unwrap_or_else(|_| Path::from(part.content_id.as_str()));
            if !part_path.prefix_matches(&staging) {
                upload.abort().await?;
                return Err(object_store::Error::Generic {
                    store: "StagedParts",
                    source: format!("{part_path} is not a part of upload {id} of {path}").into(),
                });
            }
            let bytes = self.store.get(&part_path).await?.bytes().await?;
            upload.put_part(PutPayload::from_bytes(bytes)).await?;
        }
        let done = upload.complete().await?;
        self.abort_multipart(path, id).await?;
        Ok(done)
    }

    async fn abort_multipart(&self, path: &Path, id: &MultipartId) -> Result<()> {
        let staged: Vec<_> = self.store.list(Some(&Self::staging(path, id))).try_collect().await?;
        for meta in staged {
            self.store.delete(&meta.location).await?;
        }
        Ok(())
    }
}
