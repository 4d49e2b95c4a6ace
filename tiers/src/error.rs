//! The one public error type of the tier layer.
//!
//! Each variant is something a caller can act on; each message names the tier, the key or
//! file, and the numbers behind a limit.

use std::path::PathBuf;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in a tier.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A namespace or key does not follow the rules in [`crate::key`].
    #[error("invalid key: {reason}")]
    InvalidKey {
        /// Which rule was broken, naming the offending value.
        reason: String,
    },

    /// A block is larger than the configured maximum, or empty.
    #[error("invalid block size for {key}: {size} bytes (allowed: 1..={max})")]
    InvalidSize {
        /// The block's key, as `namespace/hexkey`.
        key: String,
        /// The size that was offered.
        size: u64,
        /// The configured maximum block size.
        max: u64,
    },

    /// The tier is full and could not make room.
    #[error("{tier}: no space for {required} bytes (capacity {capacity}, used {used})")]
    NoSpace {
        /// The tier's identity, e.g. `cpu(1 GiB)`.
        tier: String,
        /// Capacity in bytes.
        capacity: u64,
        /// Bytes in use (including slack inside slots).
        used: u64,
        /// Bytes the failed allocation needed.
        required: u64,
    },

    /// Stored bytes no longer match the checksum taken when the block entered. The copy has
    /// been dropped; callers treat this as a miss.
    #[error("{tier}: checksum mismatch for {key} at {location}: stored crc32c {expected:#010x}, read {actual:#010x}")]
    ChecksumMismatch {
        /// The tier that held the copy.
        tier: String,
        /// The block's key, as `namespace/hexkey`.
        key: String,
        /// Where the copy was (file and offset, or slot).
        location: String,
        /// The checksum recorded when the block was stored.
        expected: u32,
        /// The checksum of the bytes read back.
        actual: u32,
    },

    /// An I/O call on a tier's file failed.
    #[error("{tier}: {op} {path}{} failed: {source}", offset.map(|o| format!(" at offset {o}")).unwrap_or_default())]
    Io {
        /// The tier's identity.
        tier: String,
        /// The operation (`open`, `pread`, `pwrite`, `fallocate`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The byte offset, where the call had one.
        offset: Option<u64>,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// On-disk structures are unusable: a corrupt superblock, a file of the wrong size, a
    /// data directory formatted with other parameters.
    #[error("{tier}: {path}: {reason}")]
    Corrupt {
        /// The tier's identity.
        tier: String,
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do about it.
        reason: String,
    },

    /// A configuration value is out of range or inconsistent with another.
    #[error("invalid configuration: {field}: {reason}")]
    Config {
        /// The configuration key, as written in kvtier.toml (e.g. `ssd.region_size`).
        field: String,
        /// Why it was refused.
        reason: String,
    },

    /// The tier cannot do this at all.
    #[error("{tier}: unsupported: {what}")]
    Unsupported {
        /// The tier's identity.
        tier: String,
        /// What was asked.
        what: String,
    },

    /// An object store request failed (the Blob tier): the operation, the object, and the
    /// store's own error (HTTP status, credentials, a missing container, ...).
    #[error("{tier}: {op} {object} failed: {source}")]
    Store {
        /// The tier's identity (its URL).
        tier: String,
        /// `put`, `get`, `list`, ...
        op: &'static str,
        /// The object's path under the store.
        object: String,
        /// The store's error (boxed: it is large, and every tier result carries this enum).
        #[source]
        source: Box<object_store::Error>,
    },

    /// Anything else, with its source.
    #[error("{tier}: {source}")]
    Generic {
        /// The tier's identity.
        tier: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// Builds an [`Error::Config`].
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config { field: field.into(), reason: reason.into() }
    }

    /// True for an object store that could not be reached or answered with a server error
    /// (after its retries): worth trying again later, unlike a refusal (403, 404, ...).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Error::Store { source, .. } if matches!(**source, object_store::Error::Generic { .. }))
    }

    /// True for [`Error::NoSpace`].
    pub fn is_no_space(&self) -> bool {
        matches!(self, Error::NoSpace { .. })
    }
}
