//! KVBM's G4 client (`kvbm-engine`'s `S3ObjectBlockClient` and `S3LockManager`) as KVBM's
//! leader and workers use it, against kvtier's S3 endpoints: blocks under the keys KVBM
//! makes (`{rank}/{pos}:{base58}:{base58 parent}`) round trip byte-exact written through one
//! member and read through each, found by `has_blocks` with their sizes; lock races among
//! many instances through every member have one winner per hash, fresh or expired; and the
//! bad input a G4 client can send is refused clearly with nothing stored.
//!
//! Run by scripts/dynamo.sh (`g4`) with `KVTIER_S3_ENDPOINTS` (comma-separated members),
//! `KVTIER_S3_MAX_OBJECT` (the endpoints' `s3.max_object_size`) and AWS_* credentials.

use std::{collections::HashMap, sync::Arc};

mod common;

use aws_sdk_s3::error::ProvideErrorMetadata;
use bytes::Bytes;
use futures::future::join_all;
use kvbm_engine::{
    SequenceHash,
    object::{
        LockFileContent, ObjectBlockOps, RankPrefixedKeyFormatter,
        s3::{S3Config, S3LockManager, S3ObjectBlockClient},
    },
};

fn endpoints() -> Vec<String> {
    let list = std::env::var("KVTIER_S3_ENDPOINTS").expect("KVTIER_S3_ENDPOINTS names the endpoints to test");
    list.split(',').map(str::to_string).collect()
}

/// A G4 client of `bucket` through `endpoint` (as KVBM builds one: path style), its keys
/// prefixed with `rank` as a worker's are.
async fn client(endpoint: &str, bucket: &str, rank: Option<usize>) -> Arc<S3ObjectBlockClient> {
    let config = S3Config::minio(endpoint.to_string(), bucket.to_string());
    let client = match rank {
        Some(r) => S3ObjectBlockClient::with_key_formatter(config, Arc::new(RankPrefixedKeyFormatter::new(r))).await,
        None => S3ObjectBlockClient::new(config).await,
    }
    .expect("a G4 client");
    client.ensure_bucket_exists().await.expect("the bucket");
    Arc::new(client)
}

/// Block `i`'s bytes: 2 MiB, a KVBM block of a mid-sized model, distinct per block.
fn block(i: usize) -> Bytes {
    (0..2usize << 20).map(|j| (j.wrapping_mul(31) ^ i.wrapping_mul(131)) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blocks_round_trip_byte_exact_through_every_member_under_kvbms_keys() {
    let members = endpoints();
    let writer = client(&members[0], "kvbm-g4", Some(3)).await;
    let hashes = common::chain(24, 0x5eed_0001);
    let puts = hashes.iter().enumerate().map(|(i, h)| {
        let (writer, key) = (writer.clone(), writer.key_formatter().format_key(h));
        assert!(key.starts_with("3/") && key.contains(':'), "a worker's key: {key}");
        async move { writer.put_object(&key, block(i)).await }
    });
    for put in join_all(puts).await {
        put.expect("a block put");
    }
    let absent = SequenceHash::root(0xab5e_0000_0000_0001);
    for member in &members {
        let reader = client(member, "kvbm-g4", Some(3)).await;
        for (i, h) in hashes.iter().enumerate() {
            let got = reader.get_object(&reader.key_formatter().format_key(h)).await.expect("a block get");
            assert!(got.as_ref() == Some(&block(i)), "block {i} read through {member}");
        }
        // KVBM's lookup: each block with its size, in any order; one never written is missing.
        let asked: Vec<SequenceHash> = hashes.iter().copied().chain([absent]).collect();
        let found: HashMap<SequenceHash, Option<usize>> = reader.has_blocks(asked).await.into_iter().collect();
        assert_eq!(found.len(), hashes.len() + 1);
        assert!(hashes.iter().all(|h| found[h] == Some(2 << 20)), "sizes through {member}: {found:?}");
        assert_eq!(found[&absent], None);
    }
}

/// The instance holding `hash`'s lock, as the lock object says.
async fn holder(client: &S3ObjectBlockClient, hash: &SequenceHash) -> Option<String> {
    let bytes = client.get_object(&format!("{hash}.lock")).await.expect("reading a lock")?;
    let lock: LockFileContent = serde_json::from_slice(&bytes).expect("a whole lock file");
    Some(lock.instance_id)
}

/// `S3LockManager`s over `clients` (racer `r` through member `r`), and who holds a lock.
fn s3_locks(clients: Vec<Arc<S3ObjectBlockClient>>) -> (common::Locks, common::Holder) {
    let reader = clients[clients.len() - 1].clone();
    let locks: common::Locks = Arc::new(move |r, id, timeout| {
        Arc::new(S3LockManager::new(clients[r % clients.len()].clone(), id).with_timeout(timeout))
    });
    let holder: common::Holder = Arc::new(move |hash| {
        let reader = reader.clone();
        Box::pin(async move { holder(&reader, &hash).await })
    });
    (locks, holder)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lock_races_through_every_member_have_one_winner_per_hash() {
    let clients = join_all(endpoints().iter().map(|m| client(m, "kvbm-locks", None))).await;
    let (locks, holder) = s3_locks(clients);
    common::lock_races_have_one_winner_per_hash(locks, holder, 0x10c4_0002).await;
}

/// Lock puts racing deletes (the body both clients run): an If-Match on a lock deleted
/// meanwhile fails with S3's 404, the one error allowed here.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lock_puts_racing_deletes_leave_only_whole_locks() {
    let clients = join_all(endpoints().iter().map(|m| client(m, "kvbm-lock-churn", None))).await;
    let (locks, holder) = s3_locks(clients);
    let deleted_meanwhile = |e: &str| e.contains("NoSuchKey") || e.contains("does not exist");
    let failed = common::lock_puts_racing_deletes_leave_only_whole_locks(
        locks,
        holder,
        SequenceHash::root(0xc4u64 << 40),
        deleted_meanwhile,
    )
    .await;
    eprintln!("{failed} attempts found their lock deleted under them");
}

/// KVBM's offload and onboard through `put/get_blocks_with_layout`, written through one member
/// and read through each (the body both G4 clients run: tests/common/mod.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kv_layouts_round_trip_through_put_and_get_blocks_with_layout() {
    let members = endpoints();
    let writer: Arc<dyn ObjectBlockOps> = client(&members[0], "kvbm-layouts", Some(0)).await;
    let mut readers: Vec<Arc<dyn ObjectBlockOps>> = Vec::new();
    for member in &members {
        readers.push(client(member, "kvbm-layouts", Some(0)).await);
    }
    common::kv_layouts_round_trip_through_every_member(writer, readers, 0x1a70_0004).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_refused_clearly_and_stores_nothing() {
    let members = endpoints();
    let g4 = client(&members[0], "kvbm-bad", None).await;
    // If-Match on a key that does not exist: S3's 404 (not a lock lost), nothing created.
    let refused =
        g4.put_object_if_match("0:absent", Bytes::from_static(b"x"), "\"00000000000000000000000000000000\"").await;
    let why = format!("{:#}", refused.expect_err("If-Match on no object"));
    assert!(why.contains("NoSuchKey"), "{why}");
    assert_eq!(g4.get_object("0:absent").await.unwrap(), None);
    // A malformed or stale ETag: 412 (the put lost), the object unchanged.
    g4.put_object("0:kept", Bytes::from_static(b"kept")).await.unwrap();
    for etag in ["not-an-etag", "\"\"", "W/\"weak\"", "\"0123456789abcdef0123456789abcdef\""] {
        assert!(!g4.put_object_if_match("0:kept", Bytes::from_static(b"other"), etag).await.unwrap(), "{etag}");
    }
    assert_eq!(g4.get_object("0:kept").await.unwrap().as_deref(), Some(&b"kept"[..]));
    // A block over the endpoint's object size limit: refused, nothing stored.
    let limit: usize = std::env::var("KVTIER_S3_MAX_OBJECT").expect("KVTIER_S3_MAX_OBJECT").parse().unwrap();
    g4.put_object("0:huge", Bytes::from(vec![7u8; limit + 1])).await.expect_err("too large");
    // (KVBM's error says "service error"; the SDK's under it names S3's code.)
    let sent = g4.client().put_object().bucket(g4.bucket()).key("0:huge");
    let refused = sent.body(vec![7u8; limit + 1].into()).send().await.expect_err("too large");
    assert_eq!(refused.into_service_error().code(), Some("EntityTooLarge"));
    assert_eq!(g4.get_object("0:huge").await.unwrap(), None);
    assert!(!g4.has_object("0:huge").await.unwrap());
}
