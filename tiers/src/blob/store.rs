//! Opening the object store behind a Blob tier URL.
//!
//! `object_store::parse_url_opts` would do, but it cannot set retries (its default retries
//! a dead endpoint for up to three minutes, stalling every flush and read-through behind
//! it) and it silently drops option keys it does not know, so a misspelt
//! `azure_storage_acount_name` would fall back to other credentials. Here each scheme's
//! builder gets the retry policy, and an unknown key is an error that names it.

use std::{str::FromStr, sync::Arc, time::Duration};

use object_store::{
    BackoffConfig, ClientConfigKey, ObjectStore, ObjectStoreScheme, RetryConfig,
    aws::{AmazonS3Builder, AmazonS3ConfigKey},
    azure::{AzureConfigKey, MicrosoftAzureBuilder},
    gcp::{GoogleCloudStorageBuilder, GoogleConfigKey},
    local::LocalFileSystem,
    memory::InMemory,
    multipart::MultipartStore,
    path::Path,
};

use super::staged_parts::StagedParts;
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

/// `url` as the store parser reads it, and the directory of a `file://` URL. `setting` names
/// the configuration it came from, for errors.
pub(super) fn parse(url: &str, setting: &str) -> Result<(url::Url, Option<std::path::PathBuf>)> {
    // `az://container/prefix` as Azure users write it; object_store's URL parser reads
    // `az://` as `az://account/container/...` and would drop the prefix, so it is given
    // the equivalent `azure://container/prefix`.
    let normalized = match url.strip_prefix("az://") {
        Some(rest) => format!("azure://{rest}"),
        None => url.to_string(),
    };
    let parsed = url::Url::parse(&normalized).map_err(|e| Error::config(setting, format!("{url}: {e}")))?;
    let local_dir = match parsed.scheme() {
        "file" => {
            Some(parsed.to_file_path().map_err(|()| Error::config(setting, "a file URL needs an absolute path"))?)
        }
        _ => None,
    };
    Ok((parsed, local_dir))
}

/// What `url` names: the store, the same store's multipart uploads (staged parts and one
/// commit: Azure's Put Block / Put Block List, S3's multipart upload), and the prefix.
pub(super) struct Opened {
    pub(super) store: Arc<dyn ObjectStore>,
    pub(super) parts: Arc<dyn MultipartStore>,
    pub(super) prefix: Path,
}

/// Refuses a plain-HTTP `endpoint` unless the option `key` allows it: the store's client
/// refuses every request to it otherwise, and a node would start, report ready and fail
/// each flush with "builder error" for ever. (Azurite and other emulators speak HTTP.)
fn plain_http_allowed(endpoint: Option<String>, allowed: Option<String>, key: &str) -> Result<()> {
    match endpoint {
        Some(endpoint) if endpoint.starts_with("http://") && allowed.as_deref() != Some("true") => Err(Error::config(
            format!("blob.options.{key}"),
            format!("the endpoint {endpoint} is plain HTTP, which the store's client refuses unless {key} = \"true\""),
        )),
        _ => Ok(()),
    }
}

/// The store, its multipart uploads and the prefix inside it that `url` names.
pub(super) fn open(url: &url::Url, options: &[(String, String)], retries: Retries) -> Result<Opened> {
    let (scheme, prefix) =
        ObjectStoreScheme::parse(url).map_err(|e| Error::config("blob.url", format!("{url}: {e}")))?;
    let unknown = |key: &str| {
        Error::config(
            "blob.options",
            format!("{key:?} is not an option of {scheme:?} stores (see object_store's config keys)"),
        )
    };
    type Both = (Arc<dyn ObjectStore>, Arc<dyn MultipartStore>);
    fn built<S: ObjectStore + MultipartStore>(url: &url::Url, r: object_store::Result<S>) -> Result<Both> {
        let store = Arc::new(r.map_err(|e| Error::config("blob", format!("cannot set up the store at {url}: {e}")))?);
        Ok((store.clone(), store))
    }
    let text = url.to_string();
    let (store, parts): Both = match scheme {
        ObjectStoreScheme::Local | ObjectStoreScheme::Memory => {
            if let Some((key, _)) = options.first() {
                return Err(unknown(key));
            }
            match scheme {
                ObjectStoreScheme::Local => {
                    // Staged parts' directories go once empty.
                    let staging = Arc::new(LocalFileSystem::new().with_automatic_cleanup(true));
                    (Arc::new(LocalFileSystem::new()), Arc::new(StagedParts::new(staging)))
                }
                _ => {
                    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
                    (memory.clone(), Arc::new(StagedParts::new(memory)))
                }
            }
        }
        ObjectStoreScheme::MicrosoftAzure => {
            let mut b = MicrosoftAzureBuilder::new().with_url(text).with_retry(retries.config());
            for (k, v) in options {
                b = b.with_config(AzureConfigKey::from_str(k).map_err(|_| unknown(k))?, v);
            }
            let emulator = b.get_config_value(&AzureConfigKey::UseEmulator).is_some_and(|v| v == "true");
            if !emulator {
                let endpoint = b.get_config_value(&AzureConfigKey::Endpoint);
                let allowed = b.get_config_value(&AzureConfigKey::Client(ClientConfigKey::AllowHttp));
                plain_http_allowed(endpoint, allowed, "azure_allow_http")?;
            }
            built(url, b.build())?
        }
        ObjectStoreScheme::AmazonS3 => {
            let mut b = AmazonS3Builder::new().with_url(text).with_retry(retries.config());
            for (k, v) in options {
                b = b.with_config(AmazonS3ConfigKey::from_str(k).map_err(|_| unknown(k))?, v);
            }
            let endpoint = b.get_config_value(&AmazonS3ConfigKey::Endpoint);
            let allowed = b.get_config_value(&AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp));
            plain_http_allowed(endpoint, allowed, "aws_allow_http")?;
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
    Ok(Opened { store, parts, prefix })
}
