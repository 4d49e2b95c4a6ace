//! kvtier's native G4 client (`KvtierObjectBlockClient`) as KVBM's workers would use it,
//! against the members of a kvtier cluster: the same KV layout round trip as KVBM's S3
//! client (tests/common/mod.rs), over shared memory where the member's socket is given and
//! gRPC otherwise; ranks kept apart by their key prefixes; bad input refused clearly.
//!
//! Run by scripts/dynamo.sh (`native`) with `KVTIER_GRPC_ENDPOINTS` (comma-separated
//! members), `KVTIER_SHM_SOCKETS` (the same members' shared-memory sockets) and
//! `KVTIER_MAX_BLOCK_SIZE` (their `max_block_size`).

mod common;

use std::sync::Arc;

use kvbm_engine::{
    LogicalLayoutHandle, SequenceHash,
    object::{KeyFormatter, ObjectBlockOps, RankPrefixedKeyFormatter},
};
use kvtier_dynamo::{Durability, KvtierConfig, KvtierLockManager, KvtierObjectBlockClient};

const NAMESPACE: &str = "kv/kvbm";

fn list(var: &str) -> Vec<String> {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set")).split(',').map(str::to_string).collect()
}

/// A native client of member `i`, over its shared-memory socket if `shm`, keys prefixed
/// with `rank` as a worker's are.
async fn native(i: usize, shm: bool, rank: usize) -> Arc<KvtierObjectBlockClient> {
    let config = KvtierConfig {
        server: list("KVTIER_GRPC_ENDPOINTS")[i].clone(),
        shm_socket: shm.then(|| list("KVTIER_SHM_SOCKETS")[i].clone().into()),
        namespace: NAMESPACE.into(),
        durability: Durability::WriteBack,
    };
    let keys: Arc<dyn KeyFormatter> = Arc::new(RankPrefixedKeyFormatter::new(rank));
    Arc::new(KvtierObjectBlockClient::with_key_formatter(config, keys).await.expect("a native G4 client"))
}

/// Written over shared memory, read through every member (over shared memory on some, gRPC
/// on the others: a member's shared memory serves what that member holds, gRPC the rest).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kv_layouts_round_trip_over_shared_memory_and_grpc_through_every_member() {
    let members = list("KVTIER_GRPC_ENDPOINTS").len();
    let writer: Arc<dyn ObjectBlockOps> = native(0, true, 0).await;
    let mut readers: Vec<Arc<dyn ObjectBlockOps>> = Vec::new();
    for i in 0..members {
        readers.push(native(i, i % 2 == 0, 0).await);
    }
    common::kv_layouts_round_trip_through_every_member(writer, readers, 0x4a71_0001).await;
}

/// The same over gRPC alone (an engine on another host than the node).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kv_layouts_round_trip_over_grpc_alone() {
    let members = list("KVTIER_GRPC_ENDPOINTS").len();
    let writer: Arc<dyn ObjectBlockOps> = native(members - 1, false, 1).await;
    let mut readers: Vec<Arc<dyn ObjectBlockOps>> = Vec::new();
    for i in 0..members {
        readers.push(native(i, false, 1).await);
    }
    common::kv_layouts_round_trip_through_every_member(writer, readers, 0x4a71_0002).await;
}

/// `KvtierLockManager`s through every member (racer `r` through member `r`), in `namespace`,
/// and who holds a lock (its object read through the last member).
async fn native_locks(namespace: &'static str) -> (common::Locks, common::Holder) {
    let mut clients = Vec::new();
    for server in list("KVTIER_GRPC_ENDPOINTS") {
        clients.push(kvtier_client::Client::connect(&server).await.expect("a member"));
    }
    let reader = clients[clients.len() - 1].clone();
    let locks: common::Locks = Arc::new(move |r, id, timeout| {
        Arc::new(KvtierLockManager::new(clients[r % clients.len()].clone(), namespace, id).with_timeout(timeout))
    });
    let holder: common::Holder = Arc::new(move |hash| {
        let reader = reader.clone();
        Box::pin(async move {
            let path = format!("{hash}.lock");
            let bytes = match reader.read_object(namespace, &path, kvtier_client::ObjectRange::all()).await {
                Ok(bytes) => bytes,
                Err(kvtier_client::ClientError::Status(s)) if s.code() == tonic::Code::NotFound => return None,
                Err(e) => panic!("reading a lock: {e}"),
            };
            let lock: kvbm_engine::object::LockFileContent = serde_json::from_slice(&bytes).expect("a whole lock file");
            Some(lock.instance_id)
        })
    });
    (locks, holder)
}

/// The lock races KVBM's S3 lock manager passes (the same body), over kvtier's conditional
/// object commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lock_races_through_every_member_have_one_winner_per_hash() {
    let (locks, holder) = native_locks("kv/kvbm-locks").await;
    common::lock_races_have_one_winner_per_hash(locks, holder, 0x4a71_0005).await;
}

/// Lock puts racing deletes (the same body): a lock released between the read and the
/// take-over is taken again if absent, so no attempt fails here.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lock_puts_racing_deletes_leave_only_whole_locks() {
    let (locks, holder) = native_locks("kv/kvbm-lock-churn").await;
    let none = |_: &str| false;
    common::lock_puts_racing_deletes_leave_only_whole_locks(locks, holder, SequenceHash::root(0x4a71_0006), none).await;
}

/// A worker's keys carry its rank, as with KVBM's S3 client: another rank's client does not
/// see them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ranks_are_kept_apart_by_their_key_prefixes() {
    use kvbm_physical::{
        testing::{create_fc_layout, create_test_agent_with_backends},
        transfer::{FillPattern, StorageKind},
    };
    let agent = create_test_agent_with_backends("kvtier-ranks", &["POSIX"]).expect("a NIXL agent");
    let layout = create_fc_layout(agent, StorageKind::System, 2);
    kvbm_physical::testing::TransferChecksums::fill_and_capture(&layout, &[0, 1], FillPattern::Sequential).unwrap();
    let hashes = common::chain(2, 0x4a71_0003);
    let rank3 = native(0, true, 3).await;
    assert!(rank3.put_blocks_with_layout(hashes.clone(), layout, vec![0, 1]).await.iter().all(Result::is_ok));
    let seen = |found: Vec<(SequenceHash, Option<usize>)>| found.iter().filter(|(_, s)| s.is_some()).count();
    assert_eq!(seen(native(1, false, 3).await.has_blocks(hashes.clone()).await), 2);
    assert_eq!(seen(native(1, false, 4).await.has_blocks(hashes).await), 0, "rank 4 sees none of rank 3's");
}

/// What a G4 client can get wrong is refused clearly, storing nothing: a namespace kvtier
/// refuses, blocks over the node's `max_block_size`, a logical layout handle (a worker
/// resolves it first), a node that is not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_refused_clearly_and_stores_nothing() {
    use kvbm_physical::{
        testing::{create_fc_layout, create_fc_layout_with_config, create_test_agent_with_backends, custom_config},
        transfer::StorageKind,
    };
    let server = list("KVTIER_GRPC_ENDPOINTS")[0].clone();
    let shm_socket = Some(list("KVTIER_SHM_SOCKETS")[0].clone().into());
    let bad = KvtierConfig { server, shm_socket, namespace: "has space".into(), durability: Durability::WriteBack };
    let refused = KvtierObjectBlockClient::connect(bad.clone()).await.err().expect("a namespace kvtier refuses");
    assert!(format!("{refused:#}").contains("not allowed"), "{refused:#}");
    // Over gRPC the namespace is checked at each request: every block fails, none is stored.
    let grpc_only = KvtierObjectBlockClient::connect(KvtierConfig { shm_socket: None, ..bad }).await.unwrap();
    let agent = create_test_agent_with_backends("kvtier-bad", &["POSIX"]).expect("a NIXL agent");
    let layout = create_fc_layout(agent, StorageKind::System, 2);
    let hashes = common::chain(2, 0x4a71_0004);
    let put = grpc_only.put_blocks_with_layout(hashes.clone(), layout, vec![0, 1]).await;
    assert!(put.iter().all(Result::is_err), "{put:?}");
    assert!(native(0, false, 0).await.has_blocks(hashes.clone()).await.iter().all(|(_, s)| s.is_none()));
    // Blocks larger than the members' max_block_size: each refused, none stored (over shared
    // memory first, then gRPC, which names the limit in the client's log).
    let limit: usize = std::env::var("KVTIER_MAX_BLOCK_SIZE").expect("KVTIER_MAX_BLOCK_SIZE").parse().unwrap();
    let agent = create_test_agent_with_backends("kvtier-huge", &["POSIX"]).expect("a NIXL agent");
    // 32 layers x K,V x 16 tokens x hidden x 2 bytes: the smallest such block over the limit.
    let hidden = limit / (32 * 2 * 16 * 2) * 2;
    let huge = create_fc_layout_with_config(agent, StorageKind::System, custom_config(2, 32, 2, 16, hidden, 2));
    let huge_hashes = common::chain(2, 0x4a71_0007);
    let put = native(0, true, 0).await.put_blocks_with_layout(huge_hashes.clone(), huge, vec![0, 1]).await;
    assert!(put.iter().all(Result::is_err), "{put:?}");
    assert!(native(1, false, 0).await.has_blocks(huge_hashes).await.iter().all(|(_, s)| s.is_none()));
    // A logical handle: refused per block, as KVBM's S3 client does.
    let client = native(0, false, 0).await;
    let handle = LogicalLayoutHandle::G2;
    assert!(client.put_blocks(hashes.clone(), handle, vec![0, 1]).await.iter().all(Result::is_err));
    assert!(client.get_blocks(hashes, handle, vec![0, 1]).await.iter().all(Result::is_err));
    // A node that is not there: the connect says so.
    let gone = KvtierConfig {
        server: "127.0.0.1:1".into(),
        shm_socket: None,
        namespace: NAMESPACE.into(),
        durability: Durability::WriteBack,
    };
    let refused = KvtierObjectBlockClient::connect(gone).await.err().expect("no node there");
    assert!(format!("{refused:#}").contains("127.0.0.1:1"), "{refused:#}");
}
