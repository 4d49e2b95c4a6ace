//! Several real `kvtier serve` processes on loopback as one cluster (static membership):
//! blocks land on their owners by rendezvous placement and read from any node; a block no
//! node holds is read from Blob once, by its owner, however many nodes ask. (Write quorums:
//! write_quorum.rs.)

mod common;

use std::time::Duration;

use futures::StreamExt;

use common::{
    IDS, Node, block_owners, data, holders, key, path_owners, start_cluster, start_three_sharing_blob, wait_until,
};
use kvtier_blockmgr::{Client, Durability, GetItem, PutItem};

const KV: &str = "kv/llama";

#[tokio::test]
async fn blocks_land_on_their_owners_and_read_back_from_any_node() {
    let nodes = start_cluster(2);
    let writer = nodes[0].client().await;
    let items: Vec<PutItem> = (0..24).map(|i| PutItem::new(key(i), data(i, 100_000 + i as usize))).collect();
    for ns in ["ckpt/run1", "kv/llama"] {
        for r in writer.put(ns, &items, Durability::LocalDisk).await.unwrap() {
            assert!(r.result.is_ok(), "{ns}: {:?}", r.result);
        }
    }
    let mut elsewhere = 0;
    for item in &items {
        for (ns, r) in [("ckpt/run1", 2), ("kv/llama", 1)] {
            let want = block_owners(&IDS, ns, &item.key, r);
            let have = holders(&nodes, ns, &item.key).await;
            for owner in &want {
                assert!(have.contains(owner), "{ns}: an owner ({owner}) lacks its copy: {have:?}");
            }
            // Besides the owners, only the node written to keeps a (cache) copy.
            assert!(have.iter().all(|id| want.contains(id) || *id == "n1"), "{ns}: {have:?} vs owners {want:?}");
            elsewhere += usize::from(!want.contains(&"n1"));
        }
    }
    assert!(elsewhere > 0, "some blocks are owned by other nodes than the one written to");

    // Every block reads back byte-exact from a node that may hold none of it.
    let reader = nodes[2].client().await;
    let keys: Vec<Vec<u8>> = items.iter().map(|i| i.key.clone()).collect();
    for ns in ["ckpt/run1", "kv/llama"] {
        for (item, got) in items.iter().zip(reader.get(ns, &keys).await.unwrap()) {
            assert!(matches!(&got, GetItem::Hit { data, .. } if *data == item.data), "{ns}: {got:?}");
        }
    }
    // A delete through any node removes every copy on the owners.
    assert!(reader.delete("ckpt/run1", &keys[..1]).await.unwrap()[0]);
    let left = holders(&nodes, "ckpt/run1", &keys[0]).await;
    assert!(
        left.iter().all(|id| !block_owners(&IDS, "ckpt/run1", &keys[0], 2).contains(id)),
        "owners still hold it: {left:?}"
    );
}

/// `Has` answers for the cluster, whichever node is asked: a block the node lacks is asked
/// of its owners (the next owner when one is down), with its length; a key no owner holds is
/// absent. Asked as a member, a node answers for itself alone. (Lookup answers the asked
/// node's own prefix only: Dynamo KVBM's `has_blocks` needs this.)
#[tokio::test]
async fn has_answers_which_blocks_the_cluster_holds_from_any_node() {
    let mut nodes = start_cluster(2);
    let writer = nodes[0].client().await;
    let items: Vec<PutItem> = (0..24).map(|i| PutItem::new(key(i), data(i, 10_000 + i as usize))).collect();
    for r in writer.put("ckpt/run1", &items, Durability::LocalDisk).await.unwrap() {
        assert!(r.result.is_ok(), "{:?}", r.result);
    }
    let mut keys: Vec<Vec<u8>> = items.iter().map(|i| i.key.clone()).collect();
    keys.push(key(999)); // never written
    let lengths = |has: &[Option<kvtier_blockmgr::Presence>]| -> Vec<Option<u64>> {
        has.iter().map(|p| p.map(|p| p.length)).collect()
    };
    let mut want: Vec<Option<u64>> = items.iter().map(|i| Some(i.data.len() as u64)).collect();
    want.push(None);
    for node in &nodes {
        let has = node.client().await.has("ckpt/run1", &keys).await.unwrap();
        assert_eq!(lengths(&has), want, "through {}", node.addrs.grpc);
    }
    // n3 does not own every block: through it, the others are found on their owners, even
    // with n2 killed (what n1 and n2 own is asked of n1 once n2 does not answer).
    let owns = |id: &str, k: &[u8]| block_owners(&IDS, "ckpt/run1", k, 2).contains(&id);
    assert!(keys[..24].iter().any(|k| !owns("n3", k) && owns("n2", k)), "some blocks n3 lacks are n2's");
    nodes[1].kill9();
    let has = nodes[2].client().await.has("ckpt/run1", &keys).await.unwrap();
    assert_eq!(lengths(&has), want, "through n3 with n2 down");
    // As a member, n3 answers for itself.
    let peer = Client::connect(&nodes[2].addrs.grpc).await.unwrap().as_peer("n1").unwrap();
    let own = peer.has("ckpt/run1", &keys).await.unwrap();
    for (k, p) in keys.iter().zip(&own) {
        assert_eq!(p.is_some(), owns("n3", k) && k != &key(999), "n3's own copy of {k:?}");
    }
}

fn stream(data: &bytes::Bytes) -> impl futures::Stream<Item = bytes::Bytes> + Send + 'static {
    let parts: Vec<bytes::Bytes> =
        (0..data.len()).step_by(300_000).map(|at| data.slice(at..(at + 300_000).min(data.len()))).collect();
    futures::stream::iter(parts)
}

/// Conditional object puts over gRPC (`put_object_if`): of writers racing through every
/// member, one creates a missing path (if absent) and one replaces the version they all read
/// (if it is current); the others commit nothing, and the object is the winner's, whole. A
/// condition naming a replaced version, or any version of a missing path, commits nothing.
/// (KVBM's lock take-over over kvtier's own protocol rests on this.)
#[tokio::test]
async fn conditional_object_puts_racing_through_every_member_commit_once() {
    use kvtier_blockmgr::objects::CommitIf;
    let nodes = start_cluster(2);
    let mut clients = Vec::new();
    for node in &nodes {
        clients.push(node.client().await);
    }
    let body = |round: u8, i: usize| bytes::Bytes::from(vec![round.wrapping_mul(16) + i as u8; 1000 + i]);
    let race = |round: u8, condition: CommitIf| {
        let tries = (0..9).map(|i| {
            let client = clients[i % clients.len()].clone();
            async move {
                let put = client.put_object_if(
                    "ckpt/run1",
                    "locks/a",
                    stream(&body(round, i)),
                    Durability::LocalDisk,
                    condition,
                );
                (i, put.await.unwrap())
            }
        });
        futures::future::join_all(tries)
    };
    let winners = |outcomes: Vec<(usize, Option<kvtier_blockmgr::ObjectInfo>)>| -> Vec<usize> {
        outcomes.into_iter().filter_map(|(i, won)| won.map(|_| i)).collect()
    };
    let read =
        |c: Client| async move { c.read_object("ckpt/run1", "locks/a", kvtier_blockmgr::ObjectRange::all()).await };

    let current_of_missing = CommitIf::Current { generation: 1, crc32c: 0 };
    assert!(winners(race(0, current_of_missing).await).is_empty(), "no version to match");
    let created = winners(race(1, CommitIf::Absent).await);
    assert_eq!(created.len(), 1, "{created:?}");
    assert!(read(clients[2].clone()).await.unwrap() == body(1, created[0]));

    let info = clients[1].stat_object("ckpt/run1", "locks/a").await.unwrap().expect("the winner's");
    let seen = CommitIf::Current { generation: info.generation, crc32c: info.crc32c };
    let replaced = winners(race(2, seen).await);
    assert_eq!(replaced.len(), 1, "{replaced:?}");
    assert!(read(clients[0].clone()).await.unwrap() == body(2, replaced[0]));
    // Stale now, and the path exists: neither commits, the object stays whole.
    assert!(winners(race(3, seen).await).is_empty());
    assert!(winners(race(4, CommitIf::Absent).await).is_empty());
    assert!(read(clients[1].clone()).await.unwrap() == body(2, replaced[0]));
}

#[tokio::test]
async fn objects_written_on_one_node_are_read_listed_replaced_and_deleted_from_any_other() {
    use kvtier_blockmgr::ObjectRange;
    let mut nodes = start_cluster(2);
    let ns = "ckpt/run1";
    let shard = data(1, 3_000_000);
    let c1 = nodes[0].client().await;
    let info =
        c1.put_object(ns, "step-1/rank-0.distcp", stream(&shard), Durability::LocalDisk, None, None).await.unwrap();
    assert_eq!(info.size, 3_000_000);
    c1.put_object(ns, "step-1/.metadata", stream(&data(2, 100)), Durability::LocalDisk, None, None).await.unwrap();
    for node in &nodes[1..] {
        let c = node.client().await;
        assert_eq!(c.stat_object(ns, "step-1/rank-0.distcp").await.unwrap(), Some(info.clone()));
        assert_eq!(c.read_object(ns, "step-1/rank-0.distcp", ObjectRange::all()).await.unwrap(), shard);
        let listed: Vec<String> = c.list_objects(ns, "step-1/").await.unwrap().into_iter().map(|o| o.path).collect();
        assert_eq!(listed, ["step-1/.metadata", "step-1/rank-0.distcp"]);
    }

    // Two writers of one path on two nodes at once: the primary numbers them apart, and the
    // object is one of the two, whole.
    let (a, b) = (data(3, 1_500_000), data(4, 1_200_000));
    let (c2, c3) = (nodes[1].client().await, nodes[2].client().await);
    let (ia, ib) = tokio::join!(
        c2.put_object(ns, "step-1/rank-0.distcp", stream(&a), Durability::LocalDisk, None, None),
        c3.put_object(ns, "step-1/rank-0.distcp", stream(&b), Durability::LocalDisk, None, None),
    );
    let mut gens = [ia.unwrap().generation, ib.unwrap().generation];
    gens.sort();
    assert!(info.generation < gens[0] && gens[0] < gens[1], "numbered apart, above the first: {gens:?}");
    let now = c1.read_object(ns, "step-1/rank-0.distcp", ObjectRange::all()).await.unwrap();
    assert!(now == a || now == b, "the object is one version, whole");

    // An owner of the path's manifests dies: its other owner answers, chunks have 2 copies.
    let owners = path_owners(&IDS, ns, "step-1/rank-0.distcp");
    let victim = IDS.iter().position(|id| *id == owners[0]).unwrap();
    nodes[victim].kill9();
    let reader = nodes[(victim + 1) % 3].client().await;
    assert_eq!(reader.read_object(ns, "step-1/rank-0.distcp", ObjectRange::all()).await.unwrap(), now);
    let listed = reader.list_objects(ns, "").await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    nodes[victim].restart();

    // A delete through any node removes it for all.
    let deleter = nodes[(victim + 2) % 3].client().await;
    // Refused while the deleter still backs off from the restarted owner (2 s), then done.
    let started = std::time::Instant::now();
    let mut refused = false;
    loop {
        match deleter.delete_object(ns, "step-1/rank-0.distcp").await {
            Ok(found) => {
                assert!(found || refused, "the object was not found by the first delete");
                break;
            }
            Err(e) => {
                assert!(started.elapsed() < Duration::from_secs(20), "the delete never went through: {e}");
                refused = true;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    for node in &nodes {
        let c = node.client().await;
        assert_eq!(c.stat_object(ns, "step-1/rank-0.distcp").await.unwrap(), None);
    }
}

#[tokio::test]
async fn a_returning_node_pulls_the_writes_it_missed() {
    let mut nodes = start_cluster(1);
    nodes[1].kill9();
    let writer = nodes[0].client().await;
    let items: Vec<PutItem> = (0..30).map(|i| PutItem::new(key(i), data(i, 30_000))).collect();
    for r in writer.put("ckpt/run1", &items, Durability::LocalDisk).await.unwrap() {
        assert!(r.result.is_ok(), "W = 1: acknowledged with n2 down: {:?}", r.result);
    }
    let missed: Vec<&PutItem> =
        items.iter().filter(|i| block_owners(&IDS, "ckpt/run1", &i.key, 2).contains(&"n2")).collect();
    assert!(!missed.is_empty());

    // Back, n2 compares digests with n1 and n3 and pulls what it owns.
    nodes[1].restart();
    let started = std::time::Instant::now();
    for item in &missed {
        while !holders(&nodes, "ckpt/run1", &item.key).await.contains("n2") {
            assert!(started.elapsed().as_secs() < 15, "n2 did not get back {:?}", item.key);
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let metrics = nodes[1].http_get("/metrics");
    let pulled: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kvtier_resync_blocks_total "))
        .expect("the resync counter")
        .parse()
        .unwrap();
    assert_eq!(pulled, missed.len() as u64, "exactly the missed blocks were pulled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_no_node_holds_is_read_from_blob_once_by_its_owner() {
    let shared = tempfile::tempdir().unwrap();
    let (mut nodes, _) = start_three_sharing_blob(shared.path());
    // 12 KV blocks (one copy each), written back and flushed by their owners.
    let items: Vec<PutItem> = (0..12).map(|i| PutItem::new(key(i), data(i, 200_000))).collect();
    let writer = nodes[0].client().await;
    for r in writer.put(KV, &items, Durability::WriteBack).await.unwrap() {
        assert!(r.result.is_ok(), "{:?}", r.result);
    }
    wait_until("the flush", Duration::from_secs(30), || nodes.iter().all(|n| n.metric("unflushed_bytes") == 0));

    // Every disk wiped: the blocks are only in their owners' segments. All three nodes
    // read every block at once.
    for node in &mut nodes {
        assert!(node.terminate().success());
        std::fs::remove_dir_all(node.data_dir()).unwrap();
    }
    for node in &mut nodes {
        node.restart();
    }
    let blob_gets =
        |nodes: &[Node]| nodes.iter().map(|n| n.labelled_metric("blob_requests_total", "op=\"get\"")).sum::<u64>();
    let before = blob_gets(&nodes);
    let keys: Vec<Vec<u8>> = items.iter().map(|i| i.key.clone()).collect();
    let mut clients = Vec::new();
    for node in &nodes {
        clients.push(node.client().await);
    }
    let reads = clients.iter().map(|c| c.get(KV, &keys));
    for got in futures::future::join_all(reads).await {
        for (item, got) in items.iter().zip(got.unwrap()) {
            assert!(matches!(&got, GetItem::Hit { data, .. } if *data == item.data), "{got:?}");
        }
    }
    // Each block was read from Blob once, by its owner (the others asked it), and the
    // readers keep copies: a second round reads Blob no more.
    assert_eq!(blob_gets(&nodes) - before, 12);
    for got in clients[2].get(KV, &keys).await.unwrap() {
        assert!(matches!(got, GetItem::Hit { .. }));
    }
    assert_eq!(blob_gets(&nodes) - before, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_short_of_its_write_quorum_is_undone_and_says_it_wrote_nothing() {
    let mut nodes = start_cluster(2);
    let ns = "ckpt/run1";
    // A path whose primary is n1 (written through it) and whose second owner will be down.
    let path = (0..200)
        .map(|i| format!("step-{i}/.metadata"))
        .find(|p| path_owners(&IDS, ns, p)[0] == "n1")
        .expect("a path n1 is primary of");
    let replica = path_owners(&IDS, ns, &path)[1];
    let r = IDS.iter().position(|id| *id == replica).unwrap();
    let writer = nodes[0].client().await;
    let empty = || futures::stream::iter(Vec::<bytes::Bytes>::new());
    let first = writer.put_object(ns, &path, empty(), Durability::LocalDisk, None, None).await.unwrap();

    // The second owner is down: the manifest reaches one of the two copies the quorum needs.
    // (An empty object has no chunks: only the commit is at stake.)
    nodes[r].kill9();
    let err = writer.put_object(ns, &path, empty(), Durability::LocalDisk, None, None).await.unwrap_err();
    assert_eq!(err.outcome(), kvtier_blockmgr::Outcome::NotApplied, "{err}");
    assert!(err.to_string().contains("not committed"), "{err}");
    // Undone: the first version stands everywhere (a failed commit once stayed visible on the
    // primary, and came back with the owner that missed it).
    let alive: Vec<usize> = (0..3).filter(|&i| i != r).collect();
    for &i in &alive {
        let got = nodes[i].client().await.stat_object(ns, &path).await.unwrap();
        assert_eq!(got.map(|o| o.generation), Some(first.generation), "on {}", IDS[i]);
    }
    nodes[r].restart();
    wait_until("the returned owner's first resync", Duration::from_secs(20), || {
        nodes[r].metric("resync_runs_total") > 0
    });
    for node in &nodes {
        let got = node.client().await.stat_object(ns, &path).await.unwrap();
        assert_eq!(got.map(|o| o.generation), Some(first.generation), "after the owner's return");
    }
    // And a retry lands (once the writer's node tries the returned owner again: it skips one
    // that was unreachable for a moment).
    let started = std::time::Instant::now();
    let second = loop {
        match writer.put_object(ns, &path, empty(), Durability::LocalDisk, None, None).await {
            Ok(info) => break info,
            Err(e) if started.elapsed() < Duration::from_secs(10) => assert!(e.is_transient(), "{e}"),
            Err(e) => panic!("the retry never landed: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(second.generation > first.generation);
}

/// `kvtier cp` with a commit whose second owner is frozen (SIGSTOP: it holds the request and
/// answers nothing): the node cannot know whether that owner took the manifest, so cp says
/// the outcome is unknown (exit 3), not that nothing was written. Once the owner answers
/// again every node agrees on one version, and copying again (`--retries`) lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_an_owner_never_answered_is_unknown_and_copying_again_lands() {
    let nodes = start_cluster(2);
    let (ns, url_ns) = ("ckpt/run1", "ckpt%2Frun1");
    let path = (0..200)
        .map(|i| format!("step-{i}/.metadata"))
        .find(|p| path_owners(&IDS, ns, p)[0] == "n1")
        .expect("a path n1 is primary of");
    let r = IDS.iter().position(|id| *id == path_owners(&IDS, ns, &path)[1]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (first, empty) = (dir.path().join("first"), dir.path().join("empty"));
    std::fs::write(&first, data(7, 1000)).unwrap();
    std::fs::write(&empty, b"").unwrap(); // no chunks: only the commit is at stake
    let url = format!("kvtier://{url_ns}/{path}");
    let cp = |file: &std::path::Path, extra: &[&str]| {
        let mut args = vec!["cp", "--server", &nodes[0].addrs.grpc];
        args.extend_from_slice(extra);
        args.extend([file.to_str().unwrap(), url.as_str()]);
        let out = std::process::Command::new(common::BIN).args(&args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = cp(&first, &[]);
    assert_eq!(code, Some(0), "{err}");
    let before = nodes[0].client().await.stat_object(ns, &path).await.unwrap().expect("the first version");

    nodes[r].signal(libc::SIGSTOP);
    let (code, err) = cp(&empty, &["--retries", "0"]);
    nodes[r].signal(libc::SIGCONT);
    assert_eq!(code, Some(3), "an unanswered commit is not a definite failure: {err}");
    assert!(err.contains("outcome is unknown"), "{err}");

    // Whatever the frozen owner did with the manifest, the nodes come to agree on one version:
    // the first, or the empty one (never a version one node serves and another does not).
    let started = std::time::Instant::now();
    let agreed = loop {
        let mut seen = Vec::new();
        for node in &nodes {
            let got = node.client().await.stat_object(ns, &path).await;
            seen.push(got.ok().flatten().map(|o| (o.generation, o.size)));
        }
        if seen.iter().all(|s| *s == seen[0]) {
            break seen[0];
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the nodes never agreed: {seen:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (generation, size) = agreed.expect("the path has a version");
    assert!(
        (generation, size) == (before.generation, 1000) || (generation > before.generation && size == 0),
        "agreed on {generation}/{size}; the first version was {}/1000",
        before.generation
    );

    // Copying again is safe and lands (the node skips an owner it found unreachable for a
    // moment, hence the retries).
    let (code, err) = cp(&empty, &["--retries", "8"]);
    assert_eq!(code, Some(0), "{err}");
    for node in &nodes {
        let got = node.client().await.stat_object(ns, &path).await.unwrap().expect("the copied version");
        assert_eq!(got.size, 0, "on {}", node.addrs.grpc);
        assert!(got.generation > before.generation, "on {}", node.addrs.grpc);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_of_an_upload_that_never_committed_are_swept_and_committed_ones_never() {
    let shared = tempfile::tempdir().unwrap();
    let (mut nodes, _) = common::start_three_sharing_blob_on(shared.path(), |dir, tables| {
        let tables =
            tables.replacen("peer_timeout", "orphan_after = \"3s\"\nresync_interval = \"1s\"\npeer_timeout", 1);
        common::small_config(dir, "", &tables)
    });
    let ns = "ckpt/run1";
    let unflushed = |nodes: &[Node]| nodes.iter().map(|n| n.metric("unflushed_bytes")).sum::<u64>();
    // Exports cannot land (a file where the objects' directory would go): a committed
    // write-back object's chunks stay pinned, named by its manifest, past orphan_after.
    std::fs::write(shared.path().join("objects"), b"not a directory").unwrap();
    let kept = data(1, 2 << 20);
    let client = nodes[1].client().await;
    client
        .put_object(ns, "kept.bin", futures::stream::iter([kept.clone()]), Durability::WriteBack, None, None)
        .await
        .unwrap();

    // An upload through n1 stalls before its commit, and n1 dies: its chunks on the other
    // nodes (write-back, so pinned) are named by no manifest, and never will be.
    let before = unflushed(&nodes);
    let writer = nodes[0].client().await;
    let stalled = futures::stream::iter((0..6).map(|i| data(10 + i, 1 << 20))).chain(futures::stream::pending());
    let upload =
        tokio::spawn(
            async move { writer.put_object(ns, "lost.bin", stalled, Durability::WriteBack, None, None).await },
        );
    wait_until("the stalled upload's chunks", Duration::from_secs(20), || unflushed(&nodes[1..]) >= before + (2 << 20));
    nodes[0].kill9();
    assert!(upload.await.unwrap().is_err());
    nodes[0].restart();

    // Once every member answers and they have waited past orphan_after, each node removes
    // its own orphaned copies (they once stayed pinned for ever); the kept object's stay.
    let removed = |nodes: &[Node]| nodes.iter().map(|n| n.metric("orphan_chunks_removed_total")).sum::<u64>();
    // (Two rounds at least two peer timeouts apart must find a chunk unnamed: 6 s here.)
    wait_until("the orphans swept", Duration::from_secs(60), || removed(&nodes) > 0 && unflushed(&nodes) <= before);
    // Four more rounds (a sweep follows each resync) on every node: the kept chunks stay.
    let rounds: Vec<u64> = nodes.iter().map(|n| n.metric("resync_runs_total")).collect();
    wait_until("four more rounds everywhere", Duration::from_secs(60), || {
        nodes.iter().zip(&rounds).all(|(n, r)| n.metric("resync_runs_total") >= r + 4)
    });
    assert_eq!(unflushed(&nodes), before, "only the committed object waits");
    std::fs::remove_file(shared.path().join("objects")).unwrap();
    wait_until("the export", Duration::from_secs(60), || unflushed(&nodes) == 0);
    for node in &nodes {
        let got = node.client().await.read_object(ns, "kept.bin", kvtier_blockmgr::ObjectRange::all()).await.unwrap();
        assert!(got == kept, "the committed object reads back whole");
    }
}
