//! `kvtier-bench s3`: 2 MiB objects through kvtier's S3 endpoint against Azure Blob itself
//! (a real Azurite), in the same run: PUT and GET throughput at 8 requests in flight, and
//! GET p99 latency.
//!
//! Both sides use the `object_store` crate (its S3 client against kvtier, its Azure client
//! against Azurite), so the clients do the same work; kvtier is one node in this process with
//! `local_disk` durability (each PUT acknowledged on its SSD), Azurite writes to its own
//! directory on the same disk.

use std::{sync::Arc, time::Instant};

use anyhow::{Context, Result, ensure};
use futures::StreamExt;
use hdrhistogram::Histogram;
use kvtier_blockmgr::{ByteSize, config::S3Key, server::RunningServer};
use kvtier_tiers::conformance::{Azurite, pattern};
use object_store::{ObjectStore, PutPayload, aws::AmazonS3Builder, path::Path};

use crate::report::{Reporter, Result as Measured, bar, mib_per_s, size_name};

/// Requests in flight.
const IN_FLIGHT: usize = 8;

/// Settings of one `s3` run.
#[derive(Debug, Clone)]
pub(crate) struct Args {
    pub(crate) size: usize,
    pub(crate) count: usize,
}

struct Measures {
    put_mib_s: f64,
    get_mib_s: f64,
    get_p99_us: f64,
}

async fn measure(store: Arc<dyn ObjectStore>, what: &str, args: &Args) -> Result<Measures> {
    let bytes = args.size * args.count;
    let progress = bar(args.count as u64, &format!("s3: PUT to {what}"));
    let started = Instant::now();
    let puts: Vec<_> = futures::stream::iter((0..args.count).map(|i| {
        let (store, progress) = (store.clone(), progress.clone());
        async move {
            let r =
                store.put(&Path::from(format!("bench/obj-{i}")), PutPayload::from(pattern(i as u64, args.size))).await;
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
            ensure!(got == pattern(i as u64, args.size), "object {i} from {what} is not what was put");
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

pub(crate) async fn run(args: &Args, dir: &std::path::Path, out: &mut Reporter) -> Result<()> {
    let azurite = Azurite::start();
    let mut config = kvtier_blockmgr::Config::default();
    config.data_dir = dir.join("node");
    config.server.listen = "127.0.0.1:0".into();
    config.server.metrics_listen = String::new();
    config.server.persist_on_shutdown = false;
    config.s3.listen = "127.0.0.1:0".into();
    config.s3.keys =
        vec![S3Key { access_key: "bench".into(), secret_key: "bench-secret".into(), buckets: vec!["*".into()] }];
    config.cpu.capacity = ByteSize(((args.count * args.size) as u64 * 2).max(1 << 30));
    let node = RunningServer::start(config.clone()).await.context("starting the node")?;
    kvtier_blockmgr::s3::create_bucket(node.manager(), &config.s3, "bench").await?;
    let endpoint = format!("http://{}", node.s3_addr.context("the node serves S3")?);
    let kvtier: Arc<dyn ObjectStore> = Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_bucket_name("bench")
            .with_region("us-east-1")
            .with_access_key_id("bench")
            .with_secret_access_key("bench-secret")
            .with_allow_http(true)
            .build()?,
    );
    let url = url::Url::parse("az://kvtier/bench-s3")?;
    let (blob, _) = object_store::parse_url_opts(&url, azurite.options())?;
    let blob: Arc<dyn ObjectStore> = Arc::from(blob);

    let ours = measure(kvtier, "kvtier", args).await?;
    let theirs = measure(blob, "Azurite", args).await?;
    node.shutdown().await?;
    let name = size_name(args.size);
    out.emit(Measured::throughput(format!("s3_put_{name}"), ours.put_mib_s, theirs.put_mib_s, "Azurite (Blob API)"));
    out.emit(Measured::throughput(format!("s3_get_{name}"), ours.get_mib_s, theirs.get_mib_s, "Azurite (Blob API)"));
    out.emit(Measured::latency("s3_get_p99_us".into(), ours.get_p99_us, theirs.get_p99_us, "Azurite (Blob API)"));
    Ok(())
}
