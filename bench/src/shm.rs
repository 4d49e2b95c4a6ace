//! `kvtier-bench shm`: put/get of blocks from Python through the shared-memory data plane,
//! against numpy's memcpy of the same bytes (the goal is >= 0.8x) and against the gRPC path,
//! in one run.
//!
//! A node runs in this process (memory tier only, large enough for the working set); the
//! Python side (`bench/python/shm_bench.py`, run by `--python`, which must have the `kvtier`
//! package installed) measures every phase in one process and prints its numbers.

use std::{collections::HashMap, process::Command};

use anyhow::{Context, Result, ensure};
use kvtier_blockmgr::ByteSize;
use kvtier_server::RunningServer;

use crate::report::{Reporter, Result as Measured, memory_node_config, size_name};

const SCRIPT: &str = include_str!("../python/shm_bench.py");

/// Settings of one `shm` run.
#[derive(Debug, Clone)]
pub(crate) struct Args {
    pub(crate) size: usize,
    pub(crate) count: usize,
    pub(crate) rounds: usize,
    pub(crate) python: String,
}

pub(crate) async fn run(args: &Args, dir: &std::path::Path, out: &mut Reporter) -> Result<()> {
    // Room for the shm and the gRPC phase's blocks of one round (and one more round's worth).
    let mut config = memory_node_config(dir, args.size, args.count * 3);
    config.shm.session_limit = ByteSize(config.cpu.capacity.0 / 4);
    let node = RunningServer::start(config).await.context("starting the node")?;
    let unix = node.unix_socket.clone().context("the node has a unix socket")?;
    let shm = node.shm_socket.clone().context("the node has an shm socket")?;
    let script = dir.join("shm_bench.py");
    std::fs::write(&script, SCRIPT)?;
    let (size, count, rounds) = (args.size.to_string(), args.count.to_string(), args.rounds.to_string());
    let python = args.python.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .arg(&script)
            .args(["--unix", &format!("unix://{}", unix.display()), "--shm", &shm.display().to_string()])
            .args(["--size", &size, "--count", &count, "--rounds", &rounds])
            .output()
            .with_context(|| format!("running {python} (set --python to an interpreter with kvtier installed)"))
    })
    .await??;
    ensure!(output.status.success(), "the Python side failed:\n{}", String::from_utf8_lossy(&output.stderr));
    let mut mib_s = HashMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("parsing {line:?}"))?;
        mib_s.insert(v["phase"].as_str().unwrap_or_default().to_string(), v["mib_s"].as_f64().unwrap_or(0.0));
    }
    let phase = |p: &str| mib_s.get(p).copied().with_context(|| format!("the Python side did not report {p}"));
    let name = size_name(args.size);
    let memcpy = phase("memcpy")?;
    for op in ["put", "get"] {
        let (shm, grpc) = (phase(&format!("shm_{op}"))?, phase(&format!("grpc_{op}"))?);
        out.emit(Measured::throughput(format!("py_shm_{op}_{name}"), shm, memcpy, "numpy memcpy"));
        out.emit(Measured::throughput(format!("py_shm_vs_grpc_{op}_{name}"), shm, grpc, "kvtier gRPC (unix)"));
    }
    node.shutdown().await?;
    Ok(())
}
