//! `kvtier-bench tiers`: the CPU tier against memcpy and the SSD tier against raw O_DIRECT
//! on the same disk, for each block size, in one run.
//!
//! - memcpy: copy one source block into rotating slots of a pre-faulted buffer as large as
//!   the tier's working set (what a put into the arena must do at least).
//! - cpu put: `CpuTier::put_batch` of distinct keys (slot allocation, copy, index insert).
//! - cpu get: `CpuTier::get_batch` then copying the bytes out to a caller buffer (a zero-copy
//!   read is not comparable to a copy; the consumer's copy is).
//! - raw O_DIRECT: `pwrite`/`pread` of page-aligned blocks at rotating offsets of a
//!   preallocated file, `qd` threads at once, at each queue depth asked (1, 8, 32, 64 by
//!   default): the disk's limit is its best queue depth.
//! - ssd put/get: `SsdTier` with `qd` operations in flight (header + data write, header and
//!   CRC-32C verification on read), at the same queue depths. Each depth is a row against
//!   raw at that depth; the headline row is the tier's best against the disk's best.

use std::{
    fs::OpenOptions,
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    path::Path,
    sync::Arc,
    time::Instant,
};

use anyhow::{Context, Result};
use bytes::Bytes;
use kvtier_tiers::{Block, BlockKey, CpuTierBuilder, SsdTierBuilder, Tier};

use crate::report::{Reporter, Result as Measured, bar, mib_per_s, run_at_qd, size_name};

/// Settings of one `tiers` run.
#[derive(Debug, Clone)]
pub(crate) struct Args {
    pub(crate) sizes: Vec<usize>,
    pub(crate) working_set: usize,
    pub(crate) qds: Vec<usize>,
    pub(crate) rounds: usize,
}

/// A page-aligned heap buffer, as O_DIRECT needs.
struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: an owned allocation, like Vec<u8>.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// `len` bytes of a fixed pattern.
    fn pattern(len: usize) -> Self {
        // SAFETY: non-zero size with a valid alignment.
        let ptr = unsafe { std::alloc::alloc(Self::layout(len)) };
        assert!(!ptr.is_null(), "out of memory");
        let mut buf = AlignedBuf { ptr, len };
        buf.as_mut_slice().iter_mut().enumerate().for_each(|(i, b)| *b = (i * 31 % 251) as u8);
        buf
    }

    fn layout(len: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(len, 4096).expect("valid layout")
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `len` initialised bytes owned by us.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `len` initialised bytes owned by us.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `pattern` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, Self::layout(self.len)) }
    }
}

/// Page-aligned pattern bytes as `Bytes`: the SSD tier writes such blocks without a bounce
/// copy, as it does for blocks coming from the arena.
fn aligned(len: usize) -> Bytes {
    Bytes::from_owner(AlignedBuf::pattern(len))
}

fn keys(n: usize) -> Vec<BlockKey> {
    (0..n).map(|i| BlockKey::parse("bench/tiers", &(i as u64).to_be_bytes()).expect("valid key")).collect()
}

/// The median of per-round results.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed().as_secs_f64())
}

pub(crate) async fn run(args: &Args, dir: &Path, out: &mut Reporter) -> Result<()> {
    for &size in &args.sizes {
        let deepest = args.qds.iter().copied().max().unwrap_or(1);
        let n = (args.working_set / size).max(deepest * 4);
        let name = size_name(size);
        let src = aligned(size);
        let blocks: Vec<Block> = keys(n).into_iter().map(|k| Block::new(k, src.clone())).collect();

        // memcpy baselines and the CPU tier, interleaved round by round; each reports its
        // median round. Buffers are touched before timing, as the arena is (prefaulted).
        // put: one hot source block into rotating slots of a large buffer, as a put does.
        // get: rotating slots of a large cold buffer into another, as get + copy-out does.
        // All buffers are page-aligned like arena slots: a destination 16 bytes off a page
        // boundary (what malloc returns) makes copies from aligned sources 3-4x slower below
        // glibc's non-temporal threshold (4K aliasing), which would measure the allocator.
        let mut dst = AlignedBuf::pattern(n * size);
        let cold = AlignedBuf::pattern(n * size);
        let region = (size as u64).next_power_of_two().max(16 << 20);
        let cpu = CpuTierBuilder::new((n * size) as u64 + 2 * region)
            .with_region_size(region)
            .with_max_block_size(size as u64)
            .build()?;
        let all: Vec<BlockKey> = blocks.iter().map(|b| b.key.clone()).collect();
        let progress = bar((args.rounds * n * 2) as u64, &format!("cpu {name}"));
        let (mut put_base, mut put_ours, mut get_base, mut get_ours) = (vec![], vec![], vec![], vec![]);
        for _ in 0..args.rounds {
            let ((), s) =
                time(|| dst.as_mut_slice().chunks_exact_mut(size).for_each(|slot| slot.copy_from_slice(&src)));
            put_base.push(mib_per_s(n * size, s));
            cpu.delete_batch(&all).await;
            let t = Instant::now();
            for chunk in blocks.chunks(16) {
                for r in cpu.put_batch(chunk).await {
                    r.context("cpu put")?;
                }
                progress.inc(chunk.len() as u64);
            }
            put_ours.push(mib_per_s(n * size, t.elapsed().as_secs_f64()));

            let ((), s) = time(|| {
                dst.as_mut_slice()
                    .chunks_exact_mut(size)
                    .zip(cold.as_ref().chunks_exact(size))
                    .for_each(|(d, c)| d.copy_from_slice(c))
            });
            get_base.push(mib_per_s(n * size, s));
            let t = Instant::now();
            for (keys, dst) in all.chunks(16).zip(dst.as_mut_slice().chunks_mut(16 * size)) {
                for (r, out) in cpu.get_batch(keys).await.into_iter().zip(dst.chunks_exact_mut(size)) {
                    out.copy_from_slice(&r?.context("cpu get: block missing")?.data);
                }
                progress.inc(keys.len() as u64);
            }
            get_ours.push(mib_per_s(n * size, t.elapsed().as_secs_f64()));
        }
        progress.finish_and_clear();
        out.emit(Measured::throughput(
            format!("cpu_put_{name}"),
            median(put_ours),
            median(put_base),
            "memcpy (hot source)",
        ));
        out.emit(Measured::throughput(
            format!("cpu_get_{name}"),
            median(get_ours),
            median(get_base),
            "memcpy (cold source)",
        ));
        drop((cpu, dst, cold));

        // Raw O_DIRECT and the SSD tier, same directory, same queue depth, interleaved.
        let raw = RawFile::create(dir, size, n)?;
        let ssd_dir = tempfile::tempdir_in(dir)?;
        let region = (size as u64 + 8192).next_multiple_of(1 << 20) * 4;
        let slots_per_region = (region - 4096) / (size as u64 + 4096);
        let capacity = (n as u64).div_ceil(slots_per_region) * region + region;
        let ssd = Arc::new(
            SsdTierBuilder::new(ssd_dir.path(), capacity)
                .with_region_size(region)
                .with_max_block_size(size as u64)
                .build()
                .await?,
        );
        let progress = bar((args.rounds * args.qds.len() * n * 2) as u64, &format!("ssd {name}"));
        let mut by_qd: Vec<AtDepth> = Vec::new();
        for &qd in &args.qds {
            let (mut put_base, mut put_ours, mut get_base, mut get_ours) = (vec![], vec![], vec![], vec![]);
            for _ in 0..args.rounds {
                ssd.delete_batch(&all).await;
                put_base.push(raw.pass(true, qd));
                let (puts, secs) = run_at_qd(n, qd, |i| {
                    let (ssd, progress, b) = (ssd.clone(), progress.clone(), &blocks[i..=i]);
                    async move {
                        let r = ssd.put_batch(b).await.remove(0);
                        progress.inc(1);
                        r
                    }
                })
                .await;
                put_ours.push(mib_per_s(n * size, secs));
                for (r, _) in puts {
                    r.context("ssd put")?;
                }

                get_base.push(raw.pass(false, qd));
                let (gets, secs) = run_at_qd(n, qd, |i| {
                    let (ssd, progress, k) = (ssd.clone(), progress.clone(), &all[i..=i]);
                    async move {
                        let r = ssd.get_batch(k).await.remove(0);
                        progress.inc(1);
                        r.map(|b| b.map(|b| b.data.len()))
                    }
                })
                .await;
                get_ours.push(mib_per_s(n * size, secs));
                for (g, _) in gets {
                    anyhow::ensure!(g.context("ssd get")? == Some(size), "ssd get returned the wrong block");
                }
            }
            by_qd.push(AtDepth {
                qd,
                raw_put: median(put_base),
                put: median(put_ours),
                raw_get: median(get_base),
                get: median(get_ours),
            });
        }
        progress.finish_and_clear();
        for d in &by_qd {
            let qd = d.qd;
            out.emit(Measured::throughput(format!("ssd_put_{name}_qd{qd}"), d.put, d.raw_put, "raw O_DIRECT pwrite"));
            out.emit(Measured::throughput(format!("ssd_get_{name}_qd{qd}"), d.get, d.raw_get, "raw O_DIRECT pread"));
        }
        // Each side at its best queue depth: (MiB/s, the depth).
        let best = |pick: fn(&AtDepth) -> f64| {
            by_qd.iter().map(|d| (pick(d), d.qd)).fold((0.0, 0), |a, b| if b.0 > a.0 { b } else { a })
        };
        for (op, ours, base, call) in [
            ("put", best(|d| d.put), best(|d| d.raw_put), "pwrite"),
            ("get", best(|d| d.get), best(|d| d.raw_get), "pread"),
        ] {
            out.emit(Measured::throughput(
                format!("ssd_{op}_{name}"),
                ours.0,
                base.0,
                format!("raw O_DIRECT {call} at the disk's best QD ({}; kvtier's best: QD {})", base.1, ours.1),
            ));
        }
        if !ssd.direct_io() {
            eprintln!(
                "note: the filesystem under {} refused O_DIRECT; SSD numbers include the page cache",
                dir.display()
            );
        }
    }
    Ok(())
}

/// One queue depth's medians over the rounds, in MiB/s: raw O_DIRECT and the SSD tier.
struct AtDepth {
    qd: usize,
    raw_put: f64,
    put: f64,
    raw_get: f64,
    get: f64,
}

/// The raw O_DIRECT baseline: a preallocated file of `n` blocks of `size` bytes.
struct RawFile {
    file: std::fs::File,
    path: std::path::PathBuf,
    size: usize,
    n: usize,
}

impl RawFile {
    fn create(dir: &Path, size: usize, n: usize) -> Result<Self> {
        let path = dir.join(format!("raw-odirect-{}.bin", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)?;
        // SAFETY: fallocate on a descriptor we own.
        if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, (n * size) as libc::off_t) } != 0 {
            file.set_len((n * size) as u64)?;
        }
        Ok(RawFile { file, path, size, n })
    }

    /// MiB/s of `qd` threads writing (or reading) every block once with `pwrite`/`pread`,
    /// thread `w` taking blocks w, w+qd, w+2qd, ...
    fn pass(&self, write: bool, qd: usize) -> f64 {
        let (fd, size, n) = (self.file.as_raw_fd(), self.size, self.n);
        let t = Instant::now();
        std::thread::scope(|s| {
            for w in 0..qd {
                s.spawn(move || {
                    let mut buf = AlignedBuf::pattern(size);
                    for i in (w..n).step_by(qd) {
                        let off = (i * size) as libc::off_t;
                        let ptr = buf.as_mut_slice().as_mut_ptr();
                        // SAFETY: an aligned buffer of `size` bytes; offsets inside the file.
                        let r = unsafe {
                            if write {
                                libc::pwrite(fd, ptr.cast(), size, off)
                            } else {
                                libc::pread(fd, ptr.cast(), size, off)
                            }
                        };
                        assert_eq!(r, size as isize, "raw O_DIRECT {}", if write { "pwrite" } else { "pread" });
                    }
                });
            }
        });
        mib_per_s(n * size, t.elapsed().as_secs_f64())
    }
}

impl Drop for RawFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
