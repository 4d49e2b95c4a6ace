//! How results are printed: one JSON object per line with `--json`, a table otherwise.
//! Every result carries its baseline, measured in the same run, and the ratio.

use std::borrow::Cow;

use serde::Serialize;

/// One measurement next to its baseline.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Result {
    /// What was measured, e.g. `cpu_put_2MiB`.
    pub(crate) bench: String,
    /// Our number.
    pub(crate) value: f64,
    /// The baseline's number, same unit, same run.
    pub(crate) baseline: f64,
    /// Speed relative to the baseline (higher is better): value/baseline for throughput,
    /// baseline/value for latency.
    pub(crate) ratio: f64,
    /// Unit of `value` and `baseline`.
    pub(crate) unit: &'static str,
    /// What the baseline is.
    pub(crate) baseline_name: Cow<'static, str>,
}

impl Result {
    /// A throughput result (higher is better).
    pub(crate) fn throughput(
        bench: String,
        value: f64,
        baseline: f64,
        baseline_name: impl Into<Cow<'static, str>>,
    ) -> Self {
        Result { bench, value, baseline, ratio: value / baseline, unit: "MiB/s", baseline_name: baseline_name.into() }
    }

    /// A count per unit of work (lower is better), e.g. PUTs per GiB.
    pub(crate) fn fewer(
        bench: String,
        value: f64,
        baseline: f64,
        unit: &'static str,
        baseline_name: impl Into<Cow<'static, str>>,
    ) -> Self {
        Result { bench, value, baseline, ratio: baseline / value, unit, baseline_name: baseline_name.into() }
    }

    /// A share of a whole in percent (higher is better), e.g. how full a disk gets.
    pub(crate) fn percent(
        bench: String,
        value: f64,
        baseline: f64,
        baseline_name: impl Into<Cow<'static, str>>,
    ) -> Self {
        Result { bench, value, baseline, ratio: value / baseline, unit: "%", baseline_name: baseline_name.into() }
    }

    /// A latency result in microseconds (lower is better).
    pub(crate) fn latency(
        bench: String,
        value: f64,
        baseline: f64,
        baseline_name: impl Into<Cow<'static, str>>,
    ) -> Self {
        Result { bench, value, baseline, ratio: baseline / value, unit: "us", baseline_name: baseline_name.into() }
    }
}

/// Collects results and prints each as it comes.
#[derive(Debug)]
pub(crate) struct Reporter {
    json: bool,
    printed_header: bool,
}

impl Reporter {
    pub(crate) fn new(json: bool) -> Self {
        Reporter { json, printed_header: false }
    }

    pub(crate) fn emit(&mut self, r: Result) {
        if self.json {
            println!("{}", serde_json::to_string(&r).expect("serializable"));
            return;
        }
        if !self.printed_header {
            println!("{:<28} {:>12} {:>12} {:>7}  baseline", "bench", "value", "baseline", "ratio");
            self.printed_header = true;
        }
        println!(
            "{:<28} {:>12} {:>12} {:>6.2}x  {}",
            r.bench,
            format!("{:.1} {}", r.value, r.unit),
            format!("{:.1} {}", r.baseline, r.unit),
            r.ratio,
            r.baseline_name
        );
    }
}

/// A progress bar on stderr for one phase.
pub(crate) fn bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let style = indicatif::ProgressStyle::with_template("{prefix:>24} {bar:30} {pos}/{len} ({per_sec})")
        .expect("valid template");
    indicatif::ProgressBar::new(len).with_style(style).with_prefix(what.to_string())
}

/// `2MiB`, `256KiB` for bench names.
pub(crate) fn size_name(bytes: usize) -> String {
    kvtier_tiers::human_bytes(bytes as u64).replace(' ', "")
}

pub(crate) fn mib_per_s(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / secs
}

/// Runs `op(i)` for i in 0..count with `qd` operations in flight. Returns each result with
/// its latency in microseconds, and the seconds the whole run took.
pub(crate) async fn run_at_qd<T, F, Fut>(count: usize, qd: usize, op: F) -> (Vec<(T, u64)>, f64)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    use futures::StreamExt;
    let started = std::time::Instant::now();
    let results = futures::stream::iter(0..count)
        .map(|i| {
            let fut = op(i);
            async move {
                let t = std::time::Instant::now();
                let r = fut.await;
                (r, t.elapsed().as_micros() as u64)
            }
        })
        .buffer_unordered(qd)
        .collect()
        .await;
    (results, started.elapsed().as_secs_f64())
}

/// A node for the network benchmarks: memory tier only (no SSD, nothing persisted), blocks of
/// `size` bytes, room for `blocks` of them plus slab slack, ports chosen by the OS.
pub(crate) fn memory_node_config(dir: &std::path::Path, size: usize, blocks: usize) -> kvtier_blockmgr::Config {
    use kvtier_blockmgr::ByteSize;
    let mut config = kvtier_blockmgr::Config::default();
    config.data_dir = dir.join("node");
    config.server.listen = "127.0.0.1:0".into();
    config.server.metrics_listen = String::new();
    config.server.persist_on_shutdown = false;
    config.ssd.enabled = false;
    config.max_block_size = ByteSize(size as u64);
    let region = (size as u64).next_power_of_two().max(16 << 20);
    config.cpu.region_size = ByteSize(region);
    config.cpu.capacity = ByteSize((blocks * size) as u64 + 4 * region);
    config
}

/// A node serving S3 from `dir` (ports chosen by the OS, nothing persisted at shutdown), every
/// bucket open to the access key `key`; memory and SSD of `capacity` bytes each.
pub(crate) fn s3_node_config(dir: &std::path::Path, key: (&str, &str), capacity: u64) -> kvtier_blockmgr::Config {
    use kvtier_blockmgr::{ByteSize, config::S3Key};
    let mut config = kvtier_blockmgr::Config::default();
    config.data_dir = dir.to_path_buf();
    config.server.listen = "127.0.0.1:0".into();
    config.server.metrics_listen = String::new();
    config.server.persist_on_shutdown = false;
    config.s3.listen = "127.0.0.1:0".into();
    config.s3.keys = vec![S3Key { access_key: key.0.into(), secret_key: key.1.into(), buckets: vec!["*".into()] }];
    config.cpu.capacity = ByteSize(capacity);
    // Not the default 8 GiB preallocated.
    config.ssd.capacity = ByteSize(capacity);
    config
}
