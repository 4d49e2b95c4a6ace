//! `kvtier-bench dynamo`: NVIDIA Dynamo KVBM's G4 tier storing and loading KV blocks (2 MiB
//! and 16 MiB) through
//! - KVBM's own S3 client (`kvbm-engine`'s `S3ObjectBlockClient`) against kvtier's S3 endpoint,
//! - kvtier's native G4 client (`KvtierObjectBlockClient`, shared memory with the node),
//! - KVBM's S3 client against moto, a plain S3 server: the baseline a user has without kvtier,
//!
//! in one run: put and get throughput, and the p99 of one call (a batch of blocks, as KVBM's
//! offload engine makes them). KVBM's crates pin their own tokio, so the clients run in
//! connectors/dynamo (`examples/g4_bench.rs`, by `scripts/dynamo.sh bench`); this process
//! runs the node and moto and prints the ratios. The goal (issue 19): native >= 3x, S3 to
//! kvtier >= 1.5x the baseline.

use std::{collections::HashMap, process::Command};

use anyhow::{Context, Result, ensure};
use kvtier_blockmgr::ByteSize;
use kvtier_server::RunningServer;
use kvtier_testkit::S3Server;

use crate::report::{Reporter, Result as Measured, s3_node_config, size_name};

const KEY: (&str, &str) = ("AKIDG4BENCH", "g4-bench-secret");
const BASELINE: &str = "KVBM's S3 client -> moto";

/// Settings of one `dynamo` run.
#[derive(Debug, Clone)]
pub(crate) struct Args {
    /// Block sizes in bytes.
    pub(crate) sizes: Vec<usize>,
    /// Bytes each client moves per size and op.
    pub(crate) bytes: usize,
    /// Blocks per call.
    pub(crate) batch: usize,
    /// S3's MD5 ETags on the node (`s3.md5_etags`).
    pub(crate) md5_etags: bool,
}

/// One client's figures for one op: MiB/s, p50 and p99 of a call in us.
type Figures = (f64, f64, f64);

/// A node of this process: S3 (local-disk puts, MD5 ETags or not) and its shared-memory socket.
async fn start_node(dir: &std::path::Path, bytes: usize, md5_etags: bool) -> Result<RunningServer> {
    // Every client's blocks of every size fit, in memory and on SSD.
    let mut config = s3_node_config(dir, KEY, (bytes as u64 * 8).max(1 << 30));
    config.s3.durability = "local_disk".into();
    config.s3.md5_etags = md5_etags;
    config.shm.session_limit = ByteSize(256 << 20);
    RunningServer::start(config).await.context("starting the node")
}

/// Runs the clients (connectors/dynamo) for blocks of `size`: their figures by (client, op).
fn measure(
    args: &Args,
    node: &RunningServer,
    moto: &S3Server,
    size: usize,
) -> Result<HashMap<(String, String), Figures>> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/dynamo.sh");
    let shm = node.shm_socket.as_ref().context("the node's shared-memory socket")?;
    let count = (args.bytes / size).max(args.batch);
    let output = Command::new(script)
        .args(["bench", KEY.0, KEY.1])
        .args(["--kvtier-s3", &format!("http://{}", node.s3_addr.context("the node serves S3")?)])
        .args(["--moto", &moto.endpoint, "--grpc", &node.grpc_addr.to_string()])
        .args(["--shm", &shm.display().to_string(), "--namespace", &format!("kv/g4-bench-{}", size_name(size))])
        .args(["--size", &size.to_string(), "--count", &count.to_string(), "--batch", &args.batch.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {script}"))?;
    ensure!(output.status.success(), "scripts/dynamo.sh bench failed (its output is above)");
    let mut found = HashMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("parsing {line:?}"))?;
        let field = |name: &str| v[name].as_f64().with_context(|| format!("{name} in {line}"));
        let key = (v["client"].as_str().unwrap_or_default().to_string(), v["op"].as_str().unwrap_or_default().into());
        found.insert(key, (field("mib_s")?, field("p50_us")?, field("p99_us")?));
    }
    Ok(found)
}

pub(crate) async fn run(args: &Args, dir: &std::path::Path, out: &mut Reporter) -> Result<()> {
    let moto = tokio::task::spawn_blocking(S3Server::start).await?;
    let node = start_node(&dir.join("node"), args.bytes, args.md5_etags).await?;
    for &size in &args.sizes {
        let found = {
            let (args, node, moto) = (args.clone(), &node, &moto);
            tokio::task::block_in_place(|| measure(&args, node, moto, size))?
        };
        let get = |client: &str, op: &str| {
            found
                .get(&(client.to_string(), op.to_string()))
                .copied()
                .with_context(|| format!("no {client} {op} figures"))
        };
        let name = size_name(size);
        for op in ["put", "get"] {
            let base = get("s3-moto", op)?;
            for (client, label) in [("native", "native"), ("s3-kvtier", "s3")] {
                let ours = get(client, op)?;
                out.emit(Measured::throughput(format!("dynamo_{label}_{op}_{name}"), ours.0, base.0, BASELINE));
                out.emit(Measured::latency(format!("dynamo_{label}_{op}_p99_{name}"), ours.2, base.2, BASELINE));
            }
        }
    }
    node.shutdown().await?;
    Ok(())
}
