//! The cluster under test: `kvtier serve` processes as separate hosts (network namespaces,
//! one per node, joined by a bridge that also carries etcd and Azurite), each a member
//! through etcd, writing checkpoint files back to Azurite.

use std::{
    path::{Path, PathBuf},
    process::Child,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use kvtier_testkit::Azurite;
use kvtier_testkit::{Etcd, Hosts, serve};
use parking_lot::Mutex;

/// The lease of every member: a node stopped or cut off longer than this is out.
pub(super) const LEASE_TTL: Duration = Duration::from_secs(3);
/// The S3 access key the writers sign with.
pub(super) const S3_KEY: (&str, &str) = ("AKIDCHAOS", "chaos-secret");

/// What the fault injector last did to a node, as the writers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Up,
    /// Killed (restarting), stopped or cut off: writers pick another node.
    Away,
}

/// One node: its process, its host and where it listens.
pub(super) struct ChaosNode {
    pub(super) host: usize,
    pub(super) grpc: String,
    pub(super) s3: String,
    pub(super) metrics: String,
    dir: PathBuf,
    config: PathBuf,
    child: Option<Child>,
}

/// The nodes, their hosts and services; shared by the writers (who pick live nodes), the
/// fault injector and the checks.
pub(super) struct Cluster {
    pub(super) nodes: Mutex<Vec<ChaosNode>>,
    pub(super) states: Mutex<Vec<State>>,
    pub(super) hosts: Hosts,
    pub(super) azurite: Mutex<Azurite>,
    _etcd: Etcd,
    bin: PathBuf,
    /// Where the nodes' logs go when the cluster is dropped (outside the scratch directory,
    /// which goes with the run): the evidence a finding needs, kept whatever the outcome.
    logs: PathBuf,
}

/// Where the `kvtier` binary is: `$KVTIER_BIN`, else beside this one.
pub(super) fn kvtier_bin() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("KVTIER_BIN") {
        return Ok(bin.into());
    }
    let me = std::env::current_exe().context("finding kvtier-bench's own path")?;
    let bin = me.with_file_name("kvtier");
    if !bin.exists() {
        bail!("{} is missing: build it (cargo build --bin kvtier) or set KVTIER_BIN", bin.display());
    }
    Ok(bin)
}

impl Cluster {
    /// `n` nodes on hosts of their own (network namespaces; on loopback only when `loopback`
    /// is asked for, and then nothing can be partitioned), with `ssd` bytes of SSD each.
    pub(super) fn start(n: usize, ssd: u64, loopback: bool, scratch: &Path) -> Result<Arc<Cluster>> {
        let hosts = if loopback { Hosts::loopback() } else { Hosts::new(n) };
        if !loopback && !hosts.separate() {
            bail!(
                "network namespaces could not be made (root and iproute2 are needed); --loopback runs without partitions"
            );
        }
        let services = hosts.services();
        let etcd = Etcd::start_on(&services);
        let azurite = Azurite::start_on(&services);
        let options: String = azurite.options().iter().map(|(k, v)| format!("{k} = \"{v}\"\n")).collect();
        let bin = kvtier_bin()?;
        let mut nodes = Vec::new();
        for i in 0..n {
            let ip = hosts.ip(i);
            let ports = [(); 3].map(|()| kvtier_testkit::free_port());
            let dir = scratch.join(format!("n{}", i + 1));
            std::fs::create_dir_all(&dir)?;
            let id = format!("n{}", i + 1);
            let config = dir.join("kvtier.toml");
            std::fs::write(&config, node_config(&id, &dir, &ip, ports, ssd, &etcd.endpoint, &options))?;
            let (grpc, s3, metrics) =
                (format!("{ip}:{}", ports[0]), format!("{ip}:{}", ports[1]), format!("{ip}:{}", ports[2]));
            nodes.push(ChaosNode { host: i, grpc, s3, metrics, dir, config, child: None });
        }
        let cluster = Arc::new(Cluster {
            nodes: Mutex::new(nodes),
            states: Mutex::new(vec![State::Up; n]),
            hosts,
            azurite: Mutex::new(azurite),
            _etcd: etcd,
            bin,
            logs: logs_dir(scratch),
        });
        for i in 0..n {
            cluster.spawn(i)?;
        }
        cluster.wait_whole(Duration::from_secs(60))?;
        Ok(cluster)
    }

    pub(super) fn len(&self) -> usize {
        self.nodes.lock().len()
    }

    /// Starts node `i`'s process (again, after a kill) on its config and data dir.
    pub(super) fn spawn(&self, i: usize) -> Result<()> {
        let (config, dir, host) = {
            let nodes = self.nodes.lock();
            (nodes[i].config.clone(), nodes[i].dir.clone(), nodes[i].host)
        };
        let prefix = self.hosts.prefix(host);
        let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
        let (child, _, _) = serve::spawn(&self.bin, &config, &dir, &prefix, "info").map_err(anyhow::Error::msg)?;
        self.nodes.lock()[i].child = Some(child);
        Ok(())
    }

    /// The pid of node `i`'s process (`ip netns exec` execs it: the same pid).
    pub(super) fn signal(&self, i: usize, signal: i32) {
        if let Some(child) = &self.nodes.lock()[i].child {
            // SAFETY: a signal to a process this bench started.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    /// `kill -9` of node `i`, reaped.
    pub(super) fn kill9(&self, i: usize) {
        let child = self.nodes.lock()[i].child.take();
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Node `i`'s data dir emptied (its process must be down): a wiped disk.
    pub(super) fn wipe(&self, i: usize) -> Result<()> {
        let data = self.nodes.lock()[i].dir.join("data");
        std::fs::remove_dir_all(&data).with_context(|| format!("wiping {}", data.display()))
    }

    pub(super) fn set_state(&self, i: usize, state: State) {
        self.states.lock()[i] = state;
    }

    /// The `/metrics` text of node `i`.
    pub(super) fn metrics(&self, i: usize) -> Option<String> {
        let addr = self.nodes.lock()[i].metrics.clone();
        serve::http_get(&addr, "/metrics").ok().map(|(_, body)| body)
    }

    /// Metric `kvtier_<name>` of node `i` (0 when it does not answer).
    pub(super) fn metric(&self, i: usize, name: &str) -> f64 {
        self.metrics(i).and_then(|m| serve::metric(&m, name)).unwrap_or(0.0)
    }

    /// Whether every node answers and sees every other as a member.
    pub(super) fn whole(&self) -> bool {
        let n = self.len();
        (0..n).all(|i| self.metrics(i).and_then(|m| serve::metric(&m, "cluster_members")) == Some(n as f64))
    }

    /// Waits until [`Cluster::whole`], at most `within`.
    pub(super) fn wait_whole(&self, within: Duration) -> Result<()> {
        let started = Instant::now();
        while !self.whole() {
            if started.elapsed() > within {
                bail!("the cluster was not whole again within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    /// The gRPC and S3 addresses of a node the writers may use now, picked by `pick`.
    pub(super) fn pick_up(&self, pick: u64) -> Option<(String, String)> {
        let states = self.states.lock();
        let up: Vec<usize> = (0..states.len()).filter(|&i| states[i] == State::Up).collect();
        let i = *up.get((pick % up.len().max(1) as u64) as usize)?;
        let nodes = self.nodes.lock();
        Some((nodes[i].grpc.clone(), nodes[i].s3.clone()))
    }

    /// The warnings and errors node `i` logged lately (from its newest stderr file).
    pub(super) fn log_tail(&self, i: usize, lines: usize) -> String {
        let dir = self.nodes.lock()[i].dir.clone();
        let newest = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".stderr"))
            .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok());
        let text = newest.and_then(|e| std::fs::read_to_string(e.path()).ok()).unwrap_or_default();
        let all: Vec<&str> = text.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.len() {
            self.signal(i, libc::SIGCONT);
            self.kill9(i);
        }
        let mut kept = 0;
        for (i, node) in self.nodes.lock().iter().enumerate() {
            let to = self.logs.join(format!("n{}", i + 1));
            let logs = std::fs::read_dir(&node.dir).into_iter().flatten().flatten();
            for log in logs.filter(|e| e.file_name().to_string_lossy().ends_with(".stderr")) {
                // A rename: the logs are on the scratch directory's filesystem.
                let moved =
                    std::fs::create_dir_all(&to).and_then(|()| std::fs::rename(log.path(), to.join(log.file_name())));
                match moved {
                    Ok(()) => kept += 1,
                    Err(e) => eprintln!("chaos: keeping {} failed: {e}", log.path().display()),
                }
            }
        }
        if kept > 0 {
            eprintln!("chaos: the nodes' logs ({kept} files) are in {}", self.logs.display());
        }
    }
}

/// `chaos-logs/<start time>` beside the scratch directory.
fn logs_dir(scratch: &Path) -> PathBuf {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    scratch.parent().unwrap_or(scratch).join("chaos-logs").join(since_epoch.as_secs().to_string())
}

fn node_config(id: &str, dir: &Path, ip: &str, ports: [u16; 3], ssd: u64, etcd: &str, blob_options: &str) -> String {
    let (key, secret) = S3_KEY;
    format!(
        r#"data_dir = "{data}"

[server]
listen = "{ip}:{grpc}"
metrics_listen = "{ip}:{metrics}"
stream_idle_timeout = "30s"

[cpu]
capacity = "256MiB"

[ssd]
capacity = {ssd}

[blob]
url = "az://kvtier/nodes/{id}"
objects_url = "az://kvtier/objects"
retries = 1
retry_timeout = "2s"
degraded_after = "60s"

[blob.options]
{blob_options}
[cluster]
node_id = "{id}"
etcd = ["{etcd}"]
etcd_prefix = "/chaos"
lease_ttl = "{ttl}s"
peer_timeout = "3s"
resync_interval = "10s"
orphan_after = "20s"

[namespaces."ckpt/*"]
replicas = 2

[namespaces."s3/*"]
replicas = 2

[s3]
listen = "{ip}:{s3}"
durability = "write_back"

[[s3.keys]]
access_key = "{key}"
secret_key = "{secret}"
buckets = ["*"]
"#,
        data = dir.join("data").display(),
        grpc = ports[0],
        s3 = ports[1],
        metrics = ports[2],
        ttl = LEASE_TTL.as_secs(),
    )
}
