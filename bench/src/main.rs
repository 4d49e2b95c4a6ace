//! `kvtier-bench`: kvtier's benchmarks. Every result is printed next to a baseline measured
//! in the same run (memcpy, raw O_DIRECT, raw TCP, numpy memcpy, vLLM's fs tier, LMCache's server, Azurite) with the ratio; `--json` prints one
//! object per line with `bench`, `value`, `baseline`, `ratio`, `unit`, `baseline_name`.

mod blob;
mod chaos;
mod checkpoint;
mod dynamo;
mod lmcache;
mod report;
mod s3;
mod s3s_endpoint;
mod server;
mod shm;
mod sim;
mod ssd_fill;
mod tiers;
mod trace;
mod vllm;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "kvtier-bench", version, about = "kvtier benchmarks, each against its baseline in the same run")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// One JSON object per result line.
    #[arg(long, global = true)]
    json: bool,
    /// Small working sets (a smoke run, seconds long).
    #[arg(long, global = true)]
    quick: bool,
    /// Directory for scratch files (its disk is the one measured). Default: the system temp dir.
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// CPU tier vs memcpy, SSD tier vs raw O_DIRECT, for 2 MiB and 256 KiB blocks.
    Tiers {
        /// Block sizes in KiB.
        #[arg(long, value_delimiter = ',', default_values_t = [2048usize, 256])]
        sizes_kib: Vec<usize>,
        /// Bytes per size and tier, in MiB.
        #[arg(long, default_value_t = 1024)]
        working_set_mib: usize,
        /// Operations in flight for the SSD phases: each is measured, raw O_DIRECT and the
        /// tier alike, and each side's best is the headline (the disk's limit is its best
        /// queue depth, not ours).
        #[arg(long, value_delimiter = ',', default_values_t = [1usize, 8, 32, 64])]
        qds: Vec<usize>,
    },
    /// How full the SSD tier gets before its first "no space" with checkpoint files' chunks
    /// (each file's last one its own size): a region per size class, chunks padded to powers
    /// of two, packed regions; against the SSD's capacity.
    SsdFill {
        /// SSD capacities, in MiB (regions of 65 MiB: the count of regions is what matters).
        #[arg(long, value_delimiter = ',', default_values_t = [1024u64, 8192])]
        capacities_mib: Vec<u64>,
        /// Chunk size of the files, in MiB (the default config's).
        #[arg(long, default_value_t = 16)]
        chunk_mib: u64,
        /// Largest file, in MiB (files are 1 KiB to this, log-uniform).
        #[arg(long, default_value_t = 200)]
        max_mib: u64,
    },
    /// gRPC put/get through a node on loopback vs raw TCP with the same bytes.
    Server {
        /// Block size in KiB.
        #[arg(long, default_value_t = 2048)]
        size_kib: usize,
        /// Blocks per phase.
        #[arg(long, default_value_t = 512)]
        count: usize,
        /// Concurrency levels to run.
        #[arg(long, value_delimiter = ',', default_values_t = [1usize, 8])]
        concurrency: Vec<usize>,
    },
    /// Python put/get through the shared-memory data plane vs numpy memcpy and vs gRPC.
    Shm {
        /// Block size in KiB.
        #[arg(long, default_value_t = 2048)]
        size_kib: usize,
        /// Blocks per phase.
        #[arg(long, default_value_t = 256)]
        count: usize,
        /// Python interpreter with the `kvtier` package installed.
        #[arg(long, env = "KVTIER_PYTHON", default_value = "python3")]
        python: String,
    },
    /// The Blob tier (segment packing) vs a plain object_store put loop, on a real Azurite
    Blob {
        #[arg(long, default_value_t = 2048)]
        size_kib: usize,
        #[arg(long, default_value_t = 1024)]
        total_mib: usize,
        #[arg(long, default_value_t = 64)]
        segment_mib: usize,
    },
    /// A checkpoint saved through a 3-node cluster (R = 2, write-back) vs the same writers
    /// straight to Azurite; then restored by as many readers from wiped disks.
    Checkpoint {
        /// Writers (one shard each) and, later, readers.
        #[arg(long, default_value_t = 4)]
        writers: usize,
        /// Bytes per shard, in MiB.
        #[arg(long, default_value_t = 128)]
        shard_mib: usize,
    },
    /// A simulated cluster of `--nodes` (and a tenth as many) real managers in one process
    /// over an in-process network: placement balance, write and Blob traffic, resync after
    /// a node loss, and a checkpoint restored by every node.
    Sim {
        /// The largest cluster.
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        /// Write-back blocks (16 KiB, two copies) each node writes.
        #[arg(long, default_value_t = 8)]
        blocks_per_node: usize,
        /// Size of the checkpoint file every node restores, in KiB.
        #[arg(long, default_value_t = 2048)]
        checkpoint_kib: usize,
    },
    /// Objects through kvtier's S3 endpoint vs Azure Blob itself (Azurite): PUT, GET, p99.
    S3 {
        /// Object size in KiB.
        #[arg(long, default_value_t = 2048)]
        size_kib: usize,
        /// Objects per phase.
        #[arg(long, default_value_t = 256)]
        count: usize,
        /// Which clients: boto3 vs azure-storage-blob, object_store's S3 vs its Azure client, or both.
        #[arg(long, value_enum, default_value = "all")]
        clients: s3::Clients,
        /// Python with boto3 and azure-storage-blob (the test venv of scripts/python-env.sh).
        #[arg(long, env = "KVTIER_PYTHON", default_value = "python3")]
        python: String,
    },
    /// Mooncake's request traces replayed through a node as an engine would (lookup, get the
    /// hits, put the misses) at capacities from tight to ample: hit rate vs LRU, Belady's OPT
    /// and the reuse bound of the same capacity, hits per tier, unreachable blocks held, and
    /// a modelled time to first token vs recomputing.
    Trace {
        /// Trace files (JSON lines with `input_length` and `hash_ids`, one id per 512 tokens).
        #[arg(
            long,
            value_delimiter = ',',
            default_values_t = [
                "../shared/data/mooncake-traces/conversation_trace.jsonl".to_string(),
                "../shared/data/mooncake-traces/synthetic_trace.jsonl".to_string(),
            ]
        )]
        traces: Vec<String>,
        /// KV bytes of 512 tokens for the model (64 MiB: an 8B model in bf16).
        #[arg(long, default_value_t = 64 << 20)]
        block_bytes: u64,
        /// Block bytes and node capacities are divided by this.
        #[arg(long, default_value_t = 4096)]
        scale: u64,
        /// Node capacities (memory + SSD) in percent of the trace's working set.
        #[arg(long, value_delimiter = ',', default_values_t = [1.0, 5.0, 20.0, 50.0])]
        capacity_pct: Vec<f64>,
        /// Memory's share of the capacity, in percent (the rest is SSD).
        #[arg(long, default_value_t = 20.0)]
        memory_pct: f64,
        /// Prefill speed the recompute time is modelled at (tokens/s).
        #[arg(long, default_value_t = 10_000.0)]
        prefill_tokens_per_s: f64,
        /// Replay only the first N requests of each trace.
        #[arg(long)]
        limit: Option<usize>,
        /// Draw hit rate against capacity into this SVG file.
        #[arg(long)]
        plot: Option<std::path::PathBuf>,
    },
    /// NVIDIA Dynamo KVBM's G4 tier: KV blocks through KVBM's S3 client to kvtier and kvtier's
    /// native client, vs KVBM's S3 client to a plain S3 server (moto): put, get, p99.
    Dynamo {
        /// Block sizes in KiB (KVBM's blocks of a mid-sized and a large model).
        #[arg(long, value_delimiter = ',', default_values_t = [2048, 16384])]
        sizes_kib: Vec<usize>,
        /// MiB each client stores and loads per block size.
        #[arg(long, default_value_t = 512)]
        mib: usize,
        /// Blocks per call (KVBM's offload engine batches).
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// The node's S3 endpoint without MD5 ETags (`s3.md5_etags = false`; KVBM uses ETags
        /// only as If-Match tokens).
        #[arg(long)]
        no_md5_etags: bool,
    },
    /// Checkpoint files written through a cluster (nodes in network namespaces, etcd,
    /// Azurite) by `kvtier cp`, the Python `kvtier://` filesystem and S3 while faults run one
    /// at a time; then every acknowledged file is checked on every node, on a wiped node
    /// and in Blob. Prints faults, writes acknowledged/failed/unknown, losses, settle time.
    Chaos {
        /// Nodes of the cluster.
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        /// Faults injected in all.
        #[arg(long, default_value_t = 1000)]
        faults: u64,
        /// Rounds the faults are cut into: the checks run (and the files are deleted) after each.
        #[arg(long, default_value_t = 10)]
        rounds: u64,
        /// Smallest file, in KiB.
        #[arg(long, default_value_t = 1)]
        min_kib: u64,
        /// Largest file, in MiB.
        #[arg(long, default_value_t = 200)]
        max_mib: u64,
        /// SSD of each node, in MiB.
        #[arg(long, default_value_t = 2048)]
        ssd_mib: u64,
        /// Most MiB/s each of the three writers writes (its data, and Azurite's workspace,
        /// which grows 2.5-6 GiB a round, must fit the disk).
        #[arg(long, default_value_t = 1.5)]
        mib_per_s: f64,
        /// Seconds the writers run before the first fault (the throughput baseline).
        #[arg(long, default_value_t = 20)]
        warmup_s: u64,
        /// Python with the `kvtier` package, fsspec and boto3 (the test venv).
        #[arg(long, env = "KVTIER_PYTHON", default_value = "python3")]
        python: String,
        /// Every node on loopback instead of hosts of their own (no partitions then).
        #[arg(long)]
        loopback: bool,
        /// GiB of disk that must be free (under --dir and the system temp dir, where
        /// Azurite keeps its blobs) for a round to start; below it the run stops and
        /// reports the rounds it completed (and under half of it, a round is cut short).
        /// Default 8, or 2 with --quick (three nodes of 1 GiB SSD write well under 1 GiB).
        #[arg(long)]
        min_free_gib: Option<u64>,
    },
    /// LMCache's chunks (256 tokens of an 8B model) through kvtier's three LMCache paths
    /// (lm://, the remote storage plugin, the native L2 client) vs LMCache's own server.
    Lmcache {
        /// Layers of the model (32 for an 8B Llama; a chunk is 1 MiB per layer).
        #[arg(long, default_value_t = 32)]
        layers: usize,
        /// Chunks stored and read per path.
        #[arg(long, default_value_t = 16)]
        count: usize,
        /// Python interpreter with lmcache 0.5.6 and the `kvtier` package installed.
        #[arg(long, env = "KVTIER_PYTHON", default_value = "python3")]
        python: String,
    },
    /// kvtier's vLLM tier vs vLLM 0.32's own `fs` tier on the same disk: store, lookup, load.
    Vllm {
        /// Chunk size in KiB.
        #[arg(long, default_value_t = 2048)]
        size_kib: usize,
        /// Chunks stored and loaded per tier.
        #[arg(long, default_value_t = 10240)]
        count: usize,
        /// kvtier's memory tier in MiB (the default config's); the rest of the working set
        /// is served from its SSD tier.
        #[arg(long, default_value_t = 1024)]
        memory_mib: u64,
        /// Python interpreter with vLLM 0.32 and the `kvtier` package installed.
        #[arg(long, env = "KVTIER_PYTHON", default_value = "python3")]
        python: String,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let parent = cli.dir.clone().unwrap_or_else(std::env::temp_dir);
    // `--dir` names where scratch goes, like `mkdir -p`: a directory that is not there yet
    // is made rather than refused.
    std::fs::create_dir_all(&parent).with_context(|| format!("creating the scratch directory {}", parent.display()))?;
    let scratch =
        tempfile::tempdir_in(&parent).with_context(|| format!("creating scratch space in {}", parent.display()))?;
    let mut out = report::Reporter::new(cli.json);
    match cli.command {
        Command::Tiers { sizes_kib, working_set_mib, qds } => {
            let args = tiers::Args {
                sizes: sizes_kib.iter().map(|k| k << 10).collect(),
                working_set: if cli.quick { 32 << 20 } else { working_set_mib << 20 },
                qds: if cli.quick { vec![1, 8] } else { qds },
                rounds: if cli.quick { 1 } else { 3 },
            };
            tiers::run(&args, scratch.path(), &mut out).await
        }
        Command::SsdFill { capacities_mib, chunk_mib, max_mib } => {
            let capacities = if cli.quick { vec![256] } else { capacities_mib };
            let args = ssd_fill::Args {
                capacities: capacities.iter().map(|m| m << 20).collect(),
                chunk: chunk_mib << 20,
                max_file: max_mib << 20,
            };
            ssd_fill::run(&args, scratch.path(), &mut out).await
        }
        Command::Server { size_kib, count, concurrency } => {
            let args = server::Args { size: size_kib << 10, count: if cli.quick { 32 } else { count }, concurrency };
            server::run(&args, scratch.path(), &mut out).await
        }
        Command::Shm { size_kib, count, python } => {
            let (count, rounds) = if cli.quick { (16, 1) } else { (count, 5) };
            let args = shm::Args { size: size_kib << 10, count, rounds, python };
            shm::run(&args, scratch.path(), &mut out).await
        }
        Command::Blob { size_kib, total_mib, segment_mib } => {
            let (total_mib, samples) = if cli.quick { (64, 16) } else { (total_mib, 200) };
            let args = blob::Args { size: size_kib << 10, total: total_mib << 20, segment: segment_mib << 20, samples };
            blob::run(&args, &mut out).await
        }
        Command::Checkpoint { writers, shard_mib } => {
            let shard = if cli.quick { 16 << 20 } else { shard_mib << 20 };
            checkpoint::run(&checkpoint::Args { writers, shard }, scratch.path(), &mut out).await
        }
        Command::Sim { nodes, blocks_per_node, checkpoint_kib } => {
            let nodes = if cli.quick { nodes.min(100) } else { nodes };
            sim::run(&sim::Args { nodes, blocks_per_node, checkpoint: checkpoint_kib << 10 }, scratch.path(), &mut out)
                .await
        }
        Command::S3 { size_kib, count, clients, python } => {
            let count = if cli.quick { 16 } else { count };
            s3::run(&s3::Args { size: size_kib << 10, count, clients, python }, scratch.path(), &mut out).await
        }
        Command::Trace { traces, block_bytes, scale, capacity_pct, memory_pct, prefill_tokens_per_s, limit, plot } => {
            // --quick: the first 1000 requests at a tight and an ample capacity.
            let (capacity_pct, limit) = if cli.quick { (vec![5.0, 50.0], Some(1000)) } else { (capacity_pct, limit) };
            let args = trace::Args {
                traces: traces.into_iter().map(std::path::PathBuf::from).collect(),
                block_bytes,
                scale,
                capacities: capacity_pct.iter().map(|p| p / 100.0).collect(),
                memory_share: memory_pct / 100.0,
                prefill_tokens_per_s,
                limit,
                plot,
            };
            trace::run(&args, scratch.path(), &mut out).await
        }
        Command::Dynamo { sizes_kib, mib, batch, no_md5_etags } => {
            let (sizes_kib, mib) = if cli.quick { (vec![2048], 32) } else { (sizes_kib, mib) };
            let sizes = sizes_kib.iter().map(|k| k << 10).collect();
            let args = dynamo::Args { sizes, bytes: mib << 20, batch, md5_etags: !no_md5_etags };
            dynamo::run(&args, scratch.path(), &mut out).await
        }
        Command::Chaos {
            nodes,
            faults,
            rounds,
            min_kib,
            max_mib,
            ssd_mib,
            mib_per_s,
            warmup_s,
            python,
            loopback,
            min_free_gib,
        } => {
            // --quick: what CI runs: three nodes, each kind of fault twice or more, small
            // files, two rounds (the faults of the second come after the first's deletes).
            let (nodes, faults, rounds, max_mib, ssd_mib, warmup_s) =
                if cli.quick { (3, 12, 2, 8, 1024, 5) } else { (nodes, faults, rounds, max_mib, ssd_mib, warmup_s) };
            let min_free_gib = min_free_gib.unwrap_or(if cli.quick { 2 } else { 8 });
            let args = chaos::Args {
                nodes,
                faults,
                rounds,
                min_size: min_kib << 10,
                max_size: max_mib << 20,
                ssd: ssd_mib << 20,
                mib_per_s,
                warmup: std::time::Duration::from_secs(warmup_s),
                settle_goal: std::time::Duration::from_secs(60),
                python,
                loopback,
                min_free: min_free_gib << 30,
            };
            // Ctrl-C or SIGTERM ends the run, not the process: the run's nodes, etcd,
            // Azurite and network namespaces are dropped (stopped, removed) on the way out.
            tokio::select! {
                done = chaos::run(&args, scratch.path(), &mut out) => done,
                signal = interrupted() => Err(anyhow::anyhow!("chaos: {signal}; the nodes, etcd, Azurite and network namespaces were stopped and removed")),
            }
        }
        Command::Lmcache { layers, count, python } => {
            let (layers, count) = if cli.quick { (4, 8) } else { (layers, count) };
            lmcache::run(&lmcache::Args { layers, count, python }, scratch.path(), &mut out).await
        }
        Command::Vllm { size_kib, count, memory_mib, python } => {
            let (count, memory_mib) = if cli.quick { (128, 128) } else { (count, memory_mib) };
            let args = vllm::Args { size: size_kib << 10, count, memory: memory_mib << 20, python };
            vllm::run(&args, scratch.path(), &mut out).await
        }
    }
}

/// Waits for Ctrl-C or SIGTERM; which.
async fn interrupted() -> &'static str {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted (Ctrl-C)",
        _ = term.recv() => "terminated (SIGTERM)",
    }
}
