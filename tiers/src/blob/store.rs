//! Opening the object store behind a Blob tier URL.
//!
//! `object_store::parse_url_opts` would do, but it cannot set retries (its default retries
//! a dead endpoint for up to three minutes, stalling every flush and read-through behind
//! it) and it silently drops option keys it does not know, so a misspelt
//! `azure_storage_acount_name` would fall back to other credentials. Here each scheme's
//! builder gets the retry policy, and an unknown key is an error that names it.

use std::{str::FromStr, sync::Arc, time::Duration};

use object_store::{
    BackoffConfig, ObjectStore, ObjectStoreScheme, RetryConfig,
    aws::{AmazonS3Builder, AmazonS3ConfigKey},
    azure::{AzureConfigKey, MicrosoftAzureBuilder},
    gcp::{GoogleCloudStorageBuilder, GoogleConfigKey},
    local::LocalFileSystem,
    memory::InMemory,
    path::Path,
};

use crate::{Error, Result};

/// How often and how long one request to the store is retried before its error surfaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retries {
    /// Retries after the first attempt; 0 disables them.
    pub max_retries: usize,
    /// No retry starts later than this after the first attempt.
    pub timeout: Duration,
}

impl Default for Retries {
    /// Three retries within ten seconds: a dead endpoint fails a request in seconds, and
    /// the callers that must not give up (the flusher) retry with their own backoff.
    fn default() -> Self {
        Retries { max_retries: 3, timeout: Duration::from_secs(10) }
    }
}

impl Retries {
    fn config(self) -> RetryConfig {
        RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: self.max_retries,
            retry_timeout: self.timeout,
        }
    }
}

/// The store and the prefix inside it that `url` names.
pub(super) fn open(
    url: &url::Url,
    options: &[(String, String)],
    retries: Retries,
) -> Result<(Arc<dyn ObjectStore>, Path)> {
    let (scheme, prefix) =
        ObjectStoreScheme::parse(url).map_err(|e| Error::config("blob.url", format!("{url}: {e}")))?;
    let unknown = |key: &str| {
        Error::config(
            "blob.options",
            format!("{key:?} is not an option of {scheme:?} stores (see object_store's config keys)"),
        )
    };
    fn built<S: ObjectStore>(url: &url::Url, r: object_store::Result<S>) -> Result<Arc<dyn ObjectStore>> {
        let store = r.map_err(|e| Error::config("blob", format!("cannot set up the store at {url}: {e}")))?;
        Ok(Arc::new(store))
    }
    let text = url.to_string();
    let store: Arc<dyn ObjectStore> = match scheme {
        ObjectStoreScheme::Local | ObjectStoreScheme::Memory => {
            if let Some((key, _)) = options.first() {
                return Err(unknown(key));
            }
            match scheme {
                ObjectStoreScheme::Local => Arc::new(LocalFileSystem::new()),
                _ => Arc::new(InMemory::new()),
            }
        }
        ObjectStoreScheme::MicrosoftAzure => {
            let mut b = MicrosoftAzureBuilder::new().with_url(text).with_retry(retries.config());
            for (k, v) in options {
                b = b.with_config(AzureConfigKey::from_str(k).map_err(|_| unknown(k))?, v);
            }
            built(url, b.build())?
        }
        ObjectStoreScheme::AmazonS3 => {
            let mut b = AmazonS3Builder::new().with_url(text).with_retry(retries.config());
            for (k, v) in options {
                b = b.with_config(AmazonS3ConfigKey::from_str(k).map_err(|_| unknown(k))?, v);
            }
            built(url, b.build())?
        }
        ObjectStoreScheme::GoogleCloudStorage => {
            let mut b = GoogleCloudStorageBuilder::new().with_url(text).with_retry(retries.config());
            for (k, v) in options {
                b = b.with_config(GoogleConfigKey::from_str(k).map_err(|_| unknown(k))?, v);
            }
            built(url, b.build())?
        }
        other => {
            return Err(Error::config(
                "blob.url",
                format!("{url}: {other:?} stores are not supported (use az://, s3://, gs:// or file://)"),
            ));
        }
    };
    Ok((store, prefix))
}
