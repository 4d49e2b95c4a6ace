//! `kvtier-bench blob`: the Blob tier against a real Azurite, started for the run by
//! `scripts/azurite.sh`. The same blocks (2 MiB by default) go through `BlobTier` (packed
//! into segments, the flusher's path) and through a plain `object_store` put loop (one object
//! per block) with the same bytes in flight. Reported, each with its baseline from this run:
//! write throughput, PUTs per GiB (goal <= 8; the loop needs one per block), bytes sent to
//! Blob per byte stored (goal 1.0), and the latency of reading one block back (a ranged GET
//! inside a segment, checked, against a GET of the block's own object).
//!
//! Then the same through a node (an in-process `Manager` on a temp SSD): every block put
//! with write-back durability, timed until the flusher has it all in Blob (flush throughput
//! against the plain loop, and the node's PUTs per GiB); then a second node with an empty
//! disk on the same prefix reads blocks through from Blob (read-through latency against a
//! plain GET).

use std::{sync::Arc, time::Instant};

use anyhow::{Context, Result, ensure};
use futures::{StreamExt, TryStreamExt};
use kvtier_testkit::{Azurite, pattern};
use kvtier_tiers::{BlobTierBuilder, Block, BlockKey, Tier, TierExt};
use object_store::{ObjectStore, path::Path};

use crate::report::{Reporter, Result as Measured, bar, mib_per_s, size_name};

/// Settings of one `blob` run.
#[derive(Debug, Clone)]
pub(crate) struct Args {
    pub(crate) size: usize,
    pub(crate) total: usize,
    pub(crate) segment: usize,
    pub(crate) samples: usize,
}

/// Bytes in flight, the same for both writers: four segments, or as many single blocks.
const SEGMENTS_IN_FLIGHT: usize = 4;

pub(crate) async fn run(args: &Args, out: &mut Reporter) -> Result<()> {
    let azurite = Azurite::start();
    let options = azurite.options();
    let count = args.total / args.size;
    let blocks: Vec<Block> = (0..count)
        .map(|i| {
            Block::new(
                BlockKey::parse("bench/blob", &(i as u64).to_be_bytes()).expect("valid"),
                pattern(i as u64, args.size),
            )
        })
        .collect();
    let bytes = count * args.size;

    // kvtier: segment-sized batches, SEGMENTS_IN_FLIGHT at a time.
    let tier = Arc::new(
        BlobTierBuilder::new("az://kvtier/bench-kv")
            .options(options.clone())
            .segment_size(args.segment as u64)
            .max_block_size(args.size as u64)
            .open()
            .await?,
    );
    let per_segment = (args.segment / args.size).max(1);
    let progress = bar(count as u64, "blob: kvtier segments");
    let started = Instant::now();
    let batches: Vec<&[Block]> = blocks.chunks(per_segment).collect();
    let results: Vec<_> = futures::stream::iter(batches.into_iter().map(|b| {
        let (tier, progress) = (tier.clone(), progress.clone());
        async move {
            let r = tier.put_batch(b).await;
            progress.inc(b.len() as u64);
            r
        }
    }))
    .buffer_unordered(SEGMENTS_IN_FLIGHT)
    .collect()
    .await;
    let ours_s = started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    ensure!(results.iter().flatten().all(|r| r.is_ok()), "a kvtier put to Azurite failed");

    // Baseline: one object per block, the same bytes in flight.
    let url = url::Url::parse("azure://kvtier/bench-plain")?;
    let (store, prefix) = object_store::parse_url_opts(&url, options.clone())?;
    let store: Arc<dyn ObjectStore> = Arc::from(store);
    let progress = bar(count as u64, "blob: object per block");
    let started = Instant::now();
    let puts: Vec<_> = futures::stream::iter(blocks.iter().enumerate().map(|(i, b)| {
        let (store, progress) = (store.clone(), progress.clone());
        let path = Path::from(format!("{prefix}/{i:08}"));
        async move {
            let r = store.put(&path, b.data.clone().into()).await;
            progress.inc(1);
            r
        }
    }))
    .buffer_unordered(SEGMENTS_IN_FLIGHT * per_segment)
    .collect()
    .await;
    let plain_s = started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    ensure!(puts.iter().all(|r| r.is_ok()), "a plain put to Azurite failed");

    // What reached Blob: objects and bytes under kvtier's prefix.
    let listed: Vec<_> = store.list(Some(&Path::from("bench-kv"))).try_collect().await?;
    let (objects, sent) = (listed.len(), listed.iter().map(|m| m.size).sum::<u64>());
    let gib = bytes as f64 / (1u64 << 30) as f64;

    // Reading one block back: ranged GET in a segment vs GET of the block's own object.
    let (mut ours, mut plain) = (Vec::new(), Vec::new());
    for s in 0..args.samples {
        let i = (s * 7919) % count;
        let t = Instant::now();
        let got = tier.get(&blocks[i].key).await?.context("a stored block")?;
        ours.push(t.elapsed().as_micros() as f64);
        ensure!(got.data == blocks[i].data, "block {i} came back different");
        let t = Instant::now();
        store.get(&Path::from(format!("{prefix}/{i:08}"))).await?.bytes().await?;
        plain.push(t.elapsed().as_micros() as f64);
    }

    let plain_p50 = p50(&mut plain);
    let node = node_rows(args, &azurite, &blocks).await?;

    let name = size_name(args.size);
    out.emit(Measured::throughput(
        format!("blob_node_flush_{name}"),
        mib_per_s(bytes, node.flush_s),
        mib_per_s(bytes, plain_s),
        "object per block",
    ));
    out.emit(Measured::fewer(
        format!("blob_node_puts_per_gib_{name}"),
        node.puts as f64 / gib,
        count as f64 / gib,
        "PUTs/GiB",
        "object per block",
    ));
    out.emit(Measured::latency(
        format!("blob_node_read_through_p50_{name}"),
        node.read_through_p50_us,
        plain_p50,
        "GET of its own object",
    ));
    out.emit(Measured::throughput(
        format!("blob_write_{name}"),
        mib_per_s(bytes, ours_s),
        mib_per_s(bytes, plain_s),
        "object per block",
    ));
    out.emit(Measured::fewer(
        format!("blob_puts_per_gib_{name}"),
        objects as f64 / gib,
        count as f64 / gib,
        "PUTs/GiB",
        "object per block",
    ));
    out.emit(Measured::fewer(
        format!("blob_bytes_per_byte_{name}"),
        sent as f64 / bytes as f64,
        1.0,
        "B/B",
        "the bytes themselves",
    ));
    out.emit(Measured::latency(format!("blob_read_p50_{name}"), p50(&mut ours), plain_p50, "GET of its own object"));
    Ok(())
}

fn p50(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// What the node-level part measured.
struct NodeRun {
    flush_s: f64,
    puts: u64,
    read_through_p50_us: f64,
}

/// A node writing `blocks` back to Azurite, then an empty node reading them through.
async fn node_rows(args: &Args, azurite: &Azurite, blocks: &[Block]) -> Result<NodeRun> {
    use kvtier_blockmgr::{ByteSize, Config, Durability, GetOutcome, Manager, Metrics};
    let dir = tempfile::tempdir()?;
    let config = |name: &str| {
        let mut c = Config::default();
        c.data_dir = dir.path().join(name);
        c.max_block_size = ByteSize(args.size as u64);
        c.cpu.capacity = ByteSize(256 << 20);
        c.cpu.region_size = ByteSize((args.size as u64).next_power_of_two().max(16 << 20));
        c.ssd.capacity = ByteSize((args.total as u64 * 5 / 4).max(256 << 20));
        c.blob.url = "az://kvtier/bench-node".into();
        c.blob.options = azurite.options().into_iter().collect();
        c.blob.segment_size = ByteSize(args.segment as u64);
        c.blob.max_unflushed = 1.0;
        // A checkpoint-style burst: wait up to a second for full segments (fewest PUTs)
        // rather than the default 50 ms (least time to durability).
        c.blob.flush_linger = std::time::Duration::from_secs(1);
        c
    };
    let writer = Manager::open(&config("writer"), Metrics::new()).await?;
    let progress = bar(blocks.len() as u64, "blob: node write-back + flush");
    let started = Instant::now();
    let puts: Vec<_> = futures::stream::iter(blocks.iter().map(|b| {
        let (writer, progress) = (writer.clone(), progress.clone());
        async move {
            let r = writer.put(b.clone(), Durability::WriteBack).await;
            progress.inc(1);
            r
        }
    }))
    .buffer_unordered(16)
    .collect()
    .await;
    ensure!(puts.iter().all(|r| r.is_ok()), "a write-back put failed");
    while writer.stats().await.unflushed_bytes > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let flush_s = started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    writer.refresh_gauges().await;
    let puts = writer.metrics().blob_requests.with_label_values(&["put"]).get();
    drop(writer);

    let reader = Manager::open(&config("reader"), Metrics::new()).await?;
    let mut latencies = Vec::new();
    // Distinct blocks (7919 is prime), so each read goes to Blob, not to the memory copy
    // the previous read of it left.
    for s in 0..args.samples.min(blocks.len()) {
        let b = &blocks[(s * 7919) % blocks.len()];
        let t = Instant::now();
        let GetOutcome::Hit { block, tier } = reader.get(&b.key).await else {
            anyhow::bail!("{} was not read through from Blob", b.key)
        };
        latencies.push(t.elapsed().as_micros() as f64);
        ensure!(block.data == b.data, "{} came back different", b.key);
        ensure!(tier == kvtier_tiers::TierKind::Blob, "{} came from {tier}, not Blob", b.key);
    }
    Ok(NodeRun { flush_s, puts, read_through_p50_us: p50(&mut latencies) })
}
