//! `kvtier-bench sim`: a cluster of hundreds to thousands of nodes in one process, to see
//! what the replicated core does at a scale one machine cannot run as processes.
//!
//! Each node is a real `Manager` (CPU tier, an in-memory tier standing in for its SSD, its
//! Blob segments in a local directory, one shared directory for objects' files) with the
//! real placement, replication, flush, resync, read replicas and cache-on-read; only the
//! network is simulated ([`net`]: requests handed straight to the target's gRPC services,
//! every one counted). For each cluster size (a tenth of `--nodes`, then `--nodes`):
//!
//! 1. **placement**: 100,000 keys with two copies over the members: the busiest node's
//!    share against the mean (the ideal);
//! 2. **writes**: every node writes write-back blocks with two copies; bytes sent between
//!    nodes per byte written (baseline: one copy sent per block) and bytes to Blob per byte
//!    written once all is flushed (baseline: every copy flushed, R = 2);
//! 3. **loss**: one node dies for good; the handoff restores two copies of its blocks:
//!    bytes moved per byte lost (ideal 1.0) and the requests it took, against one per
//!    surviving member (what a pull by every member would cost at the least);
//! 4. **restore**: a checkpoint file written back to Blob, every node wiped, then every node
//!    reads it, in waves: bytes read from Blob per checkpoint byte (baseline: each node
//!    reading it from Blob itself, N) and the most any one node served (read replicas
//!    spread it), against every reader being served by the owners.

mod net;

use std::{
    collections::HashMap,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use kvtier_blockmgr::{
    ByteSize, Config, Durability, Metrics, Objects,
    cluster::{Placement, placement_key},
    config::NamespaceConfig,
};
use kvtier_server::routes;
use kvtier_testkit::pattern;
use kvtier_tiers::{Block, BlockKey, CpuTierBuilder, MemoryTier};

use self::net::SimNet;
use crate::report::{Reporter, Result as Measured, bar};

/// Settings of one `sim` run.
#[derive(Debug, Clone)]
pub(crate) struct Args {
    /// The largest cluster; a tenth of it runs first.
    pub(crate) nodes: usize,
    /// Write-back blocks each node writes.
    pub(crate) blocks_per_node: usize,
    /// Bytes of the checkpoint file restored.
    pub(crate) checkpoint: usize,
}

const BLOCKS: &str = "ckpt/blocks";
const FILES: &str = "ckpt/files";
const BLOCK: usize = 16 << 10;
/// The nodes' largest block, so a checkpoint file's chunk.
const CHUNK: u64 = 64 << 10;

pub(crate) async fn run(args: &Args, scratch: &Path, out: &mut Reporter) -> Result<()> {
    raise_open_files();
    let mut sizes = vec![(args.nodes / 10).max(10), args.nodes];
    sizes.dedup();
    for n in sizes {
        let dir = scratch.join(format!("n{n}"));
        run_one(n, args, &dir, out).await.with_context(|| format!("the {n}-node simulation"))?;
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

/// One node of the simulation.
struct Node {
    id: String,
    config: Config,
    objects: Objects,
}

/// A cluster of `n` simulated nodes.
struct Cluster {
    net: Arc<SimNet>,
    nodes: Vec<Node>,
}

impl Cluster {
    async fn start(n: usize, dir: &Path) -> Result<Cluster> {
        let net = Arc::new(SimNet::default());
        let ids: Vec<String> = (0..n).map(|i| format!("n{i:04}")).collect();
        let members: Vec<String> = ids.iter().map(|id| format!("{id}=sim:{id}")).collect();
        let progress = bar(n as u64, &format!("sim: starting {n} nodes"));
        let mut nodes = Vec::with_capacity(n);
        for id in &ids {
            let config = node_config(id, &members, dir);
            nodes.push(Node { id: id.clone(), objects: open(&config, &net).await?, config });
            progress.inc(1);
        }
        progress.finish_and_clear();
        // The first nodes' start-up resyncs asked members not started yet, and skip them for
        // two seconds: past that, then quiet.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let cluster = Cluster { net, nodes };
        cluster.settle().await;
        Ok(cluster)
    }

    /// The same nodes started again on empty memory and "disks" (the SSD is in memory),
    /// their Blob segments and the objects' files kept.
    async fn wiped(self) -> Result<Cluster> {
        let Cluster { net, nodes } = self;
        // All gone before any comes back: a node started early must not pull from one not
        // yet wiped.
        let configs: Vec<(String, Config)> = nodes.into_iter().map(|n| (n.id, n.config)).collect();
        for (id, _) in &configs {
            net.detach(id);
        }
        tokio::time::sleep(Duration::from_millis(200)).await; // their background tasks end
        let mut nodes = Vec::with_capacity(configs.len());
        for (id, config) in configs {
            nodes.push(Node { objects: open(&config, &net).await?, id, config });
        }
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let cluster = Cluster { net, nodes };
        cluster.settle().await;
        Ok(cluster)
    }

    /// Waits until a second passes with no request between nodes (start-up and
    /// member-change resyncs done).
    async fn settle(&self) {
        let mut quiet = 0;
        let mut seen = self.net.peek_requests();
        while quiet < 10 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.net.peek_requests();
            quiet = if now == seen { quiet + 1 } else { 0 };
            seen = now;
        }
    }

    /// The sum of a counter over the nodes (their Blob counters brought up to date first).
    async fn sum(&self, f: impl Fn(&Metrics) -> u64) -> u64 {
        let mut total = 0;
        for n in &self.nodes {
            n.objects.node().refresh_gauges().await;
            total += f(n.objects.node().metrics());
        }
        total
    }

    async fn unflushed(&self) -> u64 {
        let mut total = 0;
        for n in &self.nodes {
            total += n.objects.node().stats().await.unflushed_bytes;
        }
        total
    }
}

fn node_config(id: &str, members: &[String], dir: &Path) -> Config {
    let mut c = Config::default();
    c.data_dir = dir.join(id);
    c.max_block_size = ByteSize(CHUNK);
    c.cluster.node_id = id.into();
    c.cluster.members = members.to_vec();
    c.cluster.peer_timeout = Duration::from_secs(30);
    c.cluster.resync_interval = Duration::ZERO;
    c.blob.objects_url = format!("file://{}", dir.join("objects").display());
    c.namespaces.insert("ckpt/*".into(), NamespaceConfig { replicas: Some(2), ..Default::default() });
    c
}

/// A node over small memory tiers, reached through `net`.
async fn open(config: &Config, net: &Arc<SimNet>) -> Result<Objects> {
    std::fs::create_dir_all(&config.data_dir)?;
    let cpu = CpuTierBuilder::new(2 << 20).with_region_size(256 << 10).with_max_block_size(CHUNK).build()?;
    let ssd = Arc::new(MemoryTier::new(64 << 20, CHUNK));
    let objects = Objects::with_transport(cpu, ssd, config, Metrics::new(), net.dialer()).await?;
    net.attach(&config.cluster.node_id, routes(&objects, &config.server));
    Ok(objects)
}

async fn run_one(n: usize, args: &Args, dir: &Path, out: &mut Reporter) -> Result<()> {
    placement(n, out);
    let started = Instant::now();
    let cluster = Cluster::start(n, dir).await?;
    let start_traffic = cluster.net.take();
    eprintln!(
        "sim: {n} nodes up in {:.1} s ({} requests between them, {} of them digests)",
        started.elapsed().as_secs_f64(),
        start_traffic.requests(),
        start_traffic.requests_to("Digests")
    );
    let written = writes(&cluster, n, args, out).await?;
    let cluster = loss(cluster, n, &written, out).await?;
    restore(cluster, n, args, out).await
}

/// Step 1: the busiest node's share of 100,000 keys with two copies, against the mean.
fn placement(n: usize, out: &mut Reporter) {
    let ids: Vec<String> = (0..n).map(|i| format!("n{i:04}")).collect();
    let placement = Placement::new(ids.iter().cloned());
    let keys = 100_000u64;
    let mut copies: HashMap<&str, u64> = HashMap::new();
    let started = Instant::now();
    for k in 0..keys {
        for owner in placement.owners(&k.to_be_bytes(), 2) {
            *copies.entry(owner).or_default() += 1;
        }
    }
    let per_key_us = started.elapsed().as_secs_f64() * 1e6 / keys as f64;
    let mean = (2 * keys) as f64 / n as f64;
    let busiest = *copies.values().max().unwrap_or(&0) as f64;
    out.emit(Measured::fewer(format!("sim{n}_placement_busiest"), busiest, mean, "keys", "the mean (ideal)"));
    eprintln!("sim: placing a key over {n} members takes {per_key_us:.1} us (a hash per member)");
}

/// Step 2: write-back blocks with two copies from every node: what crosses between nodes
/// and what reaches Blob. The keys written.
async fn writes(cluster: &Cluster, n: usize, args: &Args, out: &mut Reporter) -> Result<Vec<BlockKey>> {
    cluster.net.take();
    let blob_before = cluster.sum(|m| m.blob_bytes.with_label_values(&["put"]).get()).await;
    let puts_before = cluster.sum(|m| m.blob_requests.with_label_values(&["put"]).get()).await;
    let progress = bar(n as u64, &format!("sim: {n} nodes writing"));
    let writes = futures::stream::iter(cluster.nodes.iter().enumerate())
        .map(|(i, node)| {
            let progress = progress.clone();
            async move {
                let mut keys = Vec::new();
                for b in 0..args.blocks_per_node {
                    let key = BlockKey::parse(BLOCKS, format!("{i:05}-{b:04}").as_bytes())?;
                    let data = pattern((i * 10_000 + b) as u64, BLOCK);
                    node.objects.node().put(Block::new(key.clone(), data), Durability::WriteBack).await?;
                    keys.push((node.id.as_str(), key));
                }
                progress.inc(1);
                Ok::<_, anyhow::Error>(keys)
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await?;
    progress.finish_and_clear();
    let written_by: Vec<(&str, BlockKey)> = writes.into_iter().flatten().collect();
    let written = (written_by.len() * BLOCK) as f64;
    let between = cluster.net.take().bytes() as f64;
    // Each block's copies go to its owners; the writer keeps one itself when it is one.
    let placement = Placement::new(cluster.nodes.iter().map(|node| node.id.clone()));
    let sent: usize = written_by
        .iter()
        .map(|(writer, k)| 2 - usize::from(placement.owners(&placement_key(k), 2).contains(writer)))
        .sum();
    let keys: Vec<BlockKey> = written_by.into_iter().map(|(_, k)| k).collect();
    while cluster.unflushed().await > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let to_blob = (cluster.sum(|m| m.blob_bytes.with_label_values(&["put"]).get()).await - blob_before) as f64;
    let puts = cluster.sum(|m| m.blob_requests.with_label_values(&["put"]).get()).await - puts_before;
    out.emit(Measured::fewer(
        format!("sim{n}_east_west_per_byte"),
        between / written,
        (sent * BLOCK) as f64 / written,
        "B/B",
        "the copies owners must receive",
    ));
    out.emit(Measured::fewer(
        format!("sim{n}_blob_bytes_per_byte"),
        to_blob / written,
        2.0,
        "B/B",
        "every copy flushed (R = 2)",
    ));
    eprintln!("sim: {n} nodes wrote {} blocks; {puts} Blob PUTs", keys.len());
    Ok(keys)
}

/// Step 3: one node lost for good: resync brings its blocks back to two copies.
async fn loss(mut cluster: Cluster, n: usize, written: &[BlockKey], out: &mut Reporter) -> Result<Cluster> {
    let dead = cluster.nodes.remove(n / 2);
    let survivors: Vec<(String, String)> =
        cluster.nodes.iter().map(|node| (node.id.clone(), format!("sim:{}", node.id))).collect();
    let old = Placement::new(cluster.nodes.iter().map(|node| node.id.clone()).chain([dead.id.clone()]));
    let lost = written.iter().filter(|k| old.owners(&placement_key(k), 2).contains(&dead.id.as_str())).count();
    cluster.net.detach(&dead.id);
    drop(dead);
    cluster.net.take();
    let moved = async |c: &Cluster| c.sum(|m| m.resync_bytes.get() + m.handoff_bytes.get()).await;
    let pulled_before = moved(&cluster).await;
    let started = Instant::now();
    let members: Vec<String> = survivors.iter().map(|(id, addr)| format!("{id}={addr}")).collect();
    for node in &mut cluster.nodes {
        node.objects.node().cluster().context("a cluster node")?.set_members(survivors.clone());
        node.config.cluster.members = members.clone(); // for a restart (the restore's wipe)
    }
    cluster.settle().await;
    let took = started.elapsed().as_secs_f64() - 1.0; // settle's quiet second
    let pulled = (moved(&cluster).await - pulled_before) as f64;
    let traffic = cluster.net.take();
    let lost_bytes = (lost * BLOCK) as f64;
    out.emit(Measured::fewer(
        format!("sim{n}_resync_bytes_per_lost"),
        pulled / lost_bytes,
        1.0,
        "B/B",
        "the lost copies (ideal)",
    ));
    out.emit(Measured::fewer(
        format!("sim{n}_resync_requests"),
        traffic.requests() as f64,
        (n - 1) as f64,
        "req",
        "one per surviving member",
    ));
    eprintln!(
        "sim: node loss at {n}: {lost} copies lost, {:.0} bytes moved in {took:.1} s; {} requests ({} offers, {} puts, {} digests, {} key lists), {:.1} MiB between nodes",
        pulled,
        traffic.requests(),
        traffic.requests_to("Offer"),
        traffic.requests_to("Put"),
        traffic.requests_to("Digests"),
        traffic.requests_to("OwnedKeys"),
        traffic.bytes() as f64 / (1 << 20) as f64
    );
    // Every written block still reads back, through any node.
    let reader = &cluster.nodes[0].objects;
    for key in written.iter().step_by((written.len() / 200).max(1)) {
        ensure!(matches!(reader.node().get(key).await, kvtier_blockmgr::GetOutcome::Hit { .. }), "{key} lost");
    }
    Ok(cluster)
}

/// Step 4: a checkpoint file written back, every node wiped, then read by every node in waves.
async fn restore(cluster: Cluster, n: usize, args: &Args, out: &mut Reporter) -> Result<()> {
    let data = pattern(7, args.checkpoint);
    let writer = &cluster.nodes[0].objects;
    let mut w = writer.write_object(FILES, "step-100/model.safetensors", Durability::WriteBack)?;
    w.write(&data).await?;
    w.commit().await?;
    while cluster.sum(|m| m.objects_exported.get()).await == 0 || cluster.unflushed().await > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cluster = cluster.wiped().await?;
    cluster.net.take();
    let blob_before =
        cluster.sum(|m| m.object_blob_read_bytes.get() + m.blob_bytes.with_label_values(&["get"]).get()).await;
    let wave = (n / 10).max(1);
    let progress = bar(n as u64, &format!("sim: {n} nodes restoring"));
    let started = Instant::now();
    for readers in cluster.nodes.chunks(wave) {
        let reads = readers.iter().map(|node| {
            let (data, progress) = (&data, progress.clone());
            async move {
                let m = &node.objects;
                let info = m.stat_object(FILES, "step-100/model.safetensors").await?.context("the checkpoint")?;
                let ns = kvtier_tiers::Namespace::new(FILES)?;
                let got: Vec<Bytes> = m.read_object(&ns, &info, 0, info.size).try_collect().await?;
                ensure!(got.concat() == data[..], "{} restored other bytes", node.id);
                progress.inc(1);
                Ok::<_, anyhow::Error>(())
            }
        });
        futures::future::try_join_all(reads).await?;
    }
    progress.finish_and_clear();
    let took = started.elapsed().as_secs_f64();
    let from_blob =
        (cluster.sum(|m| m.object_blob_read_bytes.get() + m.blob_bytes.with_label_values(&["get"]).get()).await
            - blob_before) as f64;
    let traffic = cluster.net.take();
    let hottest = traffic.served.values().copied().max().unwrap_or(0) as f64;
    let size = args.checkpoint as f64;
    out.emit(Measured::fewer(
        format!("sim{n}_restore_blob_reads"),
        from_blob / size,
        n as f64,
        "B/B",
        "every node reading Blob",
    ));
    out.emit(Measured::fewer(
        format!("sim{n}_restore_busiest_served"),
        hottest / size,
        (n - 1) as f64 / 2.0,
        "copies",
        "the two owners serving every reader",
    ));
    let redirects = cluster.sum(|m| m.peer_reads.with_label_values(&["redirect"]).get()).await;
    let replicas = cluster.sum(|m| m.peer_reads.with_label_values(&["replica"]).get()).await;
    eprintln!(
        "sim: {n} nodes restored {} in {took:.1} s; {redirects} reads sent to read replicas, {replicas} answered by them",
        crate::report::size_name(args.checkpoint)
    );
    Ok(())
}

/// A thousand nodes hold a few descriptors each (a memfd per CPU tier): lift the soft limit.
fn raise_open_files() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
