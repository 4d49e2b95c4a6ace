//! The writers: checkpoint files of mixed sizes saved through three doors, as users would,
//! while faults run. `kvtier cp` (a process per attempt), the Python `kvtier://` filesystem
//! and S3 (boto3), both through `bench/python/chaos_writer.py`. Every attempt's outcome is
//! recorded: acknowledged, failed (definitely not written) or unknown (may have landed). A
//! file is tried again, on another node, until acknowledged or out of attempts, with the
//! same bytes each time (a retry of an unknown outcome is safe).

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::cluster::{Cluster, S3_KEY};

/// Attempts per file before it is given up.
const ATTEMPTS: u32 = 6;
/// An attempt that takes longer is abandoned (its outcome unknown).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(120);

/// The way in a lane writes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Door {
    Cp,
    Fsspec,
    S3,
}

impl Door {
    pub(super) fn all() -> [Door; 3] {
        [Door::Cp, Door::Fsspec, Door::S3]
    }

    /// The namespace its files land in, and the path of file `name` there.
    pub(super) fn object(self, name: &str) -> (&'static str, String) {
        match self {
            Door::Cp => ("ckpt/cp", name.to_string()),
            Door::Fsspec => ("ckpt/py", name.to_string()),
            // Bucket `chaos` is namespace `s3/chaos`; key K is object `o/K`.
            Door::S3 => ("s3/chaos", format!("o/{name}")),
        }
    }
}

/// What became of one attempt, or of a file after all of its attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Acked,
    Failed,
    Unknown,
}

/// One file written, and what became of it.
#[derive(Debug, Clone)]
pub(super) struct Written {
    pub(super) door: Door,
    pub(super) name: String,
    pub(super) seed: u64,
    pub(super) size: u64,
    pub(super) outcome: Outcome,
    pub(super) attempts: Vec<Outcome>,
    /// What the last attempt that was not acknowledged said.
    pub(super) last_error: String,
}

/// Deterministic bytes of file `seed`: xorshift64* words.
pub(super) fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// How the lanes run.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    pub(super) min_size: u64,
    pub(super) max_size: u64,
    /// Most MiB/s one lane writes (it sleeps between files to stay under).
    pub(super) mib_per_s: f64,
    pub(super) python: String,
    pub(super) scratch: PathBuf,
}

/// The lanes' shared state: what was written, and when to stop.
pub(super) struct Ledger {
    pub(super) written: Mutex<Vec<Written>>,
    pub(super) stop: AtomicBool,
    next: AtomicU64,
}

impl Ledger {
    pub(super) fn new(first_seed: u64) -> Arc<Ledger> {
        Arc::new(Ledger {
            written: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            next: AtomicU64::new(first_seed),
        })
    }
}

/// Runs one lane per door until `ledger.stop`; returns when all have finished their file.
pub(super) async fn run(cluster: Arc<Cluster>, plan: Plan, ledger: Arc<Ledger>) -> Result<()> {
    let lanes = Door::all().map(|door| {
        let (cluster, plan, ledger) = (cluster.clone(), plan.clone(), ledger.clone());
        tokio::spawn(async move { lane(door, &cluster, &plan, &ledger).await })
    });
    for lane in lanes {
        lane.await.context("a writer lane panicked")??;
    }
    Ok(())
}

async fn lane(door: Door, cluster: &Cluster, plan: &Plan, ledger: &Ledger) -> Result<()> {
    let dir = plan.scratch.join(format!("{door:?}"));
    std::fs::create_dir_all(&dir)?;
    let mut python = match door {
        Door::Cp => None,
        _ => Some(PythonWriter::start(&plan.python).await?),
    };
    while !ledger.stop.load(Ordering::Acquire) {
        let seed = ledger.next.fetch_add(1, Ordering::AcqRel);
        let size = log_uniform(seed, plan.min_size, plan.max_size);
        let name = format!("f{seed:07}-{size}");
        let file = dir.join(&name);
        std::fs::File::create(&file)?.write_all(&content(seed, size as usize))?;
        let started = Instant::now();
        let mut attempts = Vec::new();
        let mut last_error = String::new();
        for attempt in 0..ATTEMPTS {
            let Some((grpc, s3)) = cluster.pick_up(seed.wrapping_add(attempt as u64)) else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let (ns, path) = door.object(&name);
            let (outcome, error) = match &mut python {
                None => cp(&file, &grpc, ns, &path).await,
                Some(py) => {
                    let address = if door == Door::S3 { s3 } else { grpc };
                    py.write(seed, door, &address, ns, &path, &file).await
                }
            };
            attempts.push(outcome);
            if outcome != Outcome::Acked {
                last_error = error;
            }
            if outcome == Outcome::Acked {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300 << attempt.min(4))).await;
        }
        let outcome = if attempts.contains(&Outcome::Acked) {
            Outcome::Acked
        } else if attempts.contains(&Outcome::Unknown) {
            Outcome::Unknown
        } else {
            Outcome::Failed
        };
        ledger.written.lock().push(Written { door, name, seed, size, outcome, attempts, last_error });
        let _ = std::fs::remove_file(&file);
        // Stay under the lane's rate: the run's data must fit its disks.
        let least = Duration::from_secs_f64(size as f64 / (1 << 20) as f64 / plan.mib_per_s);
        if let Some(rest) = least.checked_sub(started.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
    Ok(())
}

/// A size between `min` and `max`, log-uniform (as many 1-10 KiB files as 10-100 MiB ones).
pub(crate) fn log_uniform(seed: u64, min: u64, max: u64) -> u64 {
    let unit =
        (content(seed ^ 0x5EED, 8).iter().fold(0u64, |a, b| a << 8 | *b as u64) >> 11) as f64 / (1u64 << 53) as f64;
    ((min as f64).ln() + unit * ((max as f64).ln() - (min as f64).ln())).exp() as u64
}

/// One `kvtier cp --retries 0`: exit 0 acknowledged, 3 unknown, anything else failed; and
/// what it said.
async fn cp(file: &Path, server: &str, ns: &str, path: &str) -> (Outcome, String) {
    let url = format!("kvtier://{}/{path}", ns.replace('/', "%2F"));
    let bin = match super::cluster::kvtier_bin() {
        Ok(bin) => bin,
        Err(e) => return (Outcome::Failed, e.to_string()),
    };
    let child = tokio::process::Command::new(bin)
        .args(["cp", "--server", server, "--durability", "write-back", "--retries", "0"])
        .arg(file)
        .arg(&url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(child) => child,
        Err(e) => return (Outcome::Failed, e.to_string()),
    };
    match tokio::time::timeout(ATTEMPT_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(out)) => {
            let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
            let outcome = match out.status.code() {
                Some(0) => Outcome::Acked,
                Some(3) => Outcome::Unknown,
                _ => Outcome::Failed,
            };
            (outcome, said)
        }
        // Abandoned mid-way (the node hung): it may have landed.
        _ => (Outcome::Unknown, format!("no answer within {ATTEMPT_TIMEOUT:?}")),
    }
}

/// A `chaos_writer.py` process taking one job at a time.
struct PythonWriter {
    python: String,
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl PythonWriter {
    async fn start(python: &str) -> Result<PythonWriter> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/chaos_writer.py");
        let mut child = tokio::process::Command::new(python)
            .arg(script)
            .args([S3_KEY.0, S3_KEY.1])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {python} {script}"))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
        Ok(PythonWriter { python: python.to_string(), child, stdin, stdout })
    }

    async fn write(
        &mut self,
        id: u64,
        door: Door,
        address: &str,
        ns: &str,
        path: &str,
        file: &Path,
    ) -> (Outcome, String) {
        let job = serde_json::json!({
            "id": id,
            "via": if door == Door::S3 { "s3" } else { "fsspec" },
            "address": address,
            "namespace": ns,
            "bucket": ns.trim_start_matches("s3/"),
            "path": path.trim_start_matches("o/"),
            "file": file,
        });
        let answer = tokio::time::timeout(ATTEMPT_TIMEOUT, async {
            self.stdin.write_all(format!("{job}\n").as_bytes()).await.ok()?;
            self.stdin.flush().await.ok()?;
            self.stdout.next_line().await.ok()?
        })
        .await;
        match answer.ok().flatten().and_then(|line| serde_json::from_str::<serde_json::Value>(&line).ok()) {
            Some(v) => {
                let outcome = match v["outcome"].as_str() {
                    Some("acked") => Outcome::Acked,
                    Some("failed") => Outcome::Failed,
                    _ => Outcome::Unknown,
                };
                (outcome, v["error"].as_str().unwrap_or_default().to_string())
            }
            None => {
                // Hung or died: a new writer for the next job; this one's outcome is unknown.
                let _ = self.child.start_kill();
                if let Ok(fresh) = PythonWriter::start(&self.python).await {
                    *self = fresh;
                }
                (Outcome::Unknown, format!("the Python writer gave no answer within {ATTEMPT_TIMEOUT:?}"))
            }
        }
    }
}
