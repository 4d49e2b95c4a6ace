//! `[lmcache]`: LMCache's own `lm://` protocol, served beside gRPC.

use serde::{Deserialize, Serialize};

use crate::{Durability, Error};

/// `[lmcache]`: serve LMCache's `lm://` wire protocol, so an LMCache config with
/// `remote_url: lm://host:port` stores its chunks in kvtier unchanged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LmcacheConfig {
    /// Address of the `lm://` listener (`host:port`). Empty (default): not served.
    pub listen: String,
    /// Namespace prefix of LMCache's keys: a key of model M lands in
    /// `<prefix>/M/ws<world_size>.w<worker>.<dtype>`. The Python connectors take the same
    /// prefix, so every path sees the same chunks. Default `lmcache`.
    pub namespace_prefix: String,
    /// When a PUT counts as stored: "cache" (default), "local_disk" or "write_back". The
    /// protocol has no reply to a PUT, so this only decides where the chunk lives.
    pub durability: String,
}

impl Default for LmcacheConfig {
    fn default() -> Self {
        LmcacheConfig { listen: String::new(), namespace_prefix: "lmcache".into(), durability: "cache".into() }
    }
}

impl LmcacheConfig {
    /// The configured durability; `Err` names the bad value.
    pub fn durability(&self) -> Result<Durability, Error> {
        match self.durability.as_str() {
            "cache" => Ok(Durability::Cache),
            "local_disk" => Ok(Durability::LocalDisk),
            "write_back" => Ok(Durability::WriteBack),
            other => Err(Error::Config(format!(
                "lmcache.durability {other:?}: use \"cache\", \"local_disk\" or \"write_back\""
            ))),
        }
    }

    pub(super) fn validate(&self) -> Result<(), Error> {
        self.durability()?;
        kvtier_tiers::Namespace::new(&self.namespace_prefix)
            .map_err(|e| Error::Config(format!("lmcache.namespace_prefix: {e}")))?;
        Ok(())
    }
}
