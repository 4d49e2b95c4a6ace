//! Staging an object's file in Blob: its parts, each staged by the node that holds its
//! chunks (the fan-in of objects/export.rs), then committed in one request.
//!
//! What a try stages is kept when the try fails (a stager away, the check that the version
//! is still current not answered, the commit refused) and the next try stages only what is
//! missing: every retry restaging a whole file piled up staged bytes no commit ever took
//! (Azure keeps a blob's uncommitted blocks for a week, S3 an upload until it is aborted;
//! both bill them): the 1000-fault run at e81cca5 saw Azurite's workspace grow by 31 GiB in
//! 15 minutes while the writers wrote 4.5 MiB/s.

use std::collections::{BTreeMap, HashMap};

use crate::NodeError;
use bytes::BytesMut;
use futures::{StreamExt, TryStreamExt};
use kvtier_tiers::{
    BlockKey, Error as TierError, MAX_PARTS, MIN_PART, Namespace, ObjectBlobs, Upload, chunks_per_part,
};
use parking_lot::Mutex;

use super::Objects;
use super::{
    ObjectInfo,
    failure::{ExportFailure, FailureReason},
};

/// Parts one node stages at once.
const STAGE_CONCURRENCY: usize = 4;

/// An upload of an object's file and the ids of the parts staged for it so far.
#[derive(Debug)]
pub(crate) struct Staging {
    pub(crate) upload: Upload,
    ids: BTreeMap<u32, String>,
    /// A commit of it failed once: the store may have dropped what was staged (Azure drops a
    /// blob's uncommitted blocks when another file is committed under its name, S3 an
    /// aborted upload's parts), so a second failure gives it up and the next try restages.
    commit_failed: bool,
}

impl Staging {
    fn new(upload: Upload) -> Self {
        Staging { upload, ids: BTreeMap::new(), commit_failed: false }
    }
}

/// What failed exports staged, by manifest, for their next try.
#[derive(Debug, Default)]
pub(crate) struct StagedUploads(Mutex<HashMap<BlockKey, Staging>>);

impl StagedUploads {
    /// Keeps what a failed export of `key` staged, for its next try.
    pub(super) fn keep(&self, key: &BlockKey, staging: Staging) {
        self.0.lock().insert(key.clone(), staging);
    }

    /// What an earlier try of `key`'s export staged, if one kept it.
    pub(super) fn take(&self, key: &BlockKey) -> Option<Staging> {
        self.0.lock().remove(key)
    }
}

/// The chunks of each part of `info`'s file in Blob, in order. An object in one piece has
/// parts of equal chunk counts ([`chunks_per_part`]); a joined one's parts never straddle two
/// of its runs (their chunk sizes may differ), and a run's short tail joins the part before
/// it, so every part but the last is at least [`MIN_PART`] (a joined object's runs are, as
/// S3's parts are) and there are at most [`MAX_PARTS`] (parts grow until there are).
fn export_parts(info: &ObjectInfo) -> Vec<std::ops::Range<u64>> {
    let chunks = info.chunks();
    if info.runs.is_empty() {
        let per = chunks_per_part(info.size, info.chunk_size);
        return (0..chunks.div_ceil(per)).map(|p| p * per..((p + 1) * per).min(chunks)).collect();
    }
    let bytes = |r: &std::ops::Range<u64>| info.chunk_range(r.end - 1).end - info.chunk_range(r.start).start;
    let mut scale = 1;
    loop {
        let mut parts = Vec::new();
        for run in &info.runs {
            let per = MIN_PART.div_ceil(run.chunk_size.max(1)).max(1) * scale;
            let (first, end) = (run.first, run.first + run.chunks());
            let at = parts.len();
            parts.extend((first..end).step_by(per as usize).map(|c| c..(c + per).min(end)));
            if parts.len() > at + 1 && bytes(parts.last().expect("two")) < MIN_PART {
                let tail = parts.pop().expect("two");
                parts.last_mut().expect("one").end = tail.end;
            }
        }
        if parts.len() as u64 <= MAX_PARTS {
            return parts;
        }
        scale *= 2;
    }
}

impl Objects {
    /// Stages the parts of `info` (manifest `key`) not staged by an earlier try, and commits
    /// them as Blob's file `name` if `info` is still its path's newest version by then
    /// (`false`: it is not, and nothing was committed). A failed try keeps what it staged
    /// for the next (see the module documentation).
    pub(super) async fn upload(
        &self,
        (blobs, staged): (&ObjectBlobs, &StagedUploads),
        key: &BlockKey,
        info: &ObjectInfo,
        name: &str,
    ) -> Result<bool, ExportFailure> {
        let ns = &key.namespace;
        let blob = |error: TierError| ExportFailure { reason: FailureReason::Blob, error: error.into() };
        let mut staging = match staged.take(key) {
            Some(staging) => staging,
            None => Staging::new(blobs.begin(name).await.map_err(blob)?),
        };
        let ids = match self.stage_everywhere(ns, info, &mut staging).await {
            Ok(ids) => ids,
            Err(e) => {
                staged.keep(key, staging);
                return Err(e);
            }
        };
        // Replaced while its parts were staged: its file must not replace the newer's.
        match self.still_current(ns, info).await {
            Ok(true) => {}
            Ok(false) => {
                blobs.abort(&staging.upload).await;
                return Ok(false);
            }
            Err(e) => {
                staged.keep(key, staging);
                return Err(e);
            }
        }
        if let Err(error) = blobs.finish(&staging.upload, ids).await {
            if staging.commit_failed {
                blobs.abort(&staging.upload).await;
            } else {
                staging.commit_failed = true;
                staged.keep(key, staging);
            }
            return Err(blob(error));
        }
        Ok(true)
    }

    /// Has every part of `info` not in `staging` yet staged by its stager, keeping in
    /// `staging` what each stager staged even when another fails; the part ids in order.
    async fn stage_everywhere(
        &self,
        ns: &Namespace,
        info: &ObjectInfo,
        staging: &mut Staging,
    ) -> Result<Vec<String>, ExportFailure> {
        let layout = export_parts(info);
        let parts = layout.len() as u32;
        // Stager -> its parts still to stage; `None` is this node.
        let mut by_stager: BTreeMap<Option<String>, Vec<u32>> = BTreeMap::new();
        for (part, chunks) in layout.into_iter().enumerate() {
            if staging.ids.contains_key(&(part as u32)) {
                continue;
            }
            let first = info.chunk_key(ns, chunks.start);
            let stager = self
                .node
                .plan(&first)
                .and_then(|(cluster, plan)| plan.owners.first().filter(|p| *p != cluster.local_id()).cloned());
            by_stager.entry(stager).or_default().push(part as u32);
        }
        let upload = &staging.upload;
        let staged = futures::future::join_all(by_stager.into_iter().map(|(stager, parts)| async move {
            let ids = match (&stager, self.node.cluster()) {
                (Some(id), Some(cluster)) => cluster
                    .stage_parts_on(id, ns, serde_json::to_vec(info).expect("serializes"), upload, &parts)
                    .await
                    .map_err(|failures| ExportFailure {
                        reason: FailureReason::Stager,
                        error: NodeError::Unreachable {
                            what: format!("staging parts of {}", upload.name),
                            failures: failures.to_string(),
                        },
                    })?,
                _ => self.stage_parts_here(ns, info, upload, &parts).await.map_err(|error| {
                    let reason = match error {
                        NodeError::Tier(TierError::Store { .. }) => FailureReason::Blob,
                        _ => FailureReason::Chunks,
                    };
                    ExportFailure { reason, error }
                })?,
            };
            Ok::<_, ExportFailure>(parts.into_iter().zip(ids).collect::<Vec<_>>())
        }))
        .await;
        let mut failure = None;
        for result in staged {
            match result {
                Ok(ids) => staging.ids.extend(ids),
                Err(e) => _ = failure.get_or_insert(e),
            }
        }
        if let Some(failure) = failure {
            return Err(failure);
        }
        (0..parts).map(|p| staging.ids.get(&p).cloned()).collect::<Option<Vec<_>>>().ok_or_else(|| ExportFailure {
            reason: FailureReason::Stager,
            error: NodeError::Unreachable { what: upload.name.clone(), failures: "a stager skipped a part".into() },
        })
    }

    /// Stages `parts` of `info`'s upload from the chunks, read here or from their owners and
    /// checked against the manifest; the part ids in the order asked.
    pub(crate) async fn stage_parts_here(
        &self,
        ns: &Namespace,
        info: &ObjectInfo,
        upload: &Upload,
        parts: &[u32],
    ) -> Result<Vec<String>, NodeError> {
        let exports = self.exports().ok_or_else(|| {
            NodeError::Tier(TierError::Unsupported {
                tier: "objects".into(),
                what: "staging object parts on a node without a Blob tier".into(),
            })
        })?;
        let layout = &export_parts(info);
        futures::stream::iter(parts.iter().copied())
            .map(|part| async move {
                let chunks = layout.get(part as usize).cloned().ok_or_else(|| {
                    NodeError::Tier(TierError::InvalidKey { reason: format!("{}: no part {part} to stage", info.path) })
                })?;
                let mut data = BytesMut::new();
                for index in chunks {
                    data.extend_from_slice(&self.chunk(ns, info, index).await?);
                }
                let bytes = data.len() as u64;
                let id = exports.blobs.stage(upload, part as usize, data.freeze()).await?;
                self.node.metrics().object_parts_staged.inc();
                self.node.metrics().object_staged_bytes.inc_by(bytes);
                Ok::<_, NodeError>(id)
            })
            .buffered(STAGE_CONCURRENCY)
            .try_collect()
            .await
    }
}
