//! One replay of a trace through a kvtier node, and the load speeds the TTFT model uses.

use std::{collections::HashMap, time::Instant};

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use kvtier_blockmgr::{ByteSize, Client, Config, Durability, GetItem, PutItem};
use kvtier_server::RunningServer;
use kvtier_tiers::TierKind;

use super::{Args, TOKENS_PER_BLOCK, Trace};
use crate::report::bar;

const NS: &str = "bench/trace";
/// How long a lookup pins what it reports (the get follows at once).
const PIN: std::time::Duration = std::time::Duration::from_secs(10);
/// Keys per `Has` request when counting what the node holds.
const HAS_BATCH: usize = 512;

/// Bytes per second a block loads at from each tier, through the shared-memory plane.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Speeds {
    pub(crate) memory: f64,
    pub(crate) ssd: f64,
}

impl Speeds {
    fn of(&self, tier: TierKind) -> f64 {
        match tier {
            TierKind::Cpu => self.memory,
            _ => self.ssd,
        }
    }
}

/// A node of `memory` + `ssd` blocks of `block` bytes replaying `trace`.
pub(crate) struct Replay<'a> {
    pub(crate) trace: &'a Trace,
    pub(crate) block: u64,
    pub(crate) memory: usize,
    pub(crate) ssd: usize,
    pub(crate) speeds: Speeds,
    pub(crate) args: &'a Args,
}

/// What one replay saw.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) memory_hits: u64,
    pub(crate) ssd_hits: u64,
    /// Blocks a lookup reported that the get right after did not find.
    pub(crate) vanished: u64,
    /// Blocks held at the end whose prefix parent is not: no lookup reaches them.
    pub(crate) unreachable: u64,
    pub(crate) dropped: u64,
    /// Puts the node refused.
    pub(crate) refused: u64,
    /// Mean modelled time to first token, loading the best prefix of the hits.
    pub(crate) ttft_ms: f64,
    /// Mean time to first token recomputing every token.
    pub(crate) recompute_ms: f64,
}

/// Bytes a slot of `block` bytes takes on SSD (a page of header).
fn ssd_slot(block: u64) -> u64 {
    4096 + block.next_multiple_of(4096)
}

fn node_config(dir: &std::path::Path, block: u64, memory: usize, ssd: usize) -> Config {
    let mut c = Config::default();
    c.data_dir = dir.into();
    c.server.listen = "127.0.0.1:0".into();
    c.server.metrics_listen = String::new();
    c.server.persist_on_shutdown = false;
    // Memory and SSD only: a Blob tier would keep every block the SSD evicts.
    c.blob.url = String::new();
    c.max_block_size = ByteSize(block);
    c.server.transfer_budget = ByteSize((256 << 20).max(block * 64));
    // The memory policy fills 15/16 of the arena: an arena of 16/15 the blocks' bytes. Both
    // tiers round down to whole regions, so the node never holds more than the baselines'
    // capacity (rounding up gave it up to 15% more memory at 1%).
    let region = (block.next_power_of_two() * 4).max(1 << 20);
    let arena = (memory as u64 * block * 16 / 15) / region * region;
    c.cpu.region_size = ByteSize(region);
    c.cpu.capacity = ByteSize(arena.max(2 * region));
    let ssd_region = (ssd_slot(block) * 64).max(2 << 20).next_multiple_of(4096) + 4096;
    let per_region = (ssd_region - 4096) / ssd_slot(block);
    c.ssd.region_size = ByteSize(ssd_region);
    c.ssd.capacity = ByteSize((ssd as u64 / per_region).max(2) * ssd_region);
    c
}

/// The key of trace block `id`.
fn key(id: u64) -> Vec<u8> {
    id.to_be_bytes().to_vec()
}

impl Replay<'_> {
    pub(crate) async fn run(&self, dir: &std::path::Path) -> Result<Outcome> {
        std::fs::create_dir_all(dir)?;
        let node = RunningServer::start(node_config(dir, self.block, self.memory, self.ssd)).await?;
        let client = Client::connect(&node.grpc_addr.to_string()).await?;
        let data = Bytes::from(vec![0x5a; self.block as usize]);
        let mut out = Outcome::default();
        let (mut ttft, mut recompute) = (0.0, 0.0);
        let progress = bar(self.trace.blocks.len() as u64, &format!("trace {}", self.trace.name));
        for (blocks, &tokens) in self.trace.blocks.iter().zip(&self.trace.tokens) {
            let keys: Vec<Vec<u8>> = blocks.iter().map(|b| key(*b)).collect();
            // As an engine that schedules the load: the lookup pins what it reports until the
            // get reads it, so a hit the lookup saw is not evicted before the get.
            let found = client.lookup_pinned(NS, &keys, PIN).await?.tiers;
            let mut tiers = Vec::new();
            if !found.is_empty() {
                for item in client.get(NS, &keys[..found.len()]).await? {
                    match item {
                        GetItem::Hit { tier, .. } => tiers.push(tier),
                        // Evicted between the lookup and the get: the prefix ends here.
                        GetItem::Miss { .. } => break,
                    }
                }
                out.vanished += (found.len() - tiers.len()) as u64;
                out.memory_hits += tiers.iter().filter(|t| **t == TierKind::Cpu).count() as u64;
                out.ssd_hits += tiers.iter().filter(|t| **t != TierKind::Cpu).count() as u64;
            }
            let misses: Vec<PutItem> =
                keys[tiers.len()..].iter().map(|k| PutItem::new(k.clone(), data.clone())).collect();
            if !misses.is_empty() {
                for report in client.put(NS, &misses, Durability::Cache).await? {
                    // A cache may refuse a put (no room it can make in time): the engine goes
                    // on without storing it.
                    if let Err((code, why)) = report.result {
                        if out.refused == 0 {
                            eprintln!("trace {}: a put refused: {code:?}: {why}", self.trace.name);
                        }
                        out.refused += 1;
                    }
                }
            }
            let (best, none) = self.ttft(&tiers, tokens);
            ttft += best;
            recompute += none;
            progress.inc(1);
        }
        progress.finish_and_clear();
        let n = self.trace.blocks.len() as f64;
        out.ttft_ms = ttft / n * 1e3;
        out.recompute_ms = recompute / n * 1e3;
        out.unreachable = self.unreachable(&client).await?;
        let stats = client.stats().await?;
        out.dropped = stats.dropped;
        for t in &stats.tiers {
            eprintln!(
                "trace {}: {} holds {} blocks, {} of {} bytes",
                self.trace.name, t.name, t.blocks, t.used_bytes, t.capacity_bytes
            );
        }
        node.shutdown().await?;
        Ok(out)
    }

    /// Seconds to the first token loading the prefix of `hits` that saves the most, and
    /// recomputing all `tokens`.
    fn ttft(&self, hits: &[TierKind], tokens: u64) -> (f64, f64) {
        let rate = self.args.prefill_tokens_per_s;
        let recompute = tokens as f64 / rate;
        let (mut best, mut loaded) = (recompute, 0.0);
        for (i, tier) in hits.iter().enumerate() {
            loaded += self.args.block_bytes as f64 / self.speeds.of(*tier);
            let rest = tokens.saturating_sub((i as u64 + 1) * TOKENS_PER_BLOCK) as f64 / rate;
            best = best.min(loaded + rest);
        }
        (best, recompute)
    }

    /// Blocks the node holds whose parent (the block before them in the trace's chains) it
    /// does not.
    async fn unreachable(&self, client: &Client) -> Result<u64> {
        let mut parent: HashMap<u64, u64> = HashMap::new();
        for blocks in &self.trace.blocks {
            for w in blocks.windows(2) {
                parent.entry(w[1]).or_insert(w[0]);
            }
        }
        let ids: Vec<u64> = parent
            .keys()
            .chain(parent.values())
            .copied()
            .collect::<std::collections::HashSet<_>>()
            .into_iter()
            .collect();
        let mut held = std::collections::HashSet::new();
        for chunk in ids.chunks(HAS_BATCH) {
            let keys: Vec<Vec<u8>> = chunk.iter().map(|b| key(*b)).collect();
            for (id, presence) in chunk.iter().zip(client.has(NS, &keys).await?) {
                if presence.is_some() {
                    held.insert(*id);
                }
            }
        }
        Ok(held.iter().filter(|b| parent.get(b).is_some_and(|p| !held.contains(p))).count() as u64)
    }
}

/// Load speeds of memory and SSD as a local engine loads: 4 MiB blocks, 8 at a time,
/// through the shared-memory plane, from memory and (after memory pushed them out) from SSD.
pub(crate) async fn tier_speeds(dir: &std::path::Path) -> Result<Speeds> {
    const BLOCK: u64 = 4 << 20;
    const COUNT: usize = 64;
    let dir = dir.join("speeds");
    std::fs::create_dir_all(&dir)?;
    let mut config = node_config(&dir, BLOCK, 16, COUNT * 2);
    config.cpu.region_size = ByteSize(16 << 20);
    config.cpu.capacity = ByteSize(96 << 20);
    let node = RunningServer::start(config).await?;
    let client = Client::connect(&node.grpc_addr.to_string()).await?;
    let data = Bytes::from((0..BLOCK).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>());
    let keys: Vec<Vec<u8>> = (0..COUNT as u64).map(key).collect();
    for k in &keys {
        client.put(NS, &[PutItem::new(k.clone(), data.clone())], Durability::Cache).await?;
    }
    // Demotions run in the background: wait until the tiers stop changing.
    let mut last = Vec::new();
    let started = Instant::now();
    let tiers = loop {
        let mut now = Vec::new();
        for k in &keys {
            now.push(client.lookup(NS, std::slice::from_ref(k)).await?.first().copied());
        }
        if now == last || started.elapsed().as_secs() > 30 {
            break now;
        }
        last = now;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let on = |tier: TierKind| -> Vec<Vec<u8>> {
        keys.iter().zip(&tiers).filter(|(_, t)| **t == Some(tier)).map(|(k, _)| k.clone()).take(8).collect()
    };
    let (memory, ssd) = (on(TierKind::Cpu), on(TierKind::Ssd));
    ensure!(memory.len() >= 4 && ssd.len() >= 4, "speeds: {} blocks in memory, {} on SSD", memory.len(), ssd.len());
    // Through the shared-memory plane, as an engine on the node's host loads: one pin, a
    // copy out of each slot into the engine's buffer, one release. Memory first: an SSD
    // read promotes into memory, which pushes memory blocks out.
    let socket = node.shm_socket.clone().context("the node has an shm socket")?;
    let (memory, ssd) = tokio::task::spawn_blocking(move || {
        let mut shm = kvtier_client::shm::ShmClient::connect(&socket, &[NS])?;
        let mut bufs: Vec<Vec<u8>> = vec![vec![0; BLOCK as usize]; memory.len().max(ssd.len())];
        let mut read = |keys: &[Vec<u8>], from: TierKind| -> Result<f64> {
            let names: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
            let mut outs: Vec<&mut [u8]> = bufs.iter_mut().take(keys.len()).map(|b| b.as_mut_slice()).collect();
            let started = Instant::now();
            let got = shm.get_into(NS, &names, &mut outs)?;
            let secs = started.elapsed().as_secs_f64();
            ensure!(
                got.iter().all(|g| matches!(g, kvtier_client::shm::ShmGet::Hit { tier, .. } if *tier == from)),
                "speeds: a block was not read from {from:?} through shared memory: {got:?}"
            );
            Ok((keys.len() as u64 * BLOCK) as f64 / secs)
        };
        Ok::<_, anyhow::Error>((read(&memory, TierKind::Cpu)?, read(&ssd, TierKind::Ssd)?))
    })
    .await??;
    node.shutdown().await?;
    Ok(Speeds { memory, ssd })
}
