//! `kvtier-bench lmcache`: LMCache's own code storing and reading LMCache-sized chunks
//! (256 tokens of an 8B model: 32 layers, 8 KV heads of 128, bf16: 32 MiB) through each path
//! to kvtier (`lm://` served by `kvtier serve`, the `kvtier` remote storage plugin over
//! shared memory, the multiprocess-mode native L2 client), against the baseline: the same
//! LMCache `RemoteBackend` over `lm://` to LMCache's own server (`python -m
//! lmcache.v1.server`), on the same machine in the same run.
//!
//! The node runs in this process with a memory tier holding the whole working set; LMCache's
//! server keeps its chunks in its memory too. The Python side (`bench/python/lmcache_bench.py`,
//! run by `--python`, which needs lmcache 0.5.6 and the `kvtier` package) checks every chunk
//! it reads back.

use std::{
    collections::HashMap,
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use kvtier_blockmgr::ByteSize;
use kvtier_server::RunningServer;

use crate::report::{Reporter, Result as Measured, size_name};

const SCRIPT: &str = include_str!("../python/lmcache_bench.py");

/// Settings of one `lmcache` run.
#[derive(Debug, Clone)]
pub(crate) struct Args {
    pub(crate) layers: usize,
    pub(crate) count: usize,
    pub(crate) python: String,
}

/// LMCache's own server, killed when dropped.
struct LmcacheServer(Child);

impl Drop for LmcacheServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_lmcache_server(python: &str) -> Result<(LmcacheServer, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new(python)
        .args(["-m", "lmcache.v1.server", "127.0.0.1", &port.to_string(), "cpu"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting lmcache.v1.server with {python}"))?;
    let mut server = LmcacheServer(child);
    let addr = format!("127.0.0.1:{port}");
    let started = Instant::now();
    while TcpStream::connect(&addr).is_err() {
        if let Some(status) = server.0.try_wait()? {
            bail!("lmcache.v1.server exited ({status}); is lmcache installed for {python}?");
        }
        ensure!(started.elapsed() < Duration::from_secs(120), "lmcache.v1.server did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((server, addr))
}

pub(crate) async fn run(args: &Args, dir: &std::path::Path, out: &mut Reporter) -> Result<()> {
    let chunk = 2 * args.layers * 256 * 8 * 128 * 2;
    let script = dir.join("lmcache_bench.py");
    std::fs::write(&script, SCRIPT)?;
    // A chunk and its header in one block; three paths' working sets in memory.
    let block = ((chunk + 4096) + (1 << 20) - 1) & !((1 << 20) - 1);
    let mut config = crate::report::memory_node_config(dir, block, 3 * args.count);
    config.lmcache.listen = "127.0.0.1:0".into();
    // Regions of several chunks (docs/operations.md, "Sizing"): a 64 MiB region holds one.
    config.cpu.region_size = ByteSize(8 * config.max_block_size.0);
    config.cpu.capacity = ByteSize((3 * args.count as u64 + 32) * config.max_block_size.0);
    config.server.transfer_budget = ByteSize(config.server.transfer_budget.0.max(4 * config.max_block_size.0));
    config.shm.session_limit = ByteSize(config.shm.session_limit.0.max(2 * config.max_block_size.0));
    let node = RunningServer::start(config).await.context("starting the node")?;
    let (_lmcache, lmcache_addr) = start_lmcache_server(&args.python)?;

    let shm = node.shm_socket.as_ref().context("the node has an shm socket")?;
    let lm = node.lmcache_addr.context("the node serves lm://")?;
    let mut cmd = Command::new(&args.python);
    cmd.arg(&script)
        .args(["--grpc", &node.grpc_addr.to_string(), "--shm", &shm.display().to_string()])
        .args(["--lm", &lm.to_string(), "--lmcache-server", &lmcache_addr])
        .args(["--layers", &args.layers.to_string(), "--count", &args.count.to_string()])
        .stderr(Stdio::inherit());
    let python = args.python.clone();
    let output = tokio::task::spawn_blocking(move || {
        cmd.output()
            .with_context(|| format!("running {python} (set --python to an interpreter with lmcache and kvtier)"))
    })
    .await??;
    ensure!(output.status.success(), "the Python side failed (its stderr is above)");
    let stats = node.manager().stats().await;
    eprintln!("kvtier served {} gets, {} hits; namespaces: {:?}", stats.gets, stats.hits, stats.namespaces);
    node.shutdown().await?;

    let mut numbers: HashMap<(String, String), f64> = HashMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("parsing {line:?}"))?;
        let (path, op) = (v["path"].as_str().unwrap_or_default(), v["op"].as_str().unwrap_or_default());
        numbers.insert((path.into(), op.into()), v["mib_s"].as_f64().context("mib_s")?);
    }
    let get = |path: &str, op: &str| {
        numbers.get(&(path.to_string(), op.to_string())).copied().with_context(|| format!("no {path} {op} result"))
    };
    let name = size_name(chunk);
    for path in ["lm", "plugin", "native_l2"] {
        for op in ["put", "get"] {
            out.emit(Measured::throughput(
                format!("lmcache_{path}_{op}_{name}"),
                get(path, op)?,
                get("lmcache_server", op)?,
                "lmcache.v1.server over lm://",
            ));
        }
    }
    Ok(())
}
