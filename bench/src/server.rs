//! `kvtier-bench server`: gRPC put/get through a real kvtier node on loopback against raw
//! TCP moving the same bytes, at the same concurrency, in one run.
//!
//! The node runs in this process with a memory tier large enough for the working set (the
//! bench measures the network path, not the SSD). Each operation is one block: one put
//! stream or one get stream. The baseline is a minimal TCP protocol: the client writes an
//! 8-byte header and the block and waits for a 1-byte ack (put), or writes a 1-byte request
//! and reads the block back (get); `qd` connections work at once.

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use hdrhistogram::Histogram;
use kvtier_blockmgr::{ByteSize, Client, Durability, GetItem, PutItem};
use kvtier_server::RunningServer;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::report::{Reporter, Result as Measured, bar, memory_node_config, mib_per_s, run_at_qd, size_name};

/// Settings of one `server` run.
#[derive(Debug, Clone)]
pub(crate) struct Args {
    pub(crate) size: usize,
    pub(crate) count: usize,
    pub(crate) concurrency: Vec<usize>,
}

const NS: &str = "bench/server";

/// What one phase measured.
struct Phase {
    mib_s: f64,
    latency: Histogram<u64>,
}

impl Phase {
    fn p(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64
    }

    /// The median round's throughput with every round's latencies.
    fn merge(mut rounds: Vec<Phase>) -> Phase {
        rounds.sort_by(|a, b| a.mib_s.total_cmp(&b.mib_s));
        let mib_s = rounds[rounds.len() / 2].mib_s;
        let mut latency = Histogram::<u64>::new(3).expect("valid histogram");
        for r in &rounds {
            latency.add(&r.latency).expect("same histogram bounds");
        }
        Phase { mib_s, latency }
    }
}

pub(crate) async fn run(args: &Args, dir: &std::path::Path, out: &mut Reporter) -> Result<()> {
    let mut config = memory_node_config(dir, args.size, args.count * 2);
    config.server.transfer_budget = ByteSize(config.cpu.capacity.0.max(256 << 20));
    let node = RunningServer::start(config).await.context("starting the node")?;
    let client = Client::connect(&node.grpc_addr.to_string()).await?;
    let raw = raw_server(args.size).await?;
    let block = Bytes::from((0..args.size).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>());
    let name = size_name(args.size);

    for &qd in &args.concurrency {
        // Rounds alternate gRPC and raw TCP so that drift on a shared machine hits both;
        // each reports its median round (throughput) and pooled latency percentiles.
        let rounds = 4;
        let per_round = (args.count / rounds).max(qd);
        let progress = bar((rounds * per_round * 4) as u64, &format!("server {name} qd{qd}"));
        let mut phases: [Vec<Phase>; 4] = Default::default();
        for round in 0..rounds {
            let keys: Vec<Vec<u8>> = (0..per_round).map(|i| format!("qd{qd}-r{round}-{i}").into_bytes()).collect();
            let keys = &keys;
            phases[0].push(
                measure(per_round, qd, args.size, |i| {
                    let (client, key, block, progress) =
                        (client.clone(), keys[i].clone(), block.clone(), progress.clone());
                    async move {
                        let r = client.put(NS, &[PutItem::new(key, block)], Durability::Cache).await?;
                        ensure!(r[0].result.is_ok() && !r[0].existed, "put failed: {:?}", r[0]);
                        progress.inc(1);
                        Ok(())
                    }
                })
                .await?,
            );
            phases[1].push(raw_phase(raw, args.size, per_round, qd, b'P', &block, &progress).await?);
            phases[2].push(
                measure(per_round, qd, args.size, |i| {
                    let (client, key, progress, len) = (client.clone(), keys[i].clone(), progress.clone(), args.size);
                    async move {
                        let got = client.get(NS, &[key]).await?;
                        ensure!(
                            matches!(&got[0], GetItem::Hit { data, .. } if data.len() == len),
                            "get failed: {:?}",
                            got[0]
                        );
                        progress.inc(1);
                        Ok(())
                    }
                })
                .await?,
            );
            phases[3].push(raw_phase(raw, args.size, per_round, qd, b'G', &block, &progress).await?);
            client.delete(NS, keys).await?;
        }
        progress.finish_and_clear();
        let [grpc_put, raw_put, grpc_get, raw_get] = phases.map(Phase::merge);
        out.emit(Measured::throughput(format!("grpc_put_{name}_qd{qd}"), grpc_put.mib_s, raw_put.mib_s, "raw TCP"));
        out.emit(Measured::throughput(format!("grpc_get_{name}_qd{qd}"), grpc_get.mib_s, raw_get.mib_s, "raw TCP"));
        for (op, ours, base) in [("put", &grpc_put, &raw_put), ("get", &grpc_get, &raw_get)] {
            out.emit(Measured::latency(
                format!("grpc_{op}_{name}_qd{qd}_p50"),
                ours.p(0.5),
                base.p(0.5),
                "raw TCP p50",
            ));
            out.emit(Measured::latency(
                format!("grpc_{op}_{name}_qd{qd}_p99"),
                ours.p(0.99),
                base.p(0.99),
                "raw TCP p99",
            ));
        }
    }
    node.shutdown().await?;
    Ok(())
}

/// Runs `op(i)` for i in 0..count with `qd` in flight, each moving `bytes` bytes;
/// throughput and per-op latency.
async fn measure<F, Fut>(count: usize, qd: usize, bytes: usize, op: F) -> Result<Phase>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let (results, secs) = run_at_qd(count, qd, op).await;
    let mut latency = Histogram::<u64>::new(3)?;
    for (r, micros) in results {
        r?;
        latency.record(micros.max(1))?;
    }
    Ok(Phase { mib_s: mib_per_s(count * bytes, secs), latency })
}

/// A minimal block server on loopback: `P` + u64 length + bytes -> 1-byte ack; `G` -> the
/// block. Returns its address.
async fn raw_server(size: usize) -> Result<std::net::SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stored = Bytes::from(vec![7u8; size]);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let stored = stored.clone();
            s.set_nodelay(true).ok();
            tokio::spawn(async move {
                let mut buf = vec![0u8; size];
                let mut op = [0u8; 1];
                while s.read_exact(&mut op).await.is_ok() {
                    let ok = match op[0] {
                        b'P' => {
                            let mut len = [0u8; 8];
                            s.read_exact(&mut len).await.is_ok()
                                && s.read_exact(&mut buf[..u64::from_le_bytes(len) as usize]).await.is_ok()
                                && s.write_all(&[1]).await.is_ok()
                        }
                        _ => s.write_all(&stored).await.is_ok(),
                    };
                    if !ok {
                        break;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// `count` raw puts or gets over `qd` connections.
async fn raw_phase(
    addr: std::net::SocketAddr,
    size: usize,
    count: usize,
    qd: usize,
    op: u8,
    block: &Bytes,
    progress: &indicatif::ProgressBar,
) -> Result<Phase> {
    let mut conns = Vec::with_capacity(qd);
    for _ in 0..qd {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        conns.push(tokio::sync::Mutex::new((s, vec![0u8; size])));
    }
    let conns = &conns;
    measure(count, qd, size, |i| {
        let (block, progress) = (block.clone(), progress.clone());
        async move {
            let mut guard = conns[i % qd].lock().await;
            let (s, buf) = &mut *guard;
            if op == b'P' {
                s.write_all(b"P").await?;
                s.write_all(&(size as u64).to_le_bytes()).await?;
                s.write_all(&block).await?;
                s.read_exact(&mut buf[..1]).await?;
            } else {
                s.write_all(b"G").await?;
                s.read_exact(buf).await?;
            }
            progress.inc(1);
            Ok(())
        }
    })
    .await
}
