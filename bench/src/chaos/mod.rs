//! `kvtier-bench chaos`: checkpoint files written through a cluster while faults run, then
//! checked: nothing acknowledged lost, changed or missing from Blob, and how long the
//! cluster took to settle.
//!
//! N nodes (3 in CI, 5 by default) run as separate hosts in network namespaces, members
//! through a real etcd, writing back to a real Azurite (`ckpt/*` and S3 buckets: 2 copies,
//! write-back). Three writers save files of 1 KiB to 200 MiB (log-uniform) through
//! `kvtier cp`, the Python `kvtier://` filesystem and S3 (boto3), retrying a file that
//! failed on another node as a rank would. Faults run one at a time (`kill -9` and restart,
//! SIGSTOP past the lease, a partition past the lease, Azurite stopped or frozen), each
//! once the cluster is whole again. After each round of faults the writers stop and the
//! checks run (see verify.rs), with a node's disk wiped; the round's files are then
//! deleted (so a long run's data fits its disks), and none of them may come back in a later
//! round's checks or after the last deletes: not on any node, not in Blob.
//!
//! The baseline of the write throughput is the same writers before any fault (a warm-up);
//! of the settle time, its goal (60 s).

mod cluster;
mod faults;
mod verify;
mod writers;

pub(crate) use writers::log_uniform;

use std::{collections::BTreeMap, path::Path, sync::Arc, time::Duration};

use anyhow::{Context, Result, bail};
use kvtier_blockmgr::Client;

use self::{
    cluster::Cluster,
    faults::Fault,
    verify::Findings,
    writers::{Ledger, Outcome, Plan, Written},
};
use crate::report::{Reporter, Result as Measured};

/// Settings of one `chaos` run.
#[derive(Debug, Clone)]
pub(crate) struct Args {
    pub(crate) nodes: usize,
    pub(crate) faults: u64,
    pub(crate) rounds: u64,
    pub(crate) min_size: u64,
    pub(crate) max_size: u64,
    pub(crate) ssd: u64,
    pub(crate) mib_per_s: f64,
    pub(crate) warmup: Duration,
    pub(crate) settle_goal: Duration,
    pub(crate) python: String,
    pub(crate) loopback: bool,
    /// Free disk a round needs to start (where the nodes and Azurite keep their data).
    pub(crate) min_free: u64,
}

/// How long the checks wait for the settle before they give up and report.
const SETTLE_LIMIT: Duration = Duration::from_secs(300);

pub(crate) async fn run(args: &Args, scratch: &Path, out: &mut Reporter) -> Result<()> {
    let cluster = {
        let (n, ssd, loopback, dir) = (args.nodes, args.ssd, args.loopback, scratch.to_path_buf());
        tokio::task::spawn_blocking(move || Cluster::start(n, ssd, loopback, &dir)).await??
    };
    let plan = Plan {
        min_size: args.min_size,
        max_size: args.max_size,
        mib_per_s: args.mib_per_s,
        python: args.python.clone(),
        scratch: scratch.join("files"),
    };
    eprintln!("chaos: {} nodes up; warm-up without faults for {:?}", args.nodes, args.warmup);
    let warm = phase(&cluster, &plan, 0, |_| async {
        tokio::time::sleep(args.warmup).await;
        Ok(())
    })
    .await?;
    let baseline = mib_per_s(&warm.0, warm.1);

    let mut totals = Totals::default();
    // Files deleted after their round: none may come back.
    let mut deleted: Vec<Written> = Vec::new();
    let per_round = args.faults.div_ceil(args.rounds.max(1));
    let mut fault_no = 0u64;
    for round in 0..args.rounds.max(1) {
        let faults = per_round.min(args.faults - fault_no);
        if faults == 0 {
            break;
        }
        // A round that fills the disk ends the run with no figures at all (a 1000-fault run
        // did, at fault 764: Azurite's workspace grows by gigabytes a round); stop before it.
        let free = free_disk(scratch)?;
        if free < args.min_free {
            let why = format!(
                "stopped before round {}: {} GiB of disk free, --min-free-gib {}",
                round + 1,
                free >> 30,
                args.min_free >> 30
            );
            eprintln!("chaos: {why}");
            totals.stopped = Some(why);
            break;
        }
        let first = fault_no;
        let injected = Arc::new(parking_lot::Mutex::new(BTreeMap::<Fault, u64>::new()));
        let counted = injected.clone();
        let this_round = async {
            let (written, secs) = phase(&cluster, &plan, 1_000_000 * (round + 1), move |c| async move {
                let partitions = c.hosts.separate();
                for i in first..first + faults {
                    let fault = Fault::nth(i, partitions);
                    let node = (i * 7 + i / 3) as usize % c.len();
                    let c2 = c.clone();
                    tokio::task::spawn_blocking(move || -> Result<()> {
                        c2.wait_whole(Duration::from_secs(120))?;
                        faults::inject(&c2, fault, node, Duration::from_millis(200 + (i % 5) * 300))
                    })
                    .await??;
                    *counted.lock().entry(fault).or_default() += 1;
                    eprintln!("chaos: fault {} of the run: {} of n{}", i + 1, fault.name(), node + 1);
                    tokio::time::sleep(Duration::from_millis(300 + (i % 4) * 250)).await;
                }
                Ok(())
            })
            .await?;
            fault_no += faults;
            eprintln!(
                "chaos: round {}: {} faults, {} files written; settling and checking",
                round + 1,
                faults,
                written.len()
            );
            let wipe = (round as usize) % cluster.len();
            let findings = verify::check(&cluster, &written, &deleted, wipe, SETTLE_LIMIT).await?;
            Ok::<_, anyhow::Error>((written, secs, findings))
        };
        // The disk watched through the round too: a store growing without bound (Azurite's
        // workspace grew by 31 GiB in one round's checks at e81cca5) ends the run with the
        // rounds it completed, not with a full disk and no figures.
        let (written, secs, findings) = tokio::select! {
            done = this_round => done?,
            why = disk_below(scratch, args.min_free / 2) => {
                let why = format!("stopped in round {}: {why}", round + 1);
                eprintln!("chaos: {why}");
                totals.stopped = Some(why);
                break;
            }
        };
        report_round(&cluster, round + 1, &written, &findings, &injected.lock());
        totals.add(&written, &findings, secs, &injected.lock());
        deleted.extend(delete_all(&cluster, &written).await);
    }
    let back = verify::check_deleted(&cluster, &deleted, SETTLE_LIMIT).await?;
    eprintln!("chaos: after the last deletes: {} of {} deleted files came back", back.len(), deleted.len());
    for what in back.iter().take(20) {
        eprintln!("chaos:   {what}");
    }
    totals.resurrected += back.len();

    let value = mib_per_s(&totals.written, totals.secs);
    out.emit(Measured::throughput("chaos_write_under_faults".into(), value, baseline, "the same writers, no faults"));
    let settle = totals.settle_max.unwrap_or(SETTLE_LIMIT.as_secs_f64());
    out.emit(Measured::fewer(
        "chaos_settle_max".into(),
        settle.max(0.001),
        args.settle_goal.as_secs_f64(),
        "s",
        "the goal",
    ));
    let summary = totals.summary(args);
    println!("{summary}");
    let bad = totals.lost
        + totals.corrupted
        + totals.missing
        + totals.failed_present
        + totals.unknown_corrupted
        + totals.resurrected;
    if bad > 0 || totals.settle_max.is_none() || totals.stopped.is_some() {
        bail!("chaos: {summary}");
    }
    Ok(())
}

/// Bytes free where the run keeps data: under `scratch` (the nodes) and the system temp dir
/// (Azurite).
fn free_disk(scratch: &Path) -> Result<u64> {
    Ok(free_bytes(scratch)?.min(free_bytes(&std::env::temp_dir())?))
}

/// Returns (why) once less than `floor` bytes are free ([`free_disk`], looked at every 5 s).
async fn disk_below(scratch: &Path, floor: u64) -> String {
    loop {
        match free_disk(scratch) {
            Ok(free) if free < floor => {
                return format!("{} GiB of disk free, under half of --min-free-gib", free >> 30);
            }
            Ok(_) => {}
            Err(e) => eprintln!("chaos: {e:#}"),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Bytes free to an unprivileged writer on the filesystem holding `path`.
fn free_bytes(path: &Path) -> Result<u64> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statvfs the call fills.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("statvfs {}", path.display()));
    }
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// Runs the writers while `during` runs; the files written and how long it took.
async fn phase<F, Fut>(cluster: &Arc<Cluster>, plan: &Plan, first_seed: u64, during: F) -> Result<(Vec<Written>, f64)>
where
    F: FnOnce(Arc<Cluster>) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let ledger = Ledger::new(first_seed);
    let writers = tokio::spawn(writers::run(cluster.clone(), plan.clone(), ledger.clone()));
    let started = std::time::Instant::now();
    let result = during(cluster.clone()).await;
    ledger.stop.store(true, std::sync::atomic::Ordering::Release);
    writers.await??;
    result?;
    let written = std::mem::take(&mut *ledger.written.lock());
    Ok((written, started.elapsed().as_secs_f64()))
}

fn mib_per_s(written: &[Written], secs: f64) -> f64 {
    let bytes: u64 = written.iter().filter(|w| w.outcome == Outcome::Acked).map(|w| w.size).sum();
    (bytes as f64 / (1 << 20) as f64 / secs.max(1e-9)).max(1e-6)
}

/// Deletes a round's files (bounded disk for long runs, and deletes to check: none may come
/// back), each retried a few times; the files deleted.
async fn delete_all(cluster: &Cluster, written: &[Written]) -> Vec<Written> {
    let addr = cluster.nodes.lock()[0].grpc.clone();
    let Ok(client) = Client::connect(&addr).await else { return Vec::new() };
    let mut deleted = Vec::new();
    for w in written {
        let (ns, path) = w.door.object(&w.name);
        for attempt in 0..5 {
            match client.delete_object(ns, &path).await {
                Ok(_) => {
                    deleted.push(w.clone());
                    break;
                }
                Err(e) if attempt == 4 => eprintln!("chaos: deleting {} failed: {e}", w.name),
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
    deleted
}

fn report_round(cluster: &Cluster, round: u64, written: &[Written], f: &Findings, faults: &BTreeMap<Fault, u64>) {
    let count = |o: Outcome| written.iter().filter(|w| w.outcome == o).count();
    eprintln!(
        "chaos: round {round}: faults {:?}; files acked {}, failed {}, unknown {} ({} landed, {} absent); \
         settle {}; lost {}, corrupted {}, missing from Blob {}, failed but present {}, deleted but back {}",
        faults.iter().map(|(k, v)| format!("{}: {v}", k.name())).collect::<Vec<_>>(),
        count(Outcome::Acked),
        count(Outcome::Failed),
        count(Outcome::Unknown),
        f.unknown_landed,
        f.unknown_absent,
        f.settle_s.map_or("not within the limit".to_string(), |s| format!("{s:.1}s")),
        f.lost.len(),
        f.corrupted.len(),
        f.missing_in_blob.len(),
        f.failed_but_present.len(),
        f.resurrected.len(),
    );
    let said = f.lost.iter().chain(&f.corrupted).chain(&f.missing_in_blob).chain(&f.failed_but_present);
    for what in said.chain(&f.resurrected).take(20) {
        eprintln!("chaos:   {what}");
    }
    for door in writers::Door::all() {
        let tries: Vec<Outcome> = written.iter().filter(|w| w.door == door).flat_map(|w| w.attempts.clone()).collect();
        let n = |o: Outcome| tries.iter().filter(|a| **a == o).count();
        eprintln!(
            "chaos:   {door:?}: attempts acked {}, failed {}, unknown {}",
            n(Outcome::Acked),
            n(Outcome::Failed),
            n(Outcome::Unknown)
        );
        let said = written.iter().filter(|w| w.door == door && !w.last_error.is_empty());
        for w in said.take(3) {
            eprintln!("chaos:     {}: {}", w.name, w.last_error.chars().take(300).collect::<String>());
        }
    }
    if f.settle_s.is_none() {
        eprintln!("chaos:   {} bytes still unflushed across the nodes", f.unflushed_bytes);
        for i in 0..cluster.len() {
            let m = cluster.metrics(i).unwrap_or_default();
            let said: Vec<&str> = m
                .lines()
                .filter(|l| {
                    [
                        "kvtier_unflushed",
                        "kvtier_namespace_unflushed",
                        "kvtier_export",
                        "kvtier_object_export_failures",
                        "kvtier_flush_queue",
                        "kvtier_cluster_members",
                    ]
                    .iter()
                    .any(|p| l.starts_with(p))
                })
                .collect();
            eprintln!("chaos:   n{}: {}", i + 1, said.join("; "));
        }
    }
    let troubled = f.settle_s.is_none()
        || !(f.lost.is_empty() && f.corrupted.is_empty() && f.missing_in_blob.is_empty() && f.resurrected.is_empty());
    if troubled {
        for i in 0..cluster.len() {
            eprintln!("chaos: --- n{} warned lately:\n{}", i + 1, cluster.log_tail(i, 30));
        }
    }
}

/// The whole run's counts.
#[derive(Debug, Default)]
struct Totals {
    written: Vec<Written>,
    secs: f64,
    faults: BTreeMap<Fault, u64>,
    attempts: [usize; 3],
    lost: usize,
    corrupted: usize,
    missing: usize,
    failed_present: usize,
    unknown_landed: usize,
    unknown_absent: usize,
    unknown_corrupted: usize,
    resurrected: usize,
    settle_max: Option<f64>,
    rounds: u64,
    /// Why the run ended before its last round (too little disk left).
    stopped: Option<String>,
}

impl Totals {
    fn add(&mut self, written: &[Written], f: &Findings, secs: f64, faults: &BTreeMap<Fault, u64>) {
        for w in written {
            for a in &w.attempts {
                self.attempts[*a as usize] += 1;
            }
        }
        self.written.extend(written.iter().cloned());
        self.secs += secs;
        for (k, v) in faults {
            *self.faults.entry(*k).or_default() += v;
        }
        self.lost += f.lost.len();
        self.corrupted += f.corrupted.len();
        self.missing += f.missing_in_blob.len();
        self.failed_present += f.failed_but_present.len();
        self.unknown_landed += f.unknown_landed;
        self.unknown_absent += f.unknown_absent;
        self.unknown_corrupted += f.unknown_corrupted.len();
        self.resurrected += f.resurrected.len();
        self.settle_max = match (self.rounds, self.settle_max, f.settle_s) {
            (0, _, s) => s,
            (_, Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
        self.rounds += 1;
    }

    /// One JSON object: what a run's figures are.
    fn summary(&self, args: &Args) -> serde_json::Value {
        let count = |o: Outcome| self.written.iter().filter(|w| w.outcome == o).count();
        let bytes: u64 = self.written.iter().filter(|w| w.outcome == Outcome::Acked).map(|w| w.size).sum();
        serde_json::json!({
            "bench": "chaos",
            "nodes": args.nodes,
            "rounds": self.rounds,
            "faults": self.faults.values().sum::<u64>(),
            "faults_by_kind": self.faults.iter().map(|(k, v)| (k.name(), *v)).collect::<BTreeMap<_, _>>(),
            "files_acknowledged": count(Outcome::Acked),
            "files_failed": count(Outcome::Failed),
            "files_unknown": count(Outcome::Unknown),
            "unknown_landed": self.unknown_landed,
            "unknown_absent": self.unknown_absent,
            "attempts_acknowledged": self.attempts[Outcome::Acked as usize],
            "attempts_failed": self.attempts[Outcome::Failed as usize],
            "attempts_unknown": self.attempts[Outcome::Unknown as usize],
            "bytes_acknowledged": bytes,
            "files_lost": self.lost,
            "files_corrupted": self.corrupted,
            "files_missing_from_blob": self.missing,
            "failed_but_present": self.failed_present,
            "files_deleted_but_back": self.resurrected,
            "unknown_corrupted": self.unknown_corrupted,
            "settle_max_s": self.settle_max,
            "settle_goal_s": args.settle_goal.as_secs_f64(),
            "stopped": self.stopped,
        })
    }
}
