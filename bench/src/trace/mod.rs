//! `kvtier-bench trace`: Mooncake's request traces replayed through a kvtier node as an
//! engine would (look up the prefix, get the hits, put the misses), at capacities from
//! tight to ample, next to what LRU, Belady's OPT and an unbounded cache of the same
//! capacity would hit (models.rs), with the hits per tier, the blocks held that no prefix
//! lookup can reach, and a modelled time to first token.
//!
//! Block bytes are a model's (64 MiB per 512 tokens: 8B in bf16) divided by `--scale`; the
//! node's memory and SSD are the same share of the scaled working set, so the hit rates are
//! those of the full size. The modelled TTFT loads each hit at the speed measured for its
//! tier on this machine (blocks of 4 MiB through the shared-memory plane, as a local engine
//! loads) and recomputes the rest at
//! `--prefill-tokens-per-s`; the engine loads the prefix that saves the most time (a hit
//! slower to load than to recompute is recomputed, and so is everything after it).

mod models;
mod plot;
mod replay;

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::report::{Reporter, Result as Measured};

use self::models::Blocks;

/// Tokens per trace block.
pub(crate) const TOKENS_PER_BLOCK: u64 = 512;

/// Settings of one `trace` run.
#[derive(Debug, Clone)]
pub(crate) struct Args {
    pub(crate) traces: Vec<PathBuf>,
    /// Bytes of KV per 512-token block for the model (64 MiB: 8B, bf16).
    pub(crate) block_bytes: u64,
    /// Block bytes and capacities are divided by this.
    pub(crate) scale: u64,
    /// Node capacity (memory + SSD) as a share of the working set.
    pub(crate) capacities: Vec<f64>,
    /// Memory's share of a node's capacity.
    pub(crate) memory_share: f64,
    pub(crate) prefill_tokens_per_s: f64,
    /// Replay only the first requests of each trace.
    pub(crate) limit: Option<usize>,
    /// Where to draw hit rate against capacity (SVG).
    pub(crate) plot: Option<PathBuf>,
}

#[derive(Deserialize)]
struct Line {
    input_length: u64,
    hash_ids: Vec<u64>,
}

/// A trace's requests: input tokens and blocks.
pub(crate) struct Trace {
    pub(crate) name: String,
    pub(crate) tokens: Vec<u64>,
    pub(crate) blocks: Vec<Blocks>,
}

impl Trace {
    fn load(path: &std::path::Path, limit: Option<usize>) -> Result<Trace> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut trace = Trace {
            name: path.file_stem().and_then(|s| s.to_str()).unwrap_or("trace").replace("_trace", ""),
            tokens: Vec::new(),
            blocks: Vec::new(),
        };
        for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate().take(limit.unwrap_or(usize::MAX)) {
            let l: Line = serde_json::from_str(line).with_context(|| format!("{}:{}", path.display(), i + 1))?;
            trace.tokens.push(l.input_length);
            trace.blocks.push(l.hash_ids);
        }
        anyhow::ensure!(!trace.blocks.is_empty(), "{}: no requests", path.display());
        Ok(trace)
    }

    pub(crate) fn unique_blocks(&self) -> usize {
        self.blocks.iter().flatten().collect::<std::collections::HashSet<_>>().len()
    }

    pub(crate) fn referenced(&self) -> u64 {
        self.blocks.iter().map(|b| b.len() as u64).sum()
    }
}

pub(crate) async fn run(args: &Args, dir: &std::path::Path, out: &mut Reporter) -> Result<()> {
    let block = (args.block_bytes / args.scale).max(4096);
    let speeds = replay::tier_speeds(dir).await.context("measuring tier speeds")?;
    eprintln!(
        "trace: load speeds through shared memory: memory {:.0} MiB/s, SSD {:.0} MiB/s; recompute {} tokens/s",
        speeds.memory / (1 << 20) as f64,
        speeds.ssd / (1 << 20) as f64,
        args.prefill_tokens_per_s
    );
    let mut plot = Vec::new();
    for path in &args.traces {
        let trace = Trace::load(path, args.limit)?;
        let unique = trace.unique_blocks();
        let referenced = trace.referenced() as f64;
        let bound = models::reuse_bound(&trace.blocks) as f64 / referenced * 100.0;
        eprintln!(
            "trace {}: {} requests, {} blocks referenced, {} unique; reuse bound {bound:.1}%",
            trace.name,
            trace.blocks.len(),
            referenced,
            unique
        );
        for &share in &args.capacities {
            let total = ((unique as f64 * share).round() as usize).max(2);
            let memory = ((total as f64 * args.memory_share).round() as usize).max(1);
            let ssd = total - memory;
            let name = format!("{}_{:.0}pct", trace.name, share * 100.0);
            let run = replay::Replay { trace: &trace, block, memory, ssd, speeds, args };
            let got = run.run(&dir.join(&name)).await.with_context(|| format!("replaying {name}"))?;
            let pct = |hits: u64| hits as f64 / referenced * 100.0;
            let lru = pct(models::lru(&trace.blocks, total));
            let opt = pct(models::opt(&trace.blocks, total));
            let (lru_mem, _) = models::lru_memory_over_fifo_ssd(&trace.blocks, memory, ssd);
            let hit = pct(got.memory_hits + got.ssd_hits);
            eprintln!(
                "trace {name}: memory {memory} + SSD {ssd} blocks; hits {:.1}% (memory {}, SSD {}, lookup-then-miss {}); \
                 unreachable held {}; dropped {}; puts refused {}",
                hit, got.memory_hits, got.ssd_hits, got.vanished, got.unreachable, got.dropped, got.refused
            );
            out.emit(Measured::percent(format!("trace_hit_vs_lru_{name}"), hit, lru, "LRU, same capacity"));
            out.emit(Measured::percent(format!("trace_hit_vs_opt_{name}"), hit, opt, "Belady OPT, same capacity"));
            out.emit(Measured::percent(format!("trace_hit_vs_bound_{name}"), hit, bound, "unbounded cache"));
            out.emit(Measured {
                bench: format!("trace_memory_hits_{name}"),
                value: got.memory_hits as f64,
                baseline: lru_mem as f64,
                ratio: got.memory_hits as f64 / lru_mem.max(1) as f64,
                unit: "hits",
                baseline_name: "LRU memory over FIFO SSD".into(),
            });
            out.emit(Measured {
                bench: format!("trace_unreachable_{name}"),
                value: got.unreachable as f64,
                baseline: unique as f64,
                ratio: 1.0 - got.unreachable as f64 / unique as f64,
                unit: "blocks",
                baseline_name: "unique blocks (ratio: share reachable)".into(),
            });
            out.emit(Measured {
                bench: format!("trace_ttft_{name}"),
                value: got.ttft_ms,
                baseline: got.recompute_ms,
                ratio: got.recompute_ms / got.ttft_ms,
                unit: "ms",
                baseline_name: "recompute everything".into(),
            });
            plot.push(plot::Point {
                trace: trace.name.clone(),
                capacity_pct: share * 100.0,
                kvtier: hit,
                lru,
                opt,
                bound,
            });
        }
    }
    if let Some(path) = &args.plot {
        plot::draw(&plot, path).with_context(|| format!("drawing {}", path.display()))?;
        eprintln!("trace: hit rate against capacity drawn in {}", path.display());
    }
    Ok(())
}
