//! `kvtier-bench blob`: the Blob tier against a real Azurite, started for the run by
//! `scripts/azurite.sh`. The same blocks (2 MiB by default) go through `BlobTier` (packed
//! into segments, the flusher's path) and through a plain `object_store` put loop (one object
//! per block) with the same bytes in flight. Reported, each with its baseline from this run:
//! write throughput, PUTs per GiB (goal <= 8; the loop needs one per block), bytes sent to
//! Blob per byte stored (goal 1.0), and the latency of reading one block back (a ranged GET
//! inside a segment, checked, against a GET of the block's own object).

use std::{sync::Arc, time::Instant};

use anyhow::{Context, Result, ensure};
use futures::{StreamExt, TryStreamExt};
use kvtier_tiers::{
    BlobTierBuilder, Block, BlockKey, Tier, TierExt,
    conformance::{Azurite, pattern},
};
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
    let p50 = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };

    let name = size_name(args.size);
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
    out.emit(Measured::latency(
        format!("blob_read_p50_{name}"),
        p50(&mut ours),
        p50(&mut plain),
        "GET of its own object",
    ));
    Ok(())
}
