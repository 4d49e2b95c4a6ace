//! NVIDIA Dynamo's own G4 (object tier) code against a real `kvtier serve`: the crates.io
//! crate `kvbm-engine` (pinned in connectors/dynamo, built outside the workspace once per
//! machine by scripts/dynamo.sh) runs its own `s3_integration` tests unchanged against
//! kvtier's S3 endpoint: a put/get round trip, `If-Match` with a stale ETag refused and with
//! the current one accepted, and an expired lock taken over by one of two racing instances
//! (what KVBM's `S3LockManager` does with `If-None-Match: *` and `If-Match`). And KVBM's
//! G4 client as KVBM's leader and workers use it (connectors/dynamo/tests/g4.rs: blocks of
//! KV layouts in host memory through `put/get_blocks_with_layout`, locks, bad input) through
//! a three-member cluster writing back to a real Azurite, where its blocks then are.

mod common;

use std::{process::Command, time::Duration};

use common::{Node, blob::Backend, s3::endpoint};
use kvtier_blockmgr::ObjectRange;
use kvtier_tiers::{Namespace, ObjectBlobs, Retries};

/// Runs `scripts/dynamo.sh` with `args`; its stdout, or a failure showing its output and `nodes`' logs.
fn dynamo_sh(args: &[&str], nodes: &[&Node]) -> String {
    let script = format!("{}/../scripts/dynamo.sh", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(script).args(args).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let logs: Vec<String> = nodes.iter().map(|n| n.stderr()).collect();
    assert!(
        out.status.success(),
        "scripts/dynamo.sh {args:?} failed:\n{stdout}\n{}\n{}",
        tail(&stderr),
        logs.join("\n")
    );
    stdout.into_owned()
}

#[test]
fn dynamos_own_g4_tests_pass_against_kvtier() {
    let node = Node::start_with(
        "",
        "[s3]\nlisten = \"127.0.0.1:0\"\ndurability = \"local_disk\"\n\
         [[s3.keys]]\naccess_key = \"AKIDDYNAMO\"\nsecret_key = \"dynamo-secret\"\nbuckets = [\"*\"]\n",
    );
    let stdout = dynamo_sh(&["test", &endpoint(&node), "AKIDDYNAMO", "dynamo-secret"], &[&node]);
    // All four ran (a filter that matched fewer would pass too).
    assert!(stdout.contains("test result: ok. 4 passed"), "{stdout}");
    for test in [
        "test_put_get_roundtrip",
        "test_put_object_if_match_rejects_stale_etag",
        "test_put_object_if_match_accepts_current_etag",
        "test_lock_expired_takeover_is_atomic",
    ] {
        assert!(stdout.contains(&format!("{test} ... ok")), "{test} did not pass:\n{stdout}");
    }
}

/// Blocks of 2 MiB, KVBM's size for a mid-sized model; the endpoints take at most 3 MiB.
const MAX_OBJECT: u64 = 3 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvbms_g4_client_runs_through_a_write_back_cluster_and_its_blocks_reach_azurite() {
    let backend = Backend::azurite();
    let options: String = backend.options().iter().map(|(k, v)| format!("{k} = \"{v}\"\n")).collect();
    let nodes = common::start_static_cluster(&["n1", "n2", "n3"], |id| {
        format!(
            "peer_timeout = \"3s\"\n\n[namespaces.\"s3*\"]\nreplicas = 2\n\n\
             [blob]\nurl = \"az://kvtier/nodes/{id}\"\nobjects_url = \"az://kvtier/objects\"\nflush_linger = \"10ms\"\n\
             [blob.options]\n{options}\n\
             [s3]\nlisten = \"127.0.0.1:0\"\ndurability = \"write_back\"\nmax_object_size = {MAX_OBJECT}\n\
             [[s3.keys]]\naccess_key = \"AKIDDYNAMO\"\nsecret_key = \"dynamo-secret\"\nbuckets = [\"*\"]\n"
        )
    });
    let endpoints: Vec<String> = nodes.iter().map(endpoint).collect();
    let all: Vec<&Node> = nodes.iter().collect();
    let stdout = dynamo_sh(&["g4", &endpoints.join(","), "AKIDDYNAMO", "dynamo-secret", &MAX_OBJECT.to_string()], &all);
    assert!(stdout.contains("test result: ok. 5 passed"), "{stdout}");

    // Every block KVBM's worker wrote (`3/{pos}:...`) is exported: Azurite holds its bytes.
    let client = nodes[2].client().await;
    let blocks = client.list_objects("s3/kvbm-g4", "o/3/").await.unwrap();
    assert_eq!(blocks.len(), 24, "{:?}", blocks.iter().map(|b| &b.path).collect::<Vec<_>>());
    let blobs = ObjectBlobs::open("az://kvtier/objects", &backend.options(), Retries::default()).unwrap();
    let ns = Namespace::new("s3/kvbm-g4").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for b in &blocks {
        assert!(b.path.contains(':'), "{}", b.path);
        let want = client.read_object("s3/kvbm-g4", &b.path, ObjectRange::default()).await.unwrap();
        assert_eq!(want.len(), 2 << 20);
        let name = blobs.name(&ns, &b.path);
        loop {
            if let Ok(Some(file)) = blobs.read(&name, 0..want.len() as u64).await {
                assert!(file == want, "Azurite holds other bytes for {}", b.path);
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{} was not exported", b.path);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// kvtier's native G4 client (connectors/dynamo, `KvtierObjectBlockClient`) through a
/// three-member write-back cluster: the KV layout round trip and the lock races KVBM's S3
/// client and lock manager pass (the same test bodies), over shared memory and gRPC, ranks
/// apart, bad input refused; then every node's share of the blocks reaches Blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_native_g4_client_runs_through_a_write_back_cluster_over_shared_memory_and_grpc() {
    let backend = Backend::azurite();
    let options: String = backend.options().iter().map(|(k, v)| format!("{k} = \"{v}\"\n")).collect();
    let nodes = common::start_static_cluster(&["n1", "n2", "n3"], |id| {
        format!(
            "peer_timeout = \"3s\"\n\n[namespaces.\"kv/*\"]\nreplicas = 2\n\n\
             [blob]\nurl = \"az://kvtier/native/{id}\"\nflush_linger = \"10ms\"\n\
             [blob.options]\n{options}\n"
        )
    });
    let grpc: Vec<String> = nodes.iter().map(|n| n.addrs.grpc.clone()).collect();
    let shm: Vec<String> = nodes.iter().map(|n| n.addrs.shm.clone().expect("a shared-memory socket")).collect();
    let all: Vec<&Node> = nodes.iter().collect();
    // (small_config's max_block_size.)
    let stdout = dynamo_sh(&["native", &grpc.join(","), &shm.join(","), &(1u64 << 20).to_string()], &all);
    assert!(stdout.contains("test result: ok. 6 passed"), "{stdout}");

    // The blocks went through the shared memory of the members it was given for, and each
    // member holds its share; write-back: all of it reaches Blob.
    let over_shm = |op: &str| -> u64 { nodes.iter().map(|n| n.labelled_metric("requests_total", op)).sum() };
    assert!(over_shm("op=\"shm_commit\"") > 0, "no block was put through shared memory");
    assert!(over_shm("op=\"shm_pin\"") > 0, "no block was read through shared memory");
    for node in &nodes {
        let puts = node.labelled_metric("namespace_puts_total", "namespace=\"kv/kvbm\"");
        assert!(puts > 0, "{} holds none of the blocks", node.addrs.grpc);
    }
    common::wait_until("every block in Blob", Duration::from_secs(60), || {
        nodes.iter().all(|n| n.metric("unflushed_bytes") == 0)
    });
}

/// The end of a long output (cargo's build log precedes the failure).
fn tail(text: &str) -> &str {
    let start = text.char_indices().rev().nth(8000).map_or(0, |(i, _)| i);
    &text[start..]
}
