//! Building a [`BlobTier`]: the store URL, its options, retries and sizes; and the request
//! counts it reports.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::{BlobTier, Retries, state::State, store};
use crate::Result;

/// Requests a [`BlobTier`] has sent to its store since it opened (what metrics export).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreRequests {
    /// PUTs (segments, indexes, deletion records).
    pub puts: u64,
    /// Bytes sent by PUTs.
    pub put_bytes: u64,
    /// GETs, whole or ranged.
    pub gets: u64,
    /// Bytes received by GETs.
    pub get_bytes: u64,
    /// LISTs and DELETEs.
    pub other: u64,
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) puts: AtomicU64,
    pub(super) put_bytes: AtomicU64,
    pub(super) gets: AtomicU64,
    pub(super) get_bytes: AtomicU64,
    pub(super) other: AtomicU64,
}

impl Counters {
    pub(super) fn count(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self) -> StoreRequests {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StoreRequests {
            puts: get(&self.puts),
            put_bytes: get(&self.put_bytes),
            gets: get(&self.gets),
            get_bytes: get(&self.get_bytes),
            other: get(&self.other),
        }
    }
}

/// Builds a [`BlobTier`].
#[derive(Debug, Clone)]
pub struct BlobTierBuilder {
    pub(super) url: String,
    pub(super) options: Vec<(String, String)>,
    pub(super) segment_size: u64,
    pub(super) max_block_size: u64,
    pub(super) retries: Retries,
}

impl BlobTierBuilder {
    /// A tier at `url`: `az://container/prefix`, `s3://bucket/prefix`, `gs://bucket/prefix`,
    /// `file:///absolute/dir`. `options` are `object_store`'s (account, keys, endpoint, ...).
    pub fn new(url: impl Into<String>) -> Self {
        BlobTierBuilder {
            url: url.into(),
            options: Vec::new(),
            segment_size: 128 << 20,
            max_block_size: 64 << 20,
            retries: Retries::default(),
        }
    }

    /// How each request to the store is retried. Default [`Retries::default`].
    pub fn retries(mut self, retries: Retries) -> Self {
        self.retries = retries;
        self
    }

    /// Options for the store, as `object_store` names them (e.g. `azure_storage_account_name`).
    pub fn options(mut self, options: impl IntoIterator<Item = (String, String)>) -> Self {
        self.options.extend(options);
        self
    }

    /// Most bytes per segment object. Default 128 MiB.
    pub fn segment_size(mut self, bytes: u64) -> Self {
        self.segment_size = bytes;
        self
    }

    /// Largest block accepted. Default 64 MiB.
    pub fn max_block_size(mut self, bytes: u64) -> Self {
        self.max_block_size = bytes;
        self
    }

    /// Connects and rebuilds the index from the records under the prefix.
    pub async fn open(self) -> Result<BlobTier> {
        let tier = self.build()?;
        tier.load().await?;
        Ok(tier)
    }

    /// Sets the tier up without touching the store; [`BlobTier::load`] then replays its
    /// records. (A node whose store is unreachable at start serves its local tiers
    /// meanwhile.)
    pub fn build(self) -> Result<BlobTier> {
        let (parsed, local_dir) = store::parse(&self.url, "blob.url")?;
        let store::Opened { store, prefix, .. } = store::open(&parsed, &self.options, self.retries)?;
        let tier = BlobTier {
            store,
            prefix: prefix.to_string(),
            url: self.url,
            writer: rand::random(),
            segment_size: self.segment_size.max(1),
            max_block_size: self.max_block_size,
            state: Mutex::new(State::default()),
            loaded: std::sync::atomic::AtomicBool::new(false),
            local_dir,
            counters: Counters::default(),
            stamping: tokio::sync::RwLock::new(()),
            compacting: tokio::sync::Mutex::new(()),
        };
        Ok(tier)
    }
}
