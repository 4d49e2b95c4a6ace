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
        self.durability.parse().map_err(|e| Error::Config(format!("lmcache.{e}")))
    }

    /// `tls_required`: the node requires client certificates, which `lm://` cannot carry, so
    /// it may listen on loopback only.
    pub(super) fn validate(&self, tls_required: bool) -> Result<(), Error> {
        self.durability()?;
        kvtier_tiers::Namespace::new(&self.namespace_prefix)
            .map_err(|e| Error::Config(format!("lmcache.namespace_prefix: {e}")))?;
        if tls_required && !self.listen.is_empty() {
            let loopback = self.listen.parse::<std::net::SocketAddr>().is_ok_and(|a| a.ip().is_loopback())
                || self.listen.starts_with("localhost:");
            if !loopback {
                return Err(Error::Config(format!(
                    "lmcache.listen {:?}: lm:// has no authentication; with server.tls.require_client_cert \
                     it may listen on loopback only",
                    self.listen
                )));
            }
        }
        Ok(())
    }
}
