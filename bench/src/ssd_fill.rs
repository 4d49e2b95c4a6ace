//! `kvtier-bench ssd-fill`: how full the SSD tier gets before its first "no space", for
//! checkpoint files of 1 KiB to 200 MiB (log-uniform, as the chaos run writes them) cut into
//! 16 MiB chunks, so every file's last chunk has a size of its own, under three layouts of
//! the slot file:
//!
//! - classes: a region per size class, classes an eighth apart (format version 1);
//! - padded: the same, each chunk padded up to a power of two (few classes, more slack);
//! - packed: regions take blocks of any size one after another (format version 2, the
//!   default).
//!
//! Fill = bytes of chunk data held at the first refusal / the SSD's capacity, the baseline
//! (what the disk can hold). Nothing is evicted: write-back chunks cannot be until Blob has
//! them, so the first refusal is where checkpoint writes start failing. Chunks are written in
//! the order a writer sends them, one file after another.

use std::path::Path;

use anyhow::{Context, Result};
use bytes::Bytes;
use kvtier_tiers::{Block, BlockKey, SsdTierBuilder, Tier, TierExt};

use crate::report::{Reporter, Result as Measured, bar, size_name};

/// Settings of one `ssd-fill` run.
#[derive(Debug, Clone)]
pub(crate) struct Args {
    /// SSD capacities to fill (the number of regions is what matters).
    pub(crate) capacities: Vec<u64>,
    /// Chunk size of the files.
    pub(crate) chunk: u64,
    /// Largest file.
    pub(crate) max_file: u64,
}

#[derive(Debug, Clone, Copy)]
enum Layout {
    Classes,
    Padded,
    Packed,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::Classes => "classes",
            Layout::Padded => "padded",
            Layout::Packed => "packed",
        }
    }
}

pub(crate) async fn run(args: &Args, scratch: &Path, out: &mut Reporter) -> Result<()> {
    let data = Bytes::from(vec![0xA5u8; args.chunk as usize]);
    for &capacity in &args.capacities {
        for layout in [Layout::Classes, Layout::Padded, Layout::Packed] {
            let fill = fill(args, layout, capacity, &data, scratch).await?;
            let bench = format!("ssd_fill_{}_{}", layout.name(), size_name(capacity as usize));
            out.emit(Measured::percent(bench, fill * 100.0, 100.0, "the SSD's capacity"));
        }
    }
    Ok(())
}

/// Writes files' chunks to a fresh SSD tier of `capacity` until the first "no space";
/// returns the share of the capacity that chunk data took.
async fn fill(args: &Args, layout: Layout, capacity: u64, data: &Bytes, scratch: &Path) -> Result<f64> {
    let dir = tempfile::tempdir_in(scratch)?;
    let mut builder = SsdTierBuilder::new(dir.path(), capacity);
    if !matches!(layout, Layout::Packed) {
        builder = builder.with_class_layout();
    }
    let tier = builder.build().await.context("opening the SSD tier")?;
    let capacity = tier.usage().await?.capacity;
    let progress = bar(capacity, &format!("{} {}", layout.name(), size_name(capacity as usize)));
    let mut held = 0u64;
    'files: for file in 0u64.. {
        let size = crate::chaos::log_uniform(file, 1 << 10, args.max_file);
        for (part, len) in chunks(size, args.chunk).enumerate() {
            let stored = match layout {
                Layout::Padded => len.next_power_of_two(),
                Layout::Classes | Layout::Packed => len,
            };
            let key = BlockKey::parse("bench/fill", format!("{file}/{part}").as_bytes())?;
            match tier.put(Block::new(key, data.slice(..stored as usize))).await {
                Ok(_) => held += len,
                Err(e) if e.is_no_space() => break 'files,
                Err(e) => return Err(e).context(format!("writing chunk {part} of file {file}")),
            }
            progress.set_position(held);
        }
    }
    progress.finish_and_clear();
    Ok(held as f64 / capacity as f64)
}

/// Lengths of the chunks of a file of `size` bytes: full ones, then the rest.
fn chunks(size: u64, chunk: u64) -> impl Iterator<Item = u64> {
    let tail = size % chunk;
    std::iter::repeat_n(chunk, (size / chunk) as usize).chain((tail > 0).then_some(tail))
}
