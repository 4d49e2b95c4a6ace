//! `[blob]`: the Blob tier (any object store), the flush to it and objects' files in it.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

use super::{ByteSize, humantime_serde};
use crate::Error;

/// `[blob]`: the last tier, in an object store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BlobConfig {
    /// Where blocks go: `az://container/prefix` (Azure Blob), `s3://bucket/prefix`,
    /// `gs://bucket/prefix`, `file:///absolute/dir`, or a directory relative to `data_dir`.
    /// Empty turns the tier off. Default `blob`: a local directory standing in for Blob.
    pub url: String,
    /// Where named objects written with write-back durability land under their own names,
    /// `<objects_url>/<namespace>/<path>` (a `/` in the namespace written `%2F`), so other
    /// tools read a checkpoint file where its name says. Same forms as `url`, with the same
    /// `options`. Nodes of a cluster must share it (each file is written by its path's
    /// primary, which changes with the members). Default empty: `<url>/objects`.
    pub objects_url: String,
    /// The store's options, as the `object_store` crate names them: for Azure
    /// `azure_storage_account_name` and `azure_storage_account_key` (or
    /// `azure_storage_sas_key`), `azure_storage_endpoint` for an emulator or sovereign
    /// cloud; for S3 `aws_access_key_id`, `aws_secret_access_key`, `aws_region`,
    /// `aws_endpoint`. Unset options are also read from the environment (`AZURE_*`, `AWS_*`).
    /// Default none.
    pub options: BTreeMap<String, String>,
    /// Most bytes per segment object (blocks are packed into segments: a few PUTs per GiB
    /// instead of one per block). Default 128 MiB.
    pub segment_size: ByteSize,
    /// Retries of one request to the store before its error surfaces (the flusher then
    /// retries on its own, with exponential backoff). Default 3.
    pub retries: usize,
    /// No retry of a request starts later than this. Default 10s.
    #[serde(with = "humantime_serde")]
    pub retry_timeout: Duration,
    /// Most bytes written with write-back durability that may wait for the flush to Blob,
    /// as a fraction of the SSD tier's capacity. Past it, write-back puts wait up to
    /// `flush_wait`, then fail with a backpressure error. Default 0.75.
    pub max_unflushed: f64,
    /// How long a write-back put waits for the flush to make room. Default 5s.
    #[serde(with = "humantime_serde")]
    pub flush_wait: Duration,
    /// Segments written to the store at once. Default 4.
    pub flush_concurrency: usize,
    /// How long the flusher waits for more blocks to fill a segment. Default 50ms.
    #[serde(with = "humantime_serde")]
    pub flush_linger: Duration,
    /// Above this fraction of SSD use, the flusher copies the blocks SSD will evict next to
    /// Blob ahead of their eviction (demotion). 1.0 turns demotion off. Default 0.9.
    pub demote_above: f64,
    /// Compaction rewrites segments whose live fraction fell below this. Default 0.5.
    pub compact_below: f64,
    /// How often compaction runs; 0 turns it off. Default 10m.
    #[serde(with = "humantime_serde")]
    pub compact_interval: Duration,
    /// Objects' files exported to `objects_url` at once; each failing export backs off on
    /// its own while the others go on. Default 4.
    pub export_concurrency: usize,
    /// `/healthz` answers "degraded" (HTTP 503) while the oldest write-back byte on the
    /// node has waited longer than this for Blob (a flush or an export stuck, or Blob
    /// down). Default 5m.
    #[serde(with = "humantime_serde")]
    pub degraded_after: Duration,
}

impl Default for BlobConfig {
    fn default() -> Self {
        BlobConfig {
            url: "blob".into(),
            objects_url: String::new(),
            options: BTreeMap::new(),
            segment_size: ByteSize(128 << 20),
            retries: 3,
            retry_timeout: Duration::from_secs(10),
            max_unflushed: 0.75,
            flush_wait: Duration::from_secs(5),
            flush_concurrency: 4,
            flush_linger: Duration::from_millis(50),
            demote_above: 0.9,
            compact_below: 0.5,
            compact_interval: Duration::from_secs(600),
            export_concurrency: 4,
            degraded_after: Duration::from_secs(300),
        }
    }
}

impl BlobConfig {
    /// Values merely out of range (the tier's builder checks the rest).
    pub(super) fn validate(&self, max_block_size: ByteSize) -> Result<(), Error> {
        let bad = |field: &str, why: &str| Err(Error::Config(format!("{field}: {why}")));
        if self.segment_size.0 < max_block_size.0 {
            return bad("blob.segment_size", "must be at least max_block_size");
        }
        for (field, value) in [
            ("blob.flush_wait", self.flush_wait),
            ("blob.flush_linger", self.flush_linger),
            ("blob.compact_interval", self.compact_interval),
            ("blob.retry_timeout", self.retry_timeout),
            ("blob.degraded_after", self.degraded_after),
        ] {
            if value > Duration::from_secs(7 * 24 * 3600) {
                return bad(field, "must be at most a week (168h)");
            }
        }
        for (field, value) in [
            ("blob.max_unflushed", self.max_unflushed),
            ("blob.demote_above", self.demote_above),
            ("blob.compact_below", self.compact_below),
        ] {
            if !(0.0..=1.0).contains(&value) || (field == "blob.max_unflushed" && value == 0.0) {
                return bad(field, "must be a fraction in (0, 1]");
            }
        }
        if self.flush_concurrency == 0 || self.export_concurrency == 0 {
            return bad("blob.flush_concurrency / blob.export_concurrency", "must be positive");
        }
        Ok(())
    }
}
