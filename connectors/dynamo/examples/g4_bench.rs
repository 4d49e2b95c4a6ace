//! What `kvtier-bench dynamo` measures (bench/src/dynamo.rs starts the servers and prints the
//! ratios): KVBM's G4 offload and onboard of KV blocks, `put_blocks_with_layout` then
//! `get_blocks_with_layout` from and into a host-memory KV layout (fully contiguous: 32
//! layers, K and V, 16 tokens; the hidden size sets the block size), in calls of `--batch`
//! blocks as KVBM's offload engine makes them, through
//! - `s3-kvtier`: KVBM's `S3ObjectBlockClient` against kvtier's S3 endpoint,
//! - `native`: `KvtierObjectBlockClient` over the node's shared memory (gRPC when none),
//! - `s3-moto`: KVBM's `S3ObjectBlockClient` against moto, a plain S3 server (the baseline).
//!
//! Prints one JSON object per client and op: MiB/s over the whole run, and the p50 and p99
//! of one call's latency. Credentials for the S3 clients come from the AWS default chain.

use std::{sync::Arc, time::Instant};

use anyhow::{Context, Result, ensure};
use kvbm_engine::{
    SequenceHash,
    object::{
        ObjectBlockOps,
        s3::{S3Config, S3ObjectBlockClient},
    },
};
use kvbm_physical::{
    testing::{TransferChecksums, create_fc_layout_with_config, create_test_agent_with_backends, custom_config},
    transfer::{FillPattern, PhysicalLayout, StorageKind},
};
use kvtier_dynamo::{Durability, KvtierConfig, KvtierObjectBlockClient};

struct Args {
    kvtier_s3: String,
    moto: String,
    grpc: String,
    shm: Option<String>,
    namespace: String,
    size: usize,
    count: usize,
    batch: usize,
}

fn args() -> Result<Args> {
    let mut found = std::collections::HashMap::new();
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        let value = argv.next().with_context(|| format!("{flag} needs a value"))?;
        found.insert(flag.trim_start_matches("--").to_string(), value);
    }
    let mut take = |name: &str| found.remove(name).with_context(|| format!("--{name} is missing"));
    Ok(Args {
        kvtier_s3: take("kvtier-s3")?,
        moto: take("moto")?,
        grpc: take("grpc")?,
        shm: take("shm").ok().filter(|s| !s.is_empty()),
        namespace: take("namespace")?,
        size: take("size")?.parse()?,
        count: take("count")?.parse()?,
        batch: take("batch")?.parse()?,
    })
}

/// The p-th quantile of `sorted` (microseconds).
fn quantile(sorted: &[u128], p: f64) -> u128 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Puts then gets every block of `source` through `client` in calls of `batch`, checks what
/// came back, and prints the figures.
async fn measure(client: Arc<dyn ObjectBlockOps>, name: &str, args: &Args, seed: u64) -> Result<()> {
    let agent = create_test_agent_with_backends(&format!("g4-bench-{name}"), &["POSIX"])?;
    // 32 layers x K,V x 16 tokens x hidden x 2 bytes (bf16).
    let hidden = args.size / (32 * 2 * 16 * 2);
    ensure!(hidden * 32 * 2 * 16 * 2 == args.size, "--size must be a multiple of 2 KiB");
    let config = || custom_config(args.count, 32, 2, 16, hidden, 2);
    let source = create_fc_layout_with_config(agent.clone(), StorageKind::System, config());
    let ids: Vec<usize> = (0..args.count).collect();
    let sums = TransferChecksums::fill_and_capture(&source, &ids, FillPattern::Sequential)?;
    let hashes: Vec<SequenceHash> = (0..args.count).map(|i| SequenceHash::root(seed ^ i as u64)).collect();
    let target = create_fc_layout_with_config(agent, StorageKind::System, config());
    for (op, layout) in [("put", &source), ("get", &target)] {
        let mut latencies = Vec::new();
        let started = Instant::now();
        for (keys, ids) in hashes.chunks(args.batch).zip(ids.chunks(args.batch)) {
            let (keys, ids, layout): (Vec<SequenceHash>, Vec<usize>, PhysicalLayout) =
                (keys.to_vec(), ids.to_vec(), layout.clone());
            let call = Instant::now();
            let done = match op {
                "put" => client.put_blocks_with_layout(keys, layout, ids).await,
                _ => client.get_blocks_with_layout(keys, layout, ids).await,
            };
            latencies.push(call.elapsed().as_micros());
            ensure!(done.iter().all(Result::is_ok), "{name}: a {op} failed: {done:?}");
        }
        let secs = started.elapsed().as_secs_f64();
        latencies.sort_unstable();
        let mib_s = (args.size * args.count) as f64 / (1 << 20) as f64 / secs;
        println!(
            "{{\"client\":\"{name}\",\"op\":\"{op}\",\"size\":{},\"mib_s\":{mib_s:.1},\"p50_us\":{},\"p99_us\":{}}}",
            args.size,
            quantile(&latencies, 0.5),
            quantile(&latencies, 0.99)
        );
    }
    sums.verify_against(&target, &ids).map_err(|e| anyhow::anyhow!("{name}: the blocks came back changed: {e}"))?;
    Ok(())
}

async fn s3(endpoint: &str, bucket: &str) -> Result<Arc<dyn ObjectBlockOps>> {
    let client = S3ObjectBlockClient::new(S3Config::minio(endpoint.into(), bucket.into())).await?;
    client.ensure_bucket_exists().await?;
    Ok(Arc::new(client))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = args()?;
    let native = KvtierConfig {
        server: args.grpc.clone(),
        shm_socket: args.shm.clone().map(Into::into),
        namespace: args.namespace.clone(),
        durability: Durability::LocalDisk,
    };
    let native: Arc<dyn ObjectBlockOps> = Arc::new(KvtierObjectBlockClient::connect(native).await?);
    measure(s3(&args.moto, "g4-bench").await?, "s3-moto", &args, 1).await?;
    measure(s3(&args.kvtier_s3, "g4-bench").await?, "s3-kvtier", &args, 2).await?;
    measure(native, "native", &args, 3).await
}
