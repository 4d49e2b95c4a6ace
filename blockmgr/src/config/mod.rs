//! `kvtier.toml`: one file, every knob with a default, unknown keys refused.
//!
//! `kvtier serve` with no file runs [`Config::default`]: CPU 1 GiB, SSD 8 GiB under
//! `./kvtier-data`, gRPC on 127.0.0.1:50051, metrics on 127.0.0.1:50052. Sizes are written
//! `"64MiB"`, `"1GiB"` (or plain byte counts), durations `"30s"`, `"500ms"`.

use std::{collections::BTreeMap, fmt, path::PathBuf, str::FromStr, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

mod blob;
mod cluster;
mod lmcache;
mod s3;
mod server;
mod shm;
pub use self::{
    blob::BlobConfig,
    cluster::ClusterConfig,
    lmcache::LmcacheConfig,
    s3::{S3Config, S3Key},
    server::{ServerConfig, TlsConfig, TlsPems},
    shm::{ShmConfig, ShmGrant},
};

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Root directory for the SSD tier, the Unix socket and other state. Default `./kvtier-data`.
    pub data_dir: PathBuf,
    /// Largest block accepted. Default 64 MiB.
    pub max_block_size: ByteSize,
    /// Network-facing settings.
    pub server: ServerConfig,
    /// Host-memory tier.
    pub cpu: CpuConfig,
    /// Local SSD tier.
    pub ssd: SsdConfig,
    /// Shared-memory data plane for clients on this host.
    pub shm: ShmConfig,
    /// The Blob tier (any object store).
    pub blob: BlobConfig,
    /// Per-namespace policy, keyed by namespace pattern: an exact name, or a prefix ending
    /// in `*` (`[namespaces."scratch/*"]`). The most specific pattern wins.
    pub namespaces: BTreeMap<String, NamespaceConfig>,
    /// Other nodes: membership and replication.
    pub cluster: ClusterConfig,
    /// LMCache's `lm://` protocol.
    pub lmcache: LmcacheConfig,
    /// The S3-compatible endpoint.
    pub s3: S3Config,
    /// Logging.
    pub log: LogConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./kvtier-data"),
            max_block_size: ByteSize(64 << 20),
            server: ServerConfig::default(),
            cpu: CpuConfig::default(),
            ssd: SsdConfig::default(),
            shm: ShmConfig::default(),
            blob: BlobConfig::default(),
            namespaces: BTreeMap::new(),
            cluster: ClusterConfig::default(),
            lmcache: LmcacheConfig::default(),
            s3: S3Config::default(),
            log: LogConfig::default(),
        }
    }
}

/// `[cpu]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CpuConfig {
    /// Arena size. Default 1 GiB.
    pub capacity: ByteSize,
    /// Slab region size; must hold one `max_block_size` block. Default 64 MiB.
    pub region_size: ByteSize,
    /// Lock the arena into RAM. Default false.
    pub mlock: bool,
    /// Touch every page of the arena at startup: no page faults under load, and a memory
    /// limit too small for the arena fails at startup. Default true.
    pub prefault: bool,
    /// Blocks moved to SSD at once when memory is full. Default 8.
    pub demotion_concurrency: usize,
}

impl Default for CpuConfig {
    fn default() -> Self {
        CpuConfig {
            capacity: ByteSize(1 << 30),
            region_size: ByteSize(64 << 20),
            mlock: false,
            prefault: true,
            demotion_concurrency: 8,
        }
    }
}

/// `[ssd]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SsdConfig {
    /// Whether there is an SSD tier. Default true.
    pub enabled: bool,
    /// Slot file size (preallocated). Default 8 GiB.
    pub capacity: ByteSize,
    /// Directory of the slot file; relative to `data_dir` unless absolute. Default `ssd`.
    pub dir: PathBuf,
    /// Region size, fixed when the slot file is created. Default 65 MiB.
    pub region_size: ByteSize,
    /// Bypass the page cache (falls back with a warning where refused). Default true.
    pub direct_io: bool,
    /// Acknowledge writes only once on stable storage (O_DSYNC). Default false.
    pub sync_writes: bool,
    /// Most SSD reads in flight. Default 64.
    pub max_concurrent_reads: usize,
}

impl Default for SsdConfig {
    fn default() -> Self {
        SsdConfig {
            enabled: true,
            capacity: ByteSize(8 << 30),
            dir: PathBuf::from("ssd"),
            region_size: ByteSize(kvtier_tiers::DEFAULT_REGION_SIZE),
            direct_io: true,
            sync_writes: false,
            max_concurrent_reads: 64,
        }
    }
}

/// One `[namespaces."pattern"]` entry.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NamespaceConfig {
    /// Blocks of these namespaces never go to Blob (neither demoted nor written back):
    /// they leave the node when SSD evicts them, and write-back puts are refused.
    /// Default false.
    pub cache_only: bool,
    /// Nodes holding a copy of each block: its owners by rendezvous hashing over the live
    /// members. Default 1 for blocks and 2 for named objects (checkpoints).
    pub replicas: Option<usize>,
    /// Copies stored before a put is acknowledged. Default: `replicas`.
    pub write_quorum: Option<usize>,
    /// How memory orders these blocks for eviction: `"kv"` (KV-cache prefixes: S3-FIFO,
    /// chain tails first, blocks a departed parent left unreachable dropped), `"lru"`, or
    /// `"checkpoint"` (first in, first out). Default `"kv"` for blocks and `"checkpoint"`
    /// for named objects' chunks and manifests.
    pub policy: Option<crate::policy::PolicyKind>,
}

/// Whether `namespace` matches `pattern`: an exact name, or a prefix ending in `*`.
pub(super) fn matches(pattern: &str, namespace: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => namespace.starts_with(prefix),
        None => namespace == pattern,
    }
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `kvtier=debug`. `RUST_LOG` overrides it. Default `info`.
    pub level: String,
    /// `text` or `json`. Default `text`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into(), format: LogFormat::Text }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn load(path: &std::path::Path) -> Result<Self, Error> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| match e {
            Error::Config(msg) => Error::Config(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let config: Config = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the tier builders do not: values that are merely out of range.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |field: &str, why: &str| Err(Error::Config(format!("{field}: {why}")));
        if self.max_block_size.0 == 0 {
            return bad("max_block_size", "must be positive");
        }
        if self.server.max_batch_keys == 0 {
            return bad("server.max_batch_keys", "must be positive");
        }
        if self.server.chunk_size.0 < 4096 || self.server.chunk_size.0 > 4 << 20 {
            return bad("server.chunk_size", "must be between 4KiB and 4MiB");
        }
        if self.server.transfer_budget.0 < self.max_block_size.0 {
            return bad("server.transfer_budget", "must be at least max_block_size");
        }
        if self.shm.session_limit.0 < self.max_block_size.0 {
            return bad("shm.session_limit", "must be at least max_block_size");
        }
        self.blob.validate(self.max_block_size)?;
        if self.cpu.demotion_concurrency == 0 || self.ssd.max_concurrent_reads == 0 {
            return bad("cpu.demotion_concurrency / ssd.max_concurrent_reads", "must be positive");
        }
        let tls = &self.server.tls;
        if tls.enabled() == tls.key.as_os_str().is_empty() {
            return bad("server.tls", "cert and key go together");
        }
        if tls.require_client_cert && tls.ca.as_os_str().is_empty() {
            return bad("server.tls.require_client_cert", "needs server.tls.ca to check client certificates");
        }
        if (!self.cluster.members.is_empty() || !self.cluster.etcd.is_empty())
            && tls.enabled()
            && tls.ca.as_os_str().is_empty()
        {
            return bad("server.tls.ca", "a cluster with TLS needs the CA its members verify each other with");
        }
        self.cluster.static_members()?;
        self.lmcache.validate(self.server.tls.require_client_cert)?;
        self.s3.validate()?;
        if !self.cluster.etcd.is_empty() {
            self.cluster.advertised(&self.server.listen)?;
            if self.cluster.lease_ttl < Duration::from_secs(2) || self.cluster.lease_ttl > Duration::from_secs(3600) {
                return bad("cluster.lease_ttl", "must be between 2s and 1h");
            }
        }
        if self.cluster.read_replica_after > 0 && self.cluster.read_replicas == 0 {
            return bad("cluster.read_replicas", "must be at least 1 (read_replica_after = 0 turns read replicas off)");
        }
        for (pattern, ns) in &self.namespaces {
            match (ns.replicas, ns.write_quorum) {
                (Some(0), _) | (_, Some(0)) => {
                    return bad(&format!("namespaces.{pattern:?}"), "replicas and write_quorum must be positive");
                }
                (Some(r), Some(w)) if w > r => {
                    return bad(&format!("namespaces.{pattern:?}.write_quorum"), "must be at most replicas");
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The Blob tier's URL (a directory becomes a `file://` URL under `data_dir`), or `None`
    /// when the tier is off.
    pub fn blob_url(&self) -> Option<String> {
        self.store_url(&self.blob.url)
    }

    /// Where named objects' files go (see [`BlobConfig::objects_url`]), or `None` when the
    /// Blob tier is off.
    pub fn objects_url(&self) -> Option<String> {
        let blob = self.blob_url()?;
        match self.blob.objects_url.trim() {
            "" => Some(format!("{}/objects", blob.trim_end_matches('/'))),
            url => self.store_url(url),
        }
    }

    /// `url` as a store URL: a directory becomes a `file://` URL under `data_dir`.
    fn store_url(&self, url: &str) -> Option<String> {
        let url = url.trim();
        if url.is_empty() {
            return None;
        }
        if url.contains("://") {
            return Some(url.to_string());
        }
        let dir = self.in_data_dir(std::path::Path::new(url));
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        Some(format!("file://{}", dir.display()))
    }

    /// The policy of `namespace`: the most specific matching `[namespaces]` entry (an exact
    /// name, else the longest prefix), or the defaults.
    pub fn namespace(&self, namespace: &str) -> NamespaceConfig {
        self.namespaces
            .iter()
            .filter(|(pattern, _)| matches(pattern, namespace))
            .max_by_key(|(pattern, _)| (!pattern.ends_with('*'), pattern.len()))
            .map(|(_, c)| c.clone())
            .unwrap_or_default()
    }

    /// `path` resolved against `data_dir` unless absolute.
    pub fn in_data_dir(&self, path: &std::path::Path) -> PathBuf {
        if path.is_absolute() { path.to_path_buf() } else { self.data_dir.join(path) }
    }

    /// The configuration as TOML (what `kvtier serve --print-config` shows).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes")
    }
}

/// A byte count written with an optional unit: `4096`, `"64KiB"`, `"1.5GiB"`, `"10GB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (num, unit) = (&s[..split], s[split..].trim());
        let value: f64 =
            num.parse().map_err(|_| format!("{s:?} is not a size (examples: 4096, \"64MiB\", \"1GiB\")"))?;
        let mult: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => 1 << 10,
            "m" | "mib" => 1 << 20,
            "g" | "gib" => 1 << 30,
            "t" | "tib" => 1 << 40,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            _ => {
                return Err(format!("unknown size unit {unit:?} in {s:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"));
            }
        };
        Ok(ByteSize((value * mult as f64).round() as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Exact, so that what `--print-config` prints reads back as the same size.
        f.write_str(&kvtier_tiers::exact_bytes(self.0))
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

mod humantime_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("{text:?}: {e} (examples: \"30s\", \"500ms\")")))
    }
}

/// A small node in `dir` for unit tests: 8 MiB of memory (1 MiB regions), 32 MiB of SSD,
/// blocks up to 512 KiB, a 4 MiB transfer budget.
#[cfg(test)]
pub(crate) fn small_for_tests(dir: &std::path::Path) -> Config {
    let mut c = Config::default();
    c.data_dir = dir.into();
    c.max_block_size = ByteSize(512 << 10);
    c.cpu.capacity = ByteSize(8 << 20);
    c.cpu.region_size = ByteSize(1 << 20);
    c.ssd.capacity = ByteSize(32 << 20);
    c.ssd.region_size = ByteSize((2 << 20) + (64 << 10));
    c.server.transfer_budget = ByteSize(4 << 20);
    c
}

#[cfg(test)]
mod tests;
