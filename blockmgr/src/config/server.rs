//! `[server]`: where the node listens, its limits, and TLS.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::{ByteSize, humantime_serde};
use crate::Error;

/// `[server]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// gRPC TCP address. Default `127.0.0.1:50051` (use `0.0.0.0:50051` to serve other hosts).
    pub listen: String,
    /// gRPC Unix socket, relative to `data_dir` unless absolute; empty disables it.
    /// Default `kvtier.sock`.
    pub unix_socket: PathBuf,
    /// HTTP address for `/metrics` (Prometheus) and `/healthz`; empty disables it.
    /// Default `127.0.0.1:50052`.
    pub metrics_listen: String,
    /// Most keys in one request. Default 4096.
    pub max_batch_keys: usize,
    /// Longest pin a lookup may ask for (`LookupRequest.pin_ms`). Default 10s.
    #[serde(with = "humantime_serde")]
    pub max_lookup_pin: Duration,
    /// Memory for block bytes in transit that are not in the CPU arena (put buffers, SSD
    /// reads being sent). Requests wait for it: backpressure, not OOM. Default 256 MiB.
    pub transfer_budget: ByteSize,
    /// A put stream that sends nothing for this long is abandoned. Default 30s.
    #[serde(with = "humantime_serde")]
    pub stream_idle_timeout: Duration,
    /// Size of the data chunks a get streams back. Blocks up to this size travel as one
    /// message, which the client takes without copying. Default 4 MiB.
    pub chunk_size: ByteSize,
    /// On SIGTERM, move blocks that are only in memory to SSD before exiting, so a restart
    /// finds a warm cache. Default true.
    pub persist_on_shutdown: bool,
    /// Longest a graceful shutdown may take before exiting anyway. Default 30s.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// TLS on the TCP gRPC port (the Unix socket stays local and plain).
    pub tls: TlsConfig,
}

/// `[server.tls]`: with `cert` and `key`, gRPC over TCP is TLS (rustls).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain of this node. Empty (default): plaintext. In a cluster, name
    /// the node id among its DNS names: members dial each other by id.
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
    /// PEM CA that signs the cluster's certificates: members verify each other with it (and
    /// present `cert` to each other), and with `require_client_cert` every TCP client must
    /// present a certificate it signed (mTLS): others are refused at the handshake.
    pub ca: PathBuf,
    /// Refuse TCP clients without a certificate signed by `ca`. Default false.
    pub require_client_cert: bool,
}

impl TlsConfig {
    /// Whether TLS is on.
    pub fn enabled(&self) -> bool {
        !self.cert.as_os_str().is_empty()
    }

    /// The PEM files read, each error naming the setting and the file.
    pub fn read_pems(&self) -> Result<TlsPems, Error> {
        let read = |field: &str, path: &std::path::Path| {
            std::fs::read(path)
                .map_err(|e| Error::Config(format!("server.tls.{field}: cannot read {}: {e}", path.display())))
        };
        let ca = if self.ca.as_os_str().is_empty() { None } else { Some(read("ca", &self.ca)?) };
        Ok(TlsPems { cert: read("cert", &self.cert)?, key: read("key", &self.key)?, ca })
    }
}

/// The contents of `[server.tls]`'s files.
#[derive(Debug, Clone)]
pub struct TlsPems {
    /// The certificate chain.
    pub cert: Vec<u8>,
    /// Its private key.
    pub key: Vec<u8>,
    /// The cluster CA, when set.
    pub ca: Option<Vec<u8>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:50051".into(),
            unix_socket: PathBuf::from("kvtier.sock"),
            metrics_listen: "127.0.0.1:50052".into(),
            max_batch_keys: 4096,
            max_lookup_pin: Duration::from_secs(10),
            transfer_budget: ByteSize(256 << 20),
            stream_idle_timeout: Duration::from_secs(30),
            chunk_size: ByteSize(4 << 20),
            persist_on_shutdown: true,
            shutdown_timeout: Duration::from_secs(30),
            tls: TlsConfig::default(),
        }
    }
}
