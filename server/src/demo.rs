//! `kvtier demo`: one run through the whole block path on a small node, so a new user sees
//! puts, lookups, demotion to SSD, reads and stats in a few seconds.

use std::{path::PathBuf, time::Instant};

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use kvtier_blockmgr::{ByteSize, Client, Config, Durability, GetItem, PutItem};
use kvtier_server::RunningServer;
use kvtier_tiers::human_bytes;

const BLOCK: usize = 2 << 20;
const BLOCKS: usize = 96;
const BATCH: usize = 16;
const NAMESPACE: &str = "demo/llama3-8b/bf16-16tok";

pub(crate) async fn run(data_dir: Option<PathBuf>) -> Result<()> {
    let (dir, temporary) = match data_dir {
        Some(d) => (d, false),
        None => (std::env::temp_dir().join(format!("kvtier-demo-{}", std::process::id())), true),
    };
    let mut config = Config::default();
    config.data_dir = dir.clone();
    config.server.listen = "127.0.0.1:0".into();
    config.server.metrics_listen = "127.0.0.1:0".into();
    config.server.persist_on_shutdown = false;
    config.cpu.capacity = ByteSize(64 << 20);
    config.cpu.region_size = ByteSize(16 << 20);
    config.ssd.capacity = ByteSize(520 << 20);
    config.max_block_size = ByteSize(8 << 20);

    println!(
        "kvtier demo: a node with {} of memory and {} of SSD in {}",
        human_bytes(64 << 20),
        human_bytes(520 << 20),
        dir.display()
    );
    let server = RunningServer::start(config).await.context("starting the demo node")?;
    let unix = server.unix_socket.clone().context("the demo node has a unix socket")?;
    println!(
        "serving gRPC on {} and unix://{}; metrics on http://{}/metrics",
        server.grpc_addr,
        unix.display(),
        server.metrics_addr.map(|a| a.to_string()).unwrap_or_default()
    );

    let result = exercise(&format!("unix://{}", unix.display()), &server.grpc_addr.to_string()).await;
    server.shutdown().await?;
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn block(i: usize) -> Bytes {
    let mut data = vec![0u8; BLOCK];
    for (j, chunk) in data.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&((i as u64) << 32 | j as u64).to_le_bytes());
    }
    data.into()
}

fn key(i: usize) -> Vec<u8> {
    format!("prefix-block-{i:04}").into_bytes()
}

async fn exercise(unix: &str, tcp: &str) -> Result<()> {
    let client = Client::connect(unix).await?;
    let total = BLOCKS * BLOCK;
    println!(
        "\n1. put {BLOCKS} blocks of {} ({}) in batches of {BATCH} over the unix socket",
        human_bytes(BLOCK as u64),
        human_bytes(total as u64)
    );
    let started = Instant::now();
    for first in (0..BLOCKS).step_by(BATCH) {
        let items: Vec<PutItem> = (first..first + BATCH).map(|i| PutItem::new(key(i), block(i))).collect();
        for r in client.put(NAMESPACE, &items, Durability::Cache).await? {
            r.result.map_err(|(code, msg)| anyhow::anyhow!("put refused ({code}): {msg}"))?;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "   {:.0} MiB/s; memory holds 64 MiB, so the rest was demoted to SSD",
        total as f64 / secs / (1 << 20) as f64
    );

    let keys: Vec<Vec<u8>> = (0..BLOCKS).map(key).chain([b"never-stored".to_vec()]).collect();
    let tiers = client.lookup(NAMESPACE, &keys).await?;
    let in_memory = tiers.iter().filter(|t| t.as_str() == "cpu").count();
    println!(
        "\n2. lookup of {} keys: prefix of {} present ({in_memory} in memory, {} on SSD)",
        keys.len(),
        tiers.len(),
        tiers.len() - in_memory
    );
    ensure!(tiers.len() == BLOCKS, "every stored block is present");

    println!("\n3. get all {BLOCKS} blocks back over TCP and check every byte");
    let tcp_client = Client::connect(tcp).await?;
    let started = Instant::now();
    let mut from = std::collections::BTreeMap::new();
    for first in (0..BLOCKS).step_by(BATCH) {
        let batch: Vec<Vec<u8>> = (first..first + BATCH).map(key).collect();
        for (i, item) in (first..).zip(tcp_client.get(NAMESPACE, &batch).await?) {
            match item {
                GetItem::Hit { data, tier, .. } => {
                    ensure!(data == block(i), "block {i} came back different");
                    *from.entry(tier.as_str()).or_insert(0) += 1;
                }
                GetItem::Miss { reason, message } => anyhow::bail!("block {i} missing ({reason:?}): {message}"),
            }
        }
    }
    println!(
        "   {:.0} MiB/s, all {BLOCKS} byte-exact; served from {from:?}",
        total as f64 / started.elapsed().as_secs_f64() / (1 << 20) as f64
    );

    let missing = client.get(NAMESPACE, &[b"never-stored".to_vec()]).await?;
    println!(
        "\n4. a key never stored: {:?}",
        matches!(missing[0], GetItem::Miss { .. }).then_some("miss").unwrap_or("hit?!")
    );

    println!("\n5. kvtier stat:\n");
    print!("{}", crate::render_stats(&client.stats().await?));
    println!("\nNext: `kvtier serve` runs a node on 127.0.0.1:50051 (CPU 1 GiB + SSD 8 GiB under ./kvtier-data).");
    Ok(())
}
