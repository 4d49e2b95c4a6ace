//! A real `kvtier serve` process for integration tests: its own temp data dir and config,
//! ports chosen by the OS, readiness read from the JSON line it prints, `kill -9` and
//! SIGTERM by pid.

#![allow(dead_code, unreachable_pub, clippy::allow_attributes)]

use std::{
    path::{Path, PathBuf},
    process::Child,
    time::Duration,
};

use kvtier_blockmgr::Client;
use tempfile::TempDir;

pub mod blob;
pub mod etcd;
pub mod export;
pub mod s3;

pub const BIN: &str = env!("CARGO_BIN_EXE_kvtier");
pub const MIB: u64 = 1 << 20;

pub use kvtier_testkit::serve::Addrs;

/// A running `kvtier serve`.
pub struct Node {
    pub dir: TempDir,
    pub config_path: PathBuf,
    pub addrs: Addrs,
    child: Child,
    stderr_path: PathBuf,
    /// What the process is started under (a host's `ip netns exec`), again at a restart.
    prefix: Vec<String>,
}

/// A small node: 8 MiB of memory (1 MiB regions), 32 MiB of SSD, blocks up to 1 MiB,
/// plus `extra` TOML lines (top-level keys must come before any table). A `[cpu]` table in
/// `extra_tables` replaces the default one.
pub fn small_config(dir: &Path, extra_top: &str, extra_tables: &str) -> String {
    let cpu = if extra_tables.contains("[cpu]") { "" } else { "[cpu]\ncapacity = \"8MiB\"\nregion_size = \"1MiB\"" };
    format!(
        r#"data_dir = "{dir}"
max_block_size = "1MiB"
{extra_top}

[server]
listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"
stream_idle_timeout = "2s"
shutdown_timeout = "20s"
max_batch_keys = 512

{cpu}

[ssd]
capacity = "32MiB"
region_size = "2112KiB"

{extra_tables}
"#,
        dir = dir.display()
    )
}

/// The embedded defaults (1 GiB of memory, 8 GiB of SSD, blocks up to 64 MiB, objects in
/// 16 MiB chunks: what a user gets) but for the data dir and ports picked by the OS, plus
/// `tables`.
pub fn default_config(dir: &Path, tables: &str) -> String {
    format!(
        "data_dir = \"{}\"\n\n[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\n{tables}\n",
        dir.display()
    )
}

impl Node {
    /// Starts a node on `small_config`.
    pub fn start() -> Node {
        Self::start_with("", "")
    }

    /// Starts a node on `small_config` with extra TOML.
    pub fn start_with(extra_top: &str, extra_tables: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("kvtier.toml");
        std::fs::write(&config_path, small_config(&dir.path().join("data"), extra_top, extra_tables)).unwrap();
        let (child, addrs, stderr_path) = spawn(&config_path, dir.path(), &[]).unwrap_or_else(|e| panic!("{e}"));
        Node { dir, config_path, addrs, child, stderr_path, prefix: Vec::new() }
    }

    /// Starts a node on `small_config` plus `extra_tables`, its gRPC on `port`.
    pub fn start_on_port(port: u16, extra_tables: &str) -> Node {
        Self::start_on_port_with(port, |dir| small_config(dir, "", extra_tables))
    }

    /// Starts a node on the config `make` writes for its data dir, its gRPC on `port`.
    pub fn start_on_port_with(port: u16, make: impl FnOnce(&Path) -> String) -> Node {
        Self::start_with_config(|dir| {
            make(dir)
                // The server's listen line (it comes first; an `[s3]` in the tables keeps its own).
                .replacen("\nlisten = \"127.0.0.1:0\"", &format!("\nlisten = \"127.0.0.1:{port}\""), 1)
        })
    }

    /// Starts a node on the config `make` writes for its data dir.
    pub fn start_with_config(make: impl FnOnce(&Path) -> String) -> Node {
        Self::start_under(Vec::new(), make)
    }

    /// Starts a node on `small_config` plus `extra_tables` on host `i` of `hosts` (its
    /// listeners on the host's address), its gRPC on `port`.
    pub fn start_on_host(hosts: &kvtier_testkit::Hosts, i: usize, port: u16, extra_tables: &str) -> Node {
        let ip = hosts.ip(i);
        Self::start_under(hosts.prefix(i), |dir| {
            small_config(dir, "", extra_tables)
                .replace("\nlisten = \"127.0.0.1:0\"", &format!("\nlisten = \"{ip}:{port}\""))
                .replace("\nmetrics_listen = \"127.0.0.1:0\"", &format!("\nmetrics_listen = \"{ip}:0\""))
        })
    }

    /// Starts a node under `prefix` on the config `make` writes for its data dir.
    fn start_under(prefix: Vec<String>, make: impl FnOnce(&Path) -> String) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("kvtier.toml");
        std::fs::write(&config_path, make(&dir.path().join("data"))).unwrap();
        let args: Vec<&str> = prefix.iter().map(String::as_str).collect();
        let (child, addrs, stderr_path) = spawn(&config_path, dir.path(), &args).unwrap_or_else(|e| panic!("{e}"));
        Node { dir, config_path, addrs, child, stderr_path, prefix }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.addrs.grpc).await.expect("connect over TCP")
    }

    pub async fn unix_client(&self) -> Client {
        Client::connect(self.addrs.unix.as_ref().expect("unix socket")).await.expect("connect over the unix socket")
    }

    /// A shared-memory session for `namespaces`.
    pub fn shm(&self, namespaces: &[&str]) -> kvtier_client::shm::ShmClient {
        kvtier_client::shm::ShmClient::connect(self.addrs.shm.as_ref().expect("shm socket"), namespaces)
            .expect("open a shm session")
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid(), libc::SIGKILL) };
        self.child.wait().unwrap();
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, ...) without waiting.
    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// SIGTERM; returns the exit status once the process has exited.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        self.child.wait().unwrap()
    }

    /// Starts the process again on the same config and data dir (after kill9/terminate).
    pub fn restart(&mut self) {
        let prefix: Vec<&str> = self.prefix.iter().map(String::as_str).collect();
        let (child, addrs, stderr_path) =
            spawn(&self.config_path, self.dir.path(), &prefix).unwrap_or_else(|e| panic!("{e}"));
        self.child = child;
        self.addrs = addrs;
        self.stderr_path = stderr_path;
    }

    /// Everything the process logged so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// The value of the unlabelled metric `kvtier_<name>`.
    pub fn metric(&self, name: &str) -> u64 {
        let metrics = self.http_get("/metrics");
        assert!(metrics.contains(&format!("kvtier_{name} ")), "no kvtier_{name}");
        kvtier_testkit::serve::metric(&metrics, name).unwrap() as u64
    }

    /// The sum of metric `kvtier_<name>` over its series whose labels contain `label`
    /// (e.g. `op="get"`).
    pub fn labelled_metric(&self, name: &str, label: &str) -> u64 {
        let prefix = format!("kvtier_{name}{{");
        self.http_get("/metrics")
            .lines()
            .filter(|l| l.starts_with(&prefix) && l.contains(label))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
            .sum()
    }

    /// A plain HTTP GET on the metrics port; returns the body (the answer must be 200).
    pub fn http_get(&self, path: &str) -> String {
        let (status, body) = self.http_status(path);
        assert_eq!(status, 200, "{path}: {body}");
        body
    }

    /// A plain HTTP GET on the metrics port; returns the status code and the body.
    pub fn http_status(&self, path: &str) -> (u16, String) {
        kvtier_testkit::serve::http_get(self.addrs.metrics.as_ref().expect("metrics port"), path).unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `kvtier serve --config` (optionally wrapped by `prefix`, e.g. `unshare`), waits
/// for its ready line. On failure returns what it printed.
/// (KVTIER_TEST_LOG=debug, any RUST_LOG filter, lets a failing test's node say more.)
pub fn spawn(config: &Path, dir: &Path, prefix: &[&str]) -> Result<(Child, Addrs, PathBuf), String> {
    let log = std::env::var("KVTIER_TEST_LOG").unwrap_or_else(|_| "info".into());
    kvtier_testkit::serve::spawn(Path::new(BIN), config, dir, prefix, &log)
}

/// Members `ids` on loopback ports picked now, static membership: each node's `[cluster]`
/// table names it and every member, then `tables(id)` follows (more `[cluster]` keys first,
/// then tables of its own).
pub fn start_static_cluster(ids: &[&str], tables: impl Fn(&str) -> String) -> Vec<Node> {
    start_static_cluster_on(ids, |dir, tables| small_config(dir, "", tables), tables)
}

/// [`start_static_cluster`] on the config `base` writes for a data dir and tables
/// ([`small_config`] or [`default_config`]).
pub fn start_static_cluster_on(
    ids: &[&str],
    base: impl Fn(&Path, &str) -> String,
    tables: impl Fn(&str) -> String,
) -> Vec<Node> {
    let ports: Vec<u16> = ids.iter().map(|_| free_port()).collect();
    let members: Vec<String> = ids.iter().zip(&ports).map(|(id, p)| format!("\"{id}=127.0.0.1:{p}\"")).collect();
    ids.iter()
        .zip(&ports)
        .map(|(id, port)| {
            let table = format!("[cluster]\nnode_id = \"{id}\"\nmembers = [{}]\n{}", members.join(", "), tables(id));
            Node::start_on_port_with(*port, |dir| base(dir, &table))
        })
        .collect()
}

/// Three members sharing one store: each its own segments (`<shared>/nodes/<id>`, outside
/// its data dir, so wiping a disk keeps them), one objects location (`<shared>/objects`).
pub fn start_three_sharing_blob(shared: &std::path::Path) -> (Vec<Node>, String) {
    start_three_sharing_blob_on(shared, |dir, tables| small_config(dir, "", tables))
}

/// [`start_three_sharing_blob`] on the config `base` writes for a data dir and tables.
pub fn start_three_sharing_blob_on(
    shared: &std::path::Path,
    base: impl Fn(&Path, &str) -> String,
) -> (Vec<Node>, String) {
    let objects_url = format!("file://{}/objects", shared.display());
    let nodes = start_static_cluster_on(&["n1", "n2", "n3"], base, |id| {
        format!(
            "peer_timeout = \"3s\"\n\n[blob]\nurl = \"file://{}/nodes/{id}\"\nobjects_url = \"{objects_url}\"\n\
             flush_linger = \"10ms\"\n",
            shared.display()
        )
    });
    (nodes, objects_url)
}

/// Waits (polling every 100 ms, blocking the thread) until `done` holds.
pub fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Deterministic bytes for block `i`.
/// The `r` owners among `ids` of block `k` of `ns`, primary first, as the nodes place it.
pub fn block_owners(ids: &[&'static str], ns: &str, k: &[u8], r: usize) -> Vec<&'static str> {
    let key = kvtier_tiers::BlockKey::parse(ns, k).unwrap();
    owners_of(ids, &kvtier_blockmgr::cluster::placement_key(&key), r)
}

/// The 2 owners among `ids` of `path`'s manifests in `ns`, primary first.
pub fn path_owners(ids: &[&'static str], ns: &str, path: &str) -> Vec<&'static str> {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(path.as_bytes());
    owners_of(ids, &[ns.as_bytes(), &[0], b"m/", &digest[..24]].concat(), 2)
}

fn owners_of(ids: &[&'static str], placement_key: &[u8], r: usize) -> Vec<&'static str> {
    let placement = kvtier_blockmgr::cluster::Placement::new(ids.iter().copied());
    let owners = placement.owners(placement_key, r);
    owners.iter().map(|o| *ids.iter().find(|id| *id == o).expect("a member")).collect()
}

/// `path`'s current manifest in `ns` as `node` keeps it, asked as member n1 (no
/// forwarding): `None` if it keeps none.
pub async fn manifest_on(node: &Node, ns: &str, path: &str) -> Option<serde_json::Value> {
    manifest_on_as(node, "n1", ns, path).await
}

/// [`manifest_on`], asked as member `member`.
pub async fn manifest_on_as(node: &Node, member: &str, ns: &str, path: &str) -> Option<serde_json::Value> {
    try_manifest_on_as(node, member, ns, path).await.unwrap()
}

/// [`manifest_on_as`], with the node's refusal as an error: a node back from a pause past
/// its lease refuses peer requests until it is a member again.
pub async fn try_manifest_on_as(
    node: &Node,
    member: &str,
    ns: &str,
    path: &str,
) -> Result<Option<serde_json::Value>, tonic::Status> {
    let mut peer =
        kvtier_proto::peer::v1::peer_client::PeerClient::connect(format!("http://{}", node.addrs.grpc)).await.unwrap();
    let mut request = tonic::Request::new(kvtier_proto::v1::ObjectRef { namespace: ns.into(), path: path.into() });
    request.metadata_mut().insert(kvtier_client::PEER_HEADER, member.parse().unwrap());
    let json = peer.stat_object(request).await?.into_inner().json;
    Ok((!json.is_empty()).then(|| serde_json::from_slice(&json).unwrap()))
}

pub use kvtier_testkit::free_port;

pub fn data(i: u64, len: usize) -> bytes::Bytes {
    kvtier_tiers::conformance::pattern(i, len)
}

pub fn key(i: u64) -> Vec<u8> {
    format!("key-{i:06}").into_bytes()
}

/// The members of [`start_cluster`].
pub const IDS: [&str; 3] = ["n1", "n2", "n3"];

/// Three members; `ckpt/*` keeps 2 copies (write quorum `ckpt_quorum`), `kv/*` the default 1.
pub fn start_cluster(ckpt_quorum: usize) -> Vec<Node> {
    start_static_cluster(&IDS, |_| {
        format!("peer_timeout = \"3s\"\n\n[namespaces.\"ckpt/*\"]\nreplicas = 2\nwrite_quorum = {ckpt_quorum}\n")
    })
}

/// Whether each node holds `k` of `ns` itself (asked as a member: no forwarding).
pub async fn holders(nodes: &[Node], ns: &str, k: &[u8]) -> std::collections::HashSet<&'static str> {
    let mut found = std::collections::HashSet::new();
    for (node, id) in nodes.iter().zip(IDS) {
        let peer = Client::connect(&node.addrs.grpc).await.unwrap().as_peer("n1").unwrap();
        if matches!(peer.get(ns, &[k.to_vec()]).await.unwrap().pop(), Some(kvtier_blockmgr::GetItem::Hit { .. })) {
            found.insert(id);
        }
    }
    found
}
