//! `kvtier-bench checkpoint`: a replicated checkpoint through a three-node kvtier cluster on
//! loopback, against a real Azurite started for the run, each number next to its baseline
//! from the same run.
//!
//! N writers (one client each, spread over the nodes) save one shard each with write-back
//! durability at R = 2. The baseline: the same N writers putting the same shards straight
//! to Azurite as multipart uploads. Reported: throughput until acknowledged (two copies on
//! two nodes' SSDs) and until durable (every file committed in Blob), bytes sent to Blob
//! per byte written (goal 1.0: each byte once, not R times), Blob PUTs per GiB. Then every
//! node's disk is wiped and N readers (one per node, round robin) each restore the whole
//! checkpoint at once: Blob bytes read per checkpoint byte (goal ~1, where N readers
//! reading Blob straight read N) and the restore throughput against the same N readers
//! reading Azurite straight.
//!
//! The nodes are `RunningServer`s in this process (three members, static membership) and
//! the writers are tasks, not processes: loopback has no NIC limit, so the throughput
//! ratios say what kvtier's own work costs, not what a network would.

use std::{sync::Arc, time::Instant};

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use futures::StreamExt;
use kvtier_blockmgr::{ByteSize, Client, Config, Durability, ObjectRange};
use kvtier_server::RunningServer;
use kvtier_testkit::{Azurite, pattern};
use object_store::{ObjectStore, WriteMultipart, path::Path};

use crate::report::{Reporter, Result as Measured, bar, mib_per_s, size_name};

/// Settings of one `checkpoint` run.
#[derive(Debug, Clone)]
pub(crate) struct Args {
    pub(crate) writers: usize,
    pub(crate) shard: usize,
}

const NS: &str = "ckpt/bench";
const IDS: [&str; 3] = ["n1", "n2", "n3"];
/// Chunk of a named object (the node's largest block) and part of the baseline's uploads.
const CHUNK: u64 = 8 << 20;

pub(crate) async fn run(args: &Args, scratch: &std::path::Path, out: &mut Reporter) -> Result<()> {
    let azurite = Azurite::start();
    let shards: Vec<Bytes> = (0..args.writers).map(|i| pattern(i as u64, args.shard)).collect();
    let total = args.writers * args.shard;
    let name = format!("{}x{}", args.writers, size_name(args.shard));

    let plain = plain_store(&azurite)?;
    let (plain_write_s, plain_puts) = plain_writes(&plain, &shards).await?;

    let configs = configs(args, &azurite, scratch)?;
    let nodes = start(&configs).await?;
    let clients = connect(&nodes, args.writers).await?;
    let progress = bar(args.writers as u64, "checkpoint: kvtier writers");
    let started = Instant::now();
    let writes = futures::future::join_all(clients.iter().zip(&shards).enumerate().map(|(i, (c, shard))| {
        let progress = progress.clone();
        async move {
            let (len, whole) = (shard.len(), shard.clone());
            let pieces = futures::stream::iter(
                (0..len).step_by(4 << 20).map(move |at| whole.slice(at..(at + (4 << 20)).min(len))),
            );
            let r = c.put_object(NS, &shard_path(i), pieces, Durability::WriteBack, Some(len as u64), None).await;
            progress.inc(1);
            r
        }
    }))
    .await;
    let ack_s = started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    for w in writes {
        w.context("a checkpoint shard write")?;
    }
    loop {
        let mut unflushed = 0;
        for n in &nodes {
            unflushed += n.manager().stats().await.unflushed_bytes;
        }
        if unflushed == 0 && sum(&nodes, |m| m.objects_exported.get()) >= args.writers as u64 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let durable_s = started.elapsed().as_secs_f64();
    let sent = sum(&nodes, |m| m.object_export_bytes.get() + m.blob_bytes.with_label_values(&["put"]).get());
    let puts = sum(&nodes, |m| {
        m.object_parts_staged.get() + m.objects_exported.get() + m.blob_requests.with_label_values(&["put"]).get()
    });
    drop(clients);
    for node in nodes {
        node.shutdown().await?;
    }

    // Every disk wiped; N readers restore the whole checkpoint at once.
    for c in &configs {
        std::fs::remove_dir_all(&c.data_dir)?;
    }
    let nodes = start(&configs).await?;
    wait_for_peers(&nodes, args.writers).await?;
    let readers = connect(&nodes, args.writers).await?;
    let before = sum(&nodes, |m| m.object_blob_read_bytes.get() + m.blob_bytes.with_label_values(&["get"]).get());
    let started = Instant::now();
    let shards = &shards;
    let restores = futures::future::join_all(readers.iter().map(|c| async move {
        let mut read = 0;
        for (i, shard) in shards.iter().enumerate() {
            let got = c.read_object(NS, &shard_path(i), ObjectRange::all()).await?;
            ensure!(got == *shard, "shard {i} came back different");
            read += got.len();
        }
        Ok::<_, anyhow::Error>(read)
    }))
    .await;
    let restore_s = started.elapsed().as_secs_f64();
    let restored: usize = restores.into_iter().sum::<Result<usize>>()?;
    let read_from_blob =
        sum(&nodes, |m| m.object_blob_read_bytes.get() + m.blob_bytes.with_label_values(&["get"]).get()) - before;
    for node in nodes {
        node.shutdown().await?;
    }
    let plain_restore_s = plain_reads(&plain, shards, args.writers).await?;

    let gib = total as f64 / (1u64 << 30) as f64;
    out.emit(Measured::throughput(
        format!("checkpoint_write_acked_{name}"),
        mib_per_s(total, ack_s),
        mib_per_s(total, plain_write_s),
        "multipart to Blob",
    ));
    out.emit(Measured::throughput(
        format!("checkpoint_write_in_blob_{name}"),
        mib_per_s(total, durable_s),
        mib_per_s(total, plain_write_s),
        "multipart to Blob",
    ));
    out.emit(Measured::fewer(
        format!("checkpoint_blob_bytes_per_byte_{name}"),
        sent as f64 / total as f64,
        1.0,
        "B/B",
        "the bytes themselves",
    ));
    out.emit(Measured::fewer(
        format!("checkpoint_blob_puts_per_gib_{name}"),
        puts as f64 / gib,
        plain_puts as f64 / gib,
        "PUTs/GiB",
        "multipart to Blob",
    ));
    out.emit(Measured::fewer(
        format!("checkpoint_restore_blob_reads_{name}"),
        read_from_blob as f64 / total as f64,
        args.writers as f64,
        "B/B",
        "N readers from Blob",
    ));
    out.emit(Measured::throughput(
        format!("checkpoint_restore_{name}"),
        mib_per_s(restored, restore_s),
        mib_per_s(restored, plain_restore_s),
        "N readers from Blob",
    ));
    Ok(())
}

/// Waits until every node finds every shard (its owners reachable from it), at most 30 s.
async fn wait_for_peers(nodes: &[RunningServer], shards: usize) -> Result<()> {
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    for node in nodes {
        for i in 0..shards {
            while !matches!(node.objects().stat_object(NS, &shard_path(i)).await, Ok(Some(_))) {
                ensure!(Instant::now() < deadline, "{}: shard {i} not found after a restart", node.grpc_addr);
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    Ok(())
}

fn shard_path(i: usize) -> String {
    format!("step-100/rank-{i}.distcp")
}

fn sum(nodes: &[RunningServer], f: impl Fn(&kvtier_blockmgr::Metrics) -> u64) -> u64 {
    nodes.iter().map(|n| f(n.manager().metrics())).sum()
}

/// Three members on free loopback ports, each its own segments prefix, one objects prefix.
fn configs(args: &Args, azurite: &Azurite, scratch: &std::path::Path) -> Result<Vec<Config>> {
    let ports: Vec<u16> = IDS
        .iter()
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()))
        .collect::<std::io::Result<_>>()?;
    let members: Vec<String> = IDS.iter().zip(&ports).map(|(id, p)| format!("{id}=127.0.0.1:{p}")).collect();
    // Each node holds about 2/3 of the checkpoint (R = 2 of 3) until it is in Blob.
    let ssd = ((args.writers * args.shard) as u64 * 2).max(512 << 20);
    Ok(IDS
        .iter()
        .zip(&ports)
        .map(|(id, port)| {
            let mut c = Config::default();
            c.data_dir = scratch.join(id);
            c.max_block_size = ByteSize(CHUNK);
            c.cpu.capacity = ByteSize(256 << 20);
            c.cpu.region_size = ByteSize(16 << 20);
            c.ssd.capacity = ByteSize(ssd);
            c.ssd.region_size = ByteSize(CHUNK + (64 << 10));
            c.server.listen = format!("127.0.0.1:{port}");
            c.server.metrics_listen = String::new();
            c.server.unix_socket = std::path::PathBuf::new();
            c.blob.url = format!("az://kvtier/bench-ckpt/nodes/{id}");
            c.blob.objects_url = "az://kvtier/bench-ckpt/objects".into();
            c.blob.options = azurite.options().into_iter().collect();
            c.blob.flush_linger = std::time::Duration::from_millis(10);
            c.cluster.node_id = (*id).into();
            c.cluster.members = members.clone();
            c
        })
        .collect())
}

/// Starts the members, one after the other, and waits until they reach each other: a
/// member that could not be reached (here, one not started yet when another's start-up
/// resync asked it) is skipped for 2 s, and a write-back put meanwhile misses its quorum.
async fn start(configs: &[Config]) -> Result<Vec<RunningServer>> {
    let mut nodes = Vec::new();
    for c in configs {
        nodes.push(RunningServer::start(c.clone()).await.with_context(|| format!("starting {}", c.cluster.node_id))?);
    }
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    Ok(nodes)
}

/// `n` clients, spread over the nodes.
async fn connect(nodes: &[RunningServer], n: usize) -> Result<Vec<Client>> {
    let mut clients = Vec::new();
    for i in 0..n {
        clients.push(Client::connect(&nodes[i % nodes.len()].grpc_addr.to_string()).await?);
    }
    Ok(clients)
}

fn plain_store(azurite: &Azurite) -> Result<Arc<dyn ObjectStore>> {
    let url = url::Url::parse("azure://kvtier/bench-ckpt-plain")?;
    let (store, _) = object_store::parse_url_opts(&url, azurite.options())?;
    Ok(Arc::from(store))
}

/// The baseline writers: each shard a multipart upload of CHUNK parts, all at once. The
/// seconds it took, and the PUTs it cost (a part each, plus the commit).
async fn plain_writes(store: &Arc<dyn ObjectStore>, shards: &[Bytes]) -> Result<(f64, u64)> {
    let progress = bar(shards.len() as u64, "checkpoint: plain writers");
    let started = Instant::now();
    let writes = futures::future::join_all(shards.iter().enumerate().map(|(i, shard)| {
        let (store, progress) = (store.clone(), progress.clone());
        async move {
            let upload = store.put_multipart(&Path::from(format!("bench-ckpt-plain/{}", shard_path(i)))).await?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, CHUNK as usize);
            w.put(shard.clone());
            w.finish().await?;
            progress.inc(1);
            Ok::<_, object_store::Error>(())
        }
    }))
    .await;
    let secs = started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    writes.into_iter().collect::<Result<Vec<()>, _>>()?;
    let puts = shards.iter().map(|s| (s.len() as u64).div_ceil(CHUNK) + 1).sum();
    Ok((secs, puts))
}

/// The baseline restore: `readers` readers each GET every shard straight from Azurite.
async fn plain_reads(store: &Arc<dyn ObjectStore>, shards: &[Bytes], readers: usize) -> Result<f64> {
    let started = Instant::now();
    let reads = futures::stream::iter(0..readers)
        .map(|_| async {
            for (i, shard) in shards.iter().enumerate() {
                let got = store.get(&Path::from(format!("bench-ckpt-plain/{}", shard_path(i)))).await?.bytes().await?;
                ensure!(got.len() == shard.len(), "a plain read came back short");
            }
            Ok::<_, anyhow::Error>(())
        })
        .buffer_unordered(readers)
        .collect::<Vec<_>>()
        .await;
    let secs = started.elapsed().as_secs_f64();
    reads.into_iter().collect::<Result<Vec<()>>>()?;
    Ok(secs)
}
