//! Deletes of objects under faults, through real `kvtier serve` processes (static
//! membership, `ckpt/*` keeping 2 copies): a delete short of its quorum leaves the object
//! whole, and a delete that cannot hear from an owner that may hold the object says so
//! instead of answering "there was nothing to delete".

mod common;

use std::time::Duration;

use common::{Node, data, path_owners, start_static_cluster};
use kvtier_blockmgr::{Durability, ObjectRange};

const IDS: [&str; 3] = ["n1", "n2", "n3"];
const NS: &str = "ckpt/run1";

fn start_cluster(write_quorum: usize) -> Vec<Node> {
    start_static_cluster(&IDS, |_| {
        format!("peer_timeout = \"3s\"\n\n[namespaces.\"ckpt/*\"]\nreplicas = 2\nwrite_quorum = {write_quorum}\n")
    })
}

/// A path whose manifests' primary is `primary`, and the index of its second owner.
fn path_with_primary(primary: &str) -> (String, usize) {
    let path = (0..200)
        .map(|i| format!("step-{i}/rank-0.distcp"))
        .find(|p| path_owners(&IDS, NS, p)[0] == primary)
        .expect("a path with that primary");
    let second = IDS.iter().position(|id| *id == path_owners(&IDS, NS, &path)[1]).unwrap();
    (path, second)
}

fn pieces(data: &bytes::Bytes) -> impl futures::Stream<Item = bytes::Bytes> + Send + 'static {
    futures::stream::iter([data.clone()])
}

/// Deletes `path` through the first node, retrying while the answer is a transient failure
/// (an owner just back may be skipped for a moment); then no node stats it.
async fn delete_until_done_then_gone_everywhere(nodes: &[Node], path: &str) {
    let started = std::time::Instant::now();
    loop {
        match nodes[0].client().await.delete_object(NS, path).await {
            Ok(deleted) => break assert!(deleted),
            Err(e) if started.elapsed() < Duration::from_secs(20) => assert!(e.is_transient(), "{e}"),
            Err(e) => panic!("the delete never went through: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for node in nodes {
        let got = node.client().await.stat_object(NS, path).await.unwrap();
        assert!(got.is_none(), "on {}: {got:?}", node.addrs.grpc);
    }
}

/// The second owner is down, so a delete stores its marker on the primary only and is
/// undone. The primary must still hold the object's manifest: it once dropped it on taking
/// the marker, kept the version only in memory, and lost it at its next restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_short_of_its_quorum_leaves_the_object_whole_on_its_primary() {
    let mut nodes = start_cluster(2);
    let (path, second) = path_with_primary("n1");
    let object = data(1, 300_000);
    let client = nodes[0].client().await;
    client.put_object(NS, &path, pieces(&object), Durability::LocalDisk, None, None).await.unwrap();

    nodes[second].kill9();
    let err = client.delete_object(NS, &path).await.unwrap_err();
    assert_eq!(err.outcome(), kvtier_blockmgr::Outcome::NotApplied, "{err}");

    // The primary restarted (its catalog rebuilt from what it holds), the second owner
    // still down: the object is whole.
    nodes[0].kill9();
    nodes[0].restart();
    let client = nodes[0].client().await;
    let info = client.stat_object(NS, &path).await.unwrap().expect("the object stands");
    assert_eq!(info.size, object.len() as u64);
    assert!(client.read_object(NS, &path, ObjectRange::all()).await.unwrap() == object);

    // With both owners back, a delete goes through and holds everywhere.
    nodes[second].restart();
    delete_until_done_then_gone_everywhere(&nodes, &path).await;
}

/// The only owner holding an object is frozen while a delete reaches the primary, which
/// never learned the object: the delete must fail as retryable, not answer "nothing to
/// delete" and leave the object to come back.
///
/// The primary is dead (not frozen) while the object is written and comes back only once the
/// holder is frozen: a frozen primary's kernel still takes the holder's copy into its socket
/// buffer and serves it on waking, and a live holder hands the object to a primary that
/// returns; either way the primary learned the object and the delete rightly went through
/// (CI at 7ebcd04).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_that_cannot_hear_an_owner_holding_the_object_fails_rather_than_does_nothing() {
    let mut nodes = start_cluster(1);
    let (path, second) = path_with_primary("n1");
    let object = data(2, 50_000);
    // Written while the primary is down: only the second owner holds it.
    nodes[0].kill9();
    let writer = nodes[second].client().await;
    writer.put_object(NS, &path, pieces(&object), Durability::LocalDisk, None, None).await.unwrap();

    // Now the second owner is frozen, the primary back, and the delete goes to the primary.
    nodes[second].signal(libc::SIGSTOP);
    nodes[0].restart();
    let result = nodes[0].client().await.delete_object(NS, &path).await;
    nodes[second].signal(libc::SIGCONT);
    let err = result.expect_err("a delete that could not ask the owner holding the object");
    assert!(err.is_transient(), "retryable: {err}");

    // The object stands; deleted once both owners answer, it is gone from every node.
    let got = nodes[0].client().await.read_object(NS, &path, ObjectRange::all()).await;
    assert!(got.unwrap() == object);
    delete_until_done_then_gone_everywhere(&nodes, &path).await;
}

/// A delete's marker a member hands to an owner that lacks it (what a handoff or a resync
/// push does for an owner that was away) is kept there, and with the primary killed the
/// object stays deleted through every node. The handle a node serves members' requests with
/// has no cluster (it must not forward them), and the copy was judged by it as on a node
/// alone: settled at once and past its time, dropped on arrival; the owner then knew the
/// version before it as current, and a deleted file came back (the 1000-fault run at
/// 00e44dc, round 5: one file on every node, its marker on none; thousands of "dropping a
/// delete marker past its time" minutes after the deletes, 24 hours before their time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletes_marker_handed_to_an_owner_that_lacked_it_is_kept_and_the_object_stays_deleted() {
    use sha2::Digest;
    let mut nodes = start_cluster(2);
    let (path, second) = path_with_primary("n1");
    let object = data(3, 40_000);
    let client = nodes[0].client().await;
    client.put_object(NS, &path, pieces(&object), Durability::LocalDisk, None, None).await.unwrap();
    assert!(client.delete_object(NS, &path).await.unwrap());
    let marker = common::manifest_on(&nodes[0], NS, &path).await.expect("the primary's marker");
    assert_eq!(marker["deleted"], true);
    let generation = marker["generation"].as_u64().unwrap().to_be_bytes();
    let key = [b"m/".as_slice(), &sha2::Sha256::digest(path.as_bytes())[..24], &generation].concat();

    // The second owner without the marker (as one that was away when it was committed), then
    // handed it by a member, as a handoff does.
    let as_member = |node: &Node| {
        let addr = node.addrs.grpc.clone();
        async move { kvtier_blockmgr::Client::connect(&addr).await.unwrap().as_peer("n1").unwrap() }
    };
    let block = match as_member(&nodes[0]).await.get(NS, std::slice::from_ref(&key)).await.unwrap().pop() {
        Some(kvtier_blockmgr::GetItem::Hit { data, .. }) => data,
        other => panic!("the primary's marker block: {other:?}"),
    };
    let owner = as_member(&nodes[second]).await;
    assert!(owner.delete(NS, std::slice::from_ref(&key)).await.unwrap()[0]);
    let items = [kvtier_blockmgr::PutItem::new(key.clone(), block)];
    assert!(owner.put(NS, &items, Durability::LocalDisk).await.unwrap()[0].result.is_ok());

    let kept = common::manifest_on(&nodes[second], NS, &path).await.expect("the second owner keeps a version");
    assert_eq!(kept["deleted"], true, "the second owner's own catalog: {kept}");
    nodes[0].kill9();
    for node in &nodes[1..] {
        let got = node.client().await.stat_object(NS, &path).await;
        assert!(matches!(got, Ok(None)), "through {}: {got:?}", node.addrs.grpc);
    }
}
