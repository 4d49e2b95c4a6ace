//! `kvtier-bench vllm`: kvtier's vLLM tier against vLLM 0.32's own `fs` tier (one file per
//! chunk, O_DIRECT, 32 I/O threads, C helpers) on the same disk, in one run: store and load
//! throughput and lookup latency through vLLM's `SecondaryTierManager` interface.
//!
//! A node runs in this process with the default memory tier (1 GiB) and an SSD tier on the
//! scratch disk; vLLM's fs tier writes under the same scratch directory. Two working sets,
//! each on a fresh node: `count` chunks, far more than kvtier's memory, so its loads come
//! from its SSD tier (disk against disk); and a set of half its memory (`_hot`), the
//! prefixes a fleet re-uses most, which kvtier serves from memory shared by every engine on
//! the node and fs from its files. On the second node, the scheduler-side cost per chunk of
//! kvtier's shared-arena spec (`kvtier.vllm_shared`) is measured against vLLM's own CPU
//! offloading spec, whose host buffer it replaces. The Python side
//! (`bench/python/vllm_bench.py`, run by `--python`, which needs vLLM 0.32 and the `kvtier`
//! package) drives both tiers, checks every chunk it loads, and prints its numbers.

use std::{collections::HashMap, process::Command};

use anyhow::{Context, Result, ensure};
use kvtier_blockmgr::ByteSize;
use kvtier_server::RunningServer;

use crate::report::{Reporter, Result as Measured, size_name};

const SCRIPT: &str = include_str!("../python/vllm_bench.py");

/// Settings of one `vllm` run.
#[derive(Debug, Clone)]
pub(crate) struct Args {
    pub(crate) size: usize,
    pub(crate) count: usize,
    pub(crate) memory: u64,
    pub(crate) python: String,
}

pub(crate) async fn run(args: &Args, dir: &std::path::Path, out: &mut Reporter) -> Result<()> {
    let script = dir.join("vllm_bench.py");
    std::fs::write(&script, SCRIPT)?;
    // Each working set on a fresh node and a fresh fs directory, one tier at a time, each
    // with the whole disk (the fs files are deleted before kvtier's slot file is made). The
    // small set takes half of kvtier's memory.
    let hot = (args.memory / 2 / args.size as u64) as usize;
    let mut stdout = String::new();
    for (count, set) in [(args.count, "big"), (hot, "hot")] {
        stdout.push_str(&run_python(args, &script, dir, set, count, None).await?);
        let node_dir = dir.join(format!("node-{set}"));
        let mut config = kvtier_blockmgr::Config::default();
        config.data_dir = node_dir.clone();
        config.server.listen = "127.0.0.1:0".into();
        config.server.metrics_listen = String::new();
        config.server.persist_on_shutdown = false;
        config.max_block_size = ByteSize((args.size as u64).max(1 << 20));
        config.cpu.capacity = ByteSize(args.memory);
        // Room for the working set on SSD, with a region of slack per size class in use.
        config.ssd.capacity = ByteSize((count * args.size) as u64 * 9 / 8 + 4 * config.ssd.region_size.0);
        let node = RunningServer::start(config).await.context("starting the node")?;
        stdout.push_str(&run_python(args, &script, dir, set, count, Some(&node)).await?);
        if set == "hot" {
            // The shared-arena spec's scheduler side against vLLM's CPU spec, on this node.
            stdout.push_str(&run_python(args, &script, dir, "sched", count, Some(&node)).await?);
        }
        // Where kvtier's loads came from, to read each ratio as what it is.
        let stats = node.manager().stats().await;
        let served: Vec<String> = stats.tiers.iter().map(|t| format!("{} {}", t.tier.as_str(), t.hits)).collect();
        eprintln!("kvtier ({set} set) served {} gets: {}", stats.gets, served.join(", "));
        node.shutdown().await?;
        std::fs::remove_dir_all(&node_dir).with_context(|| format!("removing {}", node_dir.display()))?;
    }

    let mut numbers: HashMap<(String, String), serde_json::Value> = HashMap::new();
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("parsing {line:?}"))?;
        let id =
            (v["tier"].as_str().unwrap_or_default().to_string(), v["phase"].as_str().unwrap_or_default().to_string());
        numbers.insert(id, v);
    }
    let get = |tier: &str, phase: &str, field: &str| {
        numbers
            .get(&(tier.to_string(), phase.to_string()))
            .and_then(|v| v[field].as_f64())
            .with_context(|| format!("the Python side did not report {tier} {phase} {field}"))
    };
    let name = size_name(args.size);
    for phase in ["store", "load", "store_hot", "load_hot"] {
        out.emit(Measured::throughput(
            format!("vllm_{phase}_{name}"),
            get("kvtier", phase, "mib_s")?,
            get("fs", phase, "mib_s")?,
            "vLLM fs tier",
        ));
    }
    for phase in ["sched_store", "sched_load"] {
        out.emit(Measured::latency(
            format!("vllm_{phase}_us_per_chunk"),
            get("kvtier", phase, "us_per_chunk")?,
            get("cpu", phase, "us_per_chunk")?,
            "vLLM CPU offloading spec",
        ));
    }
    for q in ["p50", "p99"] {
        let field = format!("{q}_us");
        out.emit(Measured::latency(
            format!("vllm_lookup_{q}"),
            get("kvtier", "lookup", &field)?,
            get("fs", "lookup", &field)?,
            "vLLM fs tier",
        ));
    }
    Ok(())
}

/// Runs the Python side for one working set on kvtier (with `node`) or vLLM's fs tier;
/// returns its stdout (one JSON object per line).
async fn run_python(
    args: &Args,
    script: &std::path::Path,
    dir: &std::path::Path,
    set: &str,
    count: usize,
    node: Option<&RunningServer>,
) -> Result<String> {
    let tier = if node.is_some() { "kvtier" } else { "fs" };
    let mut cmd = Command::new(&args.python);
    cmd.arg(script).args(["--tiers", tier, "--size", &args.size.to_string(), "--count", &count.to_string()]);
    match set {
        "hot" => cmd.arg("--hot"),
        "sched" => cmd.arg("--sched"),
        _ => &mut cmd,
    };
    cmd.args(["--fs-root", &dir.join("vllm-fs").display().to_string()]);
    if let Some(node) = node {
        let unix = node.unix_socket.as_ref().context("the node has a unix socket")?;
        let shm = node.shm_socket.as_ref().context("the node has an shm socket")?;
        cmd.args(["--unix", &format!("unix://{}", unix.display()), "--shm", &shm.display().to_string()]);
    }
    cmd.stderr(std::process::Stdio::inherit());
    let python = args.python.clone();
    let output = tokio::task::spawn_blocking(move || {
        cmd.output()
            .with_context(|| format!("running {python} (set --python to an interpreter with vLLM 0.32 and kvtier)"))
    })
    .await??;
    ensure!(output.status.success(), "the Python side failed on the {tier} tier, {set} set (its stderr is above)");
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
