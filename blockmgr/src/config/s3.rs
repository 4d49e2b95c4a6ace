//! `[s3]`: the S3-compatible endpoint.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Durability, Error};

/// `[s3]`: an S3-compatible HTTP endpoint over named objects: bucket `B` is namespace
/// `<namespace_prefix>/B`, object `K` its object `o/K`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// Address of the endpoint (`host:port`). Empty (default): not served.
    pub listen: String,
    /// The region clients sign for. Default `us-east-1`.
    pub region: String,
    /// Namespace prefix of the buckets. Default `s3`.
    pub namespace_prefix: String,
    /// Virtual-host-style addressing: a request to `B.<domain>` is for bucket `B` (path-style
    /// requests work as well). Empty (default): path-style only.
    pub domain: String,
    /// When a PUT is acknowledged: "local_disk" (default), "write_back" or "cache".
    pub durability: String,
    /// Largest object one PutObject may carry. Default 5 GiB (S3's).
    pub max_object_size: super::ByteSize,
    /// Multipart uploads neither completed nor aborted this long after they began are
    /// removed with their parts (a client that died mid-upload would otherwise pin them,
    /// write-back parts against `blob.max_unflushed`). Default 24h; `0s`: never.
    #[serde(with = "super::humantime_serde")]
    pub stale_uploads_expiry: Duration,
    /// ETags as S3 computes them: the MD5 of an object's bytes (of its parts' MD5s, with
    /// `-<parts>`, for a multipart one), which tools such as `aws s3 sync` and SDK integrity
    /// checks compare with their own. Costs an MD5 of every byte written through S3; `false`:
    /// an ETag of the object's CRC-32C and generation instead (free). Default true.
    pub md5_etags: bool,
    /// The access keys; every request is signed with one of them (SigV4).
    pub keys: Vec<S3Key>,
}

/// One `[[s3.keys]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct S3Key {
    /// The access key id.
    pub access_key: String,
    /// Its secret.
    pub secret_key: String,
    /// Buckets it may use: names, or prefixes ending in `*` (`"*"`: all, and may create).
    pub buckets: Vec<String>,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            listen: String::new(),
            region: "us-east-1".into(),
            namespace_prefix: "s3".into(),
            domain: String::new(),
            durability: "local_disk".into(),
            max_object_size: super::ByteSize(5 << 30),
            stale_uploads_expiry: Duration::from_secs(24 * 3600),
            md5_etags: true,
            keys: Vec::new(),
        }
    }
}

impl S3Key {
    /// Whether this key may use `bucket`.
    pub fn allows(&self, bucket: &str) -> bool {
        self.buckets.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => bucket.starts_with(prefix),
            None => p == bucket,
        })
    }
}

impl S3Config {
    /// The configured durability; `Err` names the bad value.
    pub fn durability(&self) -> Result<Durability, Error> {
        self.durability.parse().map_err(|e| Error::Config(format!("s3.{e}")))
    }

    pub(super) fn validate(&self) -> Result<(), Error> {
        self.durability()?;
        kvtier_tiers::Namespace::new(&self.namespace_prefix)
            .map_err(|e| Error::Config(format!("s3.namespace_prefix: {e}")))?;
        if !self.listen.is_empty() && self.keys.is_empty() {
            return Err(Error::Config("s3.listen: the endpoint needs at least one [[s3.keys]] entry".into()));
        }
        if let Some(k) = self.keys.iter().find(|k| k.access_key.is_empty() || k.secret_key.is_empty()) {
            return Err(Error::Config(format!("s3.keys: {:?} needs an access_key and a secret_key", k.access_key)));
        }
        Ok(())
    }
}
