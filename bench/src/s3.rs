//! `kvtier-bench s3`: 2 MiB objects through kvtier's S3 endpoint against Azure Blob itself
//! (a real Azurite), in the same run: PUT and GET throughput at 8 requests in flight, and
//! GET p99 latency, with two pairs of clients:
//! - `boto3`: boto3 against kvtier vs Azure's Python SDK (azure-storage-blob) against
//!   Azurite, what a Python user of each would run (`bench/python/s3_bench.py`, by `--python`);
//! - `object-store`: the `object_store` crate's S3 client against kvtier vs its Azure client
//!   against Azurite, one library on both sides, so the clients do the same work. With it,
//!   two measures of kvtier's own endpoint: with `s3.md5_etags` off against on (what S3's
//!   MD5 ETags cost), and the same node behind the `s3s` crate's S3 stack
//!   (bench/src/s3s_endpoint.rs) against kvtier's hand-written one (the framework's cost).
//!
//! kvtier is one node in this process with `local_disk` durability (each PUT acknowledged on
//! its SSD); Azurite writes to its own directory on the same disk.

use std::{
    process::{Command, Stdio},
    sync::Arc,
    time::Instant,
};

use anyhow::{Context, Result, ensure};
use futures::StreamExt;
use hdrhistogram::Histogram;
use kvtier_server::RunningServer;
use kvtier_testkit::{AZURITE_KEY, Azurite, pattern};
use object_store::{ObjectStore, PutPayload, aws::AmazonS3Builder, path::Path};

use crate::report::{Reporter, Result as Measured, bar, mib_per_s, s3_node_config, size_name};

/// Requests in flight.
const IN_FLIGHT: usize = 8;

const SCRIPT: &str = include_str!("../python/s3_bench.py");
const KEY: (&str, &str) = ("bench", "bench-secret");
const BASELINE: &str = "Azurite (Blob API)";

/// Which clients a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Clients {
    /// boto3 -> kvtier vs azure-storage-blob -> Azurite (needs `--python` with both).
    Boto3,
    /// `object_store`'s S3 client -> kvtier vs its Azure client -> Azurite.
    ObjectStore,
    /// Both pairs.
    All,
}

/// Settings of one `s3` run.
#[derive(Debug, Clone)]
pub(crate) struct Args {
    pub(crate) size: usize,
    pub(crate) count: usize,
    pub(crate) clients: Clients,
    pub(crate) python: String,
}

struct Measures {
    put_mib_s: f64,
    get_mib_s: f64,
    get_p99_us: f64,
}

/// PUTs then GETs `bodies` (made once: making them is not what is measured).
async fn measure(store: Arc<dyn ObjectStore>, what: &str, args: &Args, bodies: &[bytes::Bytes]) -> Result<Measures> {
    let bytes = args.size * args.count;
    let progress = bar(args.count as u64, &format!("s3: PUT to {what}"));
    let started = Instant::now();
    let puts: Vec<_> = futures::stream::iter((0..args.count).map(|i| {
        let (store, progress) = (store.clone(), progress.clone());
        async move {
            let r = store.put(&Path::from(format!("bench/obj-{i}")), PutPayload::from(bodies[i].clone())).await;
            progress.inc(1);
            r
        }
    }))
    .buffer_unordered(IN_FLIGHT)
    .collect()
    .await;
    let put_s = started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    ensure!(puts.iter().all(|r| r.is_ok()), "a PUT to {what} failed: {:?}", puts.iter().find(|r| r.is_err()));

    let progress = bar(args.count as u64, &format!("s3: GET from {what}"));
    let started = Instant::now();
    let gets: Vec<Result<u64>> = futures::stream::iter((0..args.count).map(|i| {
        let (store, progress) = (store.clone(), progress.clone());
        async move {
            let t = Instant::now();
            let got = store.get(&Path::from(format!("bench/obj-{i}"))).await?.bytes().await?;
            ensure!(got == bodies[i], "object {i} from {what} is not what was put");
            progress.inc(1);
            Ok(t.elapsed().as_micros() as u64)
        }
    }))
    .buffer_unordered(IN_FLIGHT)
    .collect()
    .await;
    let get_s = started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    let mut latency = Histogram::<u64>::new(3)?;
    for g in gets {
        latency.record(g?.max(1))?;
    }
    Ok(Measures {
        put_mib_s: mib_per_s(bytes, put_s),
        get_mib_s: mib_per_s(bytes, get_s),
        get_p99_us: latency.value_at_quantile(0.99) as f64,
    })
}

/// boto3 and azure-storage-blob in a Python process: (kvtier, Azurite) measures.
async fn measure_boto3(args: &Args, dir: &std::path::Path, endpoint: &str, azurite: &Azurite) -> Result<[Measures; 2]> {
    let script = dir.join("s3_bench.py");
    std::fs::write(&script, SCRIPT)?;
    let azure = format!(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};BlobEndpoint={}",
        azurite.endpoint
    );
    let mut cmd = Command::new(&args.python);
    cmd.arg(&script)
        .args(["--endpoint", endpoint, "--key", KEY.0, "--secret", KEY.1, "--bucket", "bench"])
        .args(["--azure", &azure, "--container", "bench-boto3"])
        .args(["--size", &args.size.to_string(), "--count", &args.count.to_string()])
        .args(["--in-flight", &IN_FLIGHT.to_string()])
        .stderr(Stdio::inherit());
    let python = args.python.clone();
    let output = tokio::task::spawn_blocking(move || {
        cmd.output().with_context(|| {
            format!("running {python} (set --python to an interpreter with boto3 and azure-storage-blob)")
        })
    })
    .await??;
    ensure!(output.status.success(), "the Python side failed (its stderr is above)");
    let mut found = std::collections::HashMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("parsing {line:?}"))?;
        let key =
            (v["side"].as_str().unwrap_or_default().to_string(), v["op"].as_str().unwrap_or_default().to_string());
        found.insert(key, (v["mib_s"].as_f64().context("mib_s")?, v["p99_us"].as_f64().context("p99_us")?));
    }
    let side = |name: &str| -> Result<Measures> {
        let get = |op: &str| {
            found.get(&(name.to_string(), op.to_string())).copied().with_context(|| format!("no {name} {op} result"))
        };
        Ok(Measures { put_mib_s: get("put")?.0, get_mib_s: get("get")?.0, get_p99_us: get("get")?.1 })
    };
    Ok([side("kvtier")?, side("azurite")?])
}

/// `object_store`'s S3 client for bucket `bench` at `endpoint`.
fn s3_client(endpoint: &str) -> Result<Arc<dyn ObjectStore>> {
    Ok(Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_bucket_name("bench")
            .with_region("us-east-1")
            .with_access_key_id(KEY.0)
            .with_secret_access_key(KEY.1)
            .with_allow_http(true)
            .build()?,
    ))
}

/// A node of this process serving S3 from `dir`, with MD5 ETags or not.
async fn start_node(args: &Args, dir: &std::path::Path, md5_etags: bool) -> Result<RunningServer> {
    // Twice what the run writes.
    let mut config = s3_node_config(dir, KEY, ((args.count * args.size) as u64 * 2).max(1 << 30));
    config.s3.md5_etags = md5_etags;
    let node = RunningServer::start(config.clone()).await.context("starting the node")?;
    kvtier_s3::create_bucket(node.objects(), &config.s3, "bench").await?;
    Ok(node)
}

fn emit(out: &mut Reporter, prefix: &str, size: usize, ours: &Measures, theirs: &Measures, baseline: &'static str) {
    let name = size_name(size);
    out.emit(Measured::throughput(format!("{prefix}_put_{name}"), ours.put_mib_s, theirs.put_mib_s, baseline));
    out.emit(Measured::throughput(format!("{prefix}_get_{name}"), ours.get_mib_s, theirs.get_mib_s, baseline));
    out.emit(Measured::latency(format!("{prefix}_get_p99_us"), ours.get_p99_us, theirs.get_p99_us, baseline));
}

pub(crate) async fn run(args: &Args, dir: &std::path::Path, out: &mut Reporter) -> Result<()> {
    let azurite = Azurite::start();
    let node = start_node(args, &dir.join("node"), true).await?;
    let endpoint = format!("http://{}", node.s3_addr.context("the node serves S3")?);

    if args.clients != Clients::ObjectStore {
        let [ours, theirs] = measure_boto3(args, dir, &endpoint, &azurite).await?;
        emit(out, "s3_boto3", args.size, &ours, &theirs, "Azurite (Blob API) via azure-storage-blob");
    }
    if args.clients != Clients::Boto3 {
        let kvtier = s3_client(&endpoint)?;
        let url = url::Url::parse("az://kvtier/bench-s3")?;
        let (blob, _) = object_store::parse_url_opts(&url, azurite.options())?;
        let blob: Arc<dyn ObjectStore> = Arc::from(blob);
        let bodies: Vec<bytes::Bytes> = (0..args.count).map(|i| pattern(i as u64, args.size)).collect();
        let ours = measure(kvtier, "kvtier", args, &bodies).await?;
        let theirs = measure(blob, "Azurite", args, &bodies).await?;
        emit(out, "s3", args.size, &ours, &theirs, BASELINE);

        // The same endpoint without MD5 ETags (a node of its own), and the same node behind s3s.
        let plain = start_node(args, &dir.join("node-no-md5"), false).await?;
        let plain_endpoint = format!("http://{}", plain.s3_addr.context("the node serves S3")?);
        let no_md5 = measure(s3_client(&plain_endpoint)?, "kvtier without MD5 ETags", args, &bodies).await?;
        plain.shutdown().await?;
        emit(out, "s3_md5_off", args.size, &no_md5, &ours, "kvtier S3 endpoint with MD5 ETags");
        // A fresh node as well, so its PUTs create objects as the baseline's did (not replace them).
        let fresh = start_node(args, &dir.join("node-s3s"), true).await?;
        let prefix = kvtier_blockmgr::config::S3Config::default().namespace_prefix;
        let (addr, server) = crate::s3s_endpoint::serve(fresh.objects().clone(), &prefix, KEY).await?;
        let on_s3s = measure(s3_client(&format!("http://{addr}"))?, "kvtier behind s3s", args, &bodies).await;
        server.abort();
        fresh.shutdown().await?;
        emit(out, "s3s", args.size, &on_s3s?, &ours, "kvtier's hand-written S3 endpoint");
    }
    node.shutdown().await?;
    Ok(())
}
