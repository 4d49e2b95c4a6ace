//! Deletes across a cluster on a real etcd: an object deleted while an owner was out stays
//! deleted when it returns, and delete markers reach their owners' own segments (handed
//! over, or through resync from a former owner).

mod common;

use std::time::{Duration, Instant};

use common::{
    IDS, Node, data,
    etcd::{TTL_S, start_nodes, wait_for_members},
    free_port, path_owners, wait_until,
};
use kvtier_blockmgr::Durability;
use kvtier_testkit::{Etcd, Hosts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_deleted_while_an_owner_was_out_stays_deleted_when_it_returns() {
    let etcd = Etcd::start();
    let shared = tempfile::tempdir().unwrap();
    let objects = format!("file://{}/objects", shared.path().display());
    let nodes = start_nodes(&etcd, |_| format!("[blob]\nobjects_url = \"{objects}\"\nflush_linger = \"10ms\"\n"));
    for node in &nodes {
        wait_for_members(node, 3, Duration::from_secs(10));
    }
    // A file n3 keeps the manifest of, written back and exported: every copy released.
    let ns = "ckpt/run1";
    let path =
        (0..200).map(|i| format!("step-{i}/rank-0.distcp")).find(|p| path_owners(&IDS, ns, p).contains(&"n3")).unwrap();
    let writer = nodes[0].client().await;
    let body = data(7, 1_500_000);
    let put = |body: bytes::Bytes| {
        let writer = writer.clone();
        let path = path.clone();
        async move { writer.put_object(ns, &path, futures::stream::iter([body]), Durability::WriteBack, None, None).await }
    };
    put(body.clone()).await.unwrap();
    let blobs = kvtier_tiers::ObjectBlobs::open(&objects, &[], kvtier_tiers::Retries::default()).unwrap();
    let file = blobs.name(&kvtier_tiers::Namespace::new(ns).unwrap(), &path);
    let in_blob = async || blobs.size(&file).await.unwrap().is_some();
    let started = Instant::now();
    while !in_blob().await {
        assert!(started.elapsed() < Duration::from_secs(20), "the file never reached Blob");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_until("every copy released", Duration::from_secs(20), || {
        nodes.iter().all(|n| n.metric("unflushed_bytes") == 0)
    });

    // n3 stops past its lease: the two others own the path now, and the delete lands on them.
    nodes[2].signal(libc::SIGSTOP);
    wait_for_members(&nodes[0], 2, Duration::from_secs(4 * TTL_S));
    wait_for_members(&nodes[1], 2, Duration::from_secs(4 * TTL_S));
    assert!(writer.delete_object(ns, &path).await.unwrap());
    let started = Instant::now();
    while in_blob().await {
        assert!(started.elapsed() < Duration::from_secs(20), "the delete never reached Blob");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // n3 comes back holding the old manifest and chunks. Without a trace of the delete, its
    // copy spread again through resync and handoff: the object was listed, stat'ed and
    // exported again (for ever, its chunks being gone elsewhere), its copies pinned.
    nodes[2].signal(libc::SIGCONT);
    for node in &nodes {
        wait_for_members(node, 3, Duration::from_secs(4 * TTL_S));
    }
    let started = Instant::now();
    while common::manifest_on(&nodes[2], ns, &path).await.is_none_or(|m| m["deleted"] != true) {
        assert!(started.elapsed() < Duration::from_secs(20), "n3 never learned of the delete");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (i, node) in nodes.iter().enumerate() {
        let client = node.client().await;
        assert_eq!(client.stat_object(ns, &path).await.unwrap(), None, "n{} stats it", i + 1);
        let listed = client.list_objects(ns, "").await.unwrap();
        assert!(listed.iter().all(|o| o.path != path), "n{} lists it", i + 1);
        assert!(client.read_object(ns, &path, kvtier_blockmgr::ObjectRange::all()).await.is_err());
    }
    wait_until("nothing pinned, no export waiting", Duration::from_secs(20), || {
        nodes.iter().all(|n| n.metric("unflushed_bytes") == 0 && n.metric("exports_queued") == 0)
    });
    assert!(!in_blob().await, "the deleted file came back to Blob");

    // The path takes a new version, which every node reads and Blob gets.
    let again = data(8, 700_000);
    let info = put(again.clone()).await.unwrap();
    for node in &nodes {
        let got = node.client().await.read_object(ns, &path, kvtier_blockmgr::ObjectRange::all()).await.unwrap();
        assert!(got == again);
    }
    let started = Instant::now();
    while blobs.size(&file).await.unwrap() != Some(info.size) {
        assert!(started.elapsed() < Duration::from_secs(20), "the new version never reached Blob");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A delete marker handed to an owner when the member list changes goes into that owner's
/// own segments, not only its evictable cache: each owner's copies once lasted only until
/// an eviction or a wiped disk, and once no owner knew a delete, a stale copy of the old
/// version brought the deleted file back (the 1000-fault run). Here the owner handed the
/// marker is then the only member left, with its disk wiped: it still knows the delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_handed_a_delete_marker_keeps_it_in_its_own_segments() {
    let etcd = Etcd::start();
    let shared = tempfile::tempdir().unwrap();
    let segments = |id: &str| format!("file://{}/nodes/{id}", shared.path().display());
    let objects = format!("file://{}/objects", shared.path().display());
    let mut nodes = start_nodes(&etcd, |id| {
        format!("[blob]\nurl = \"{}\"\nobjects_url = \"{objects}\"\nflush_linger = \"10ms\"\n", segments(id))
    });
    for node in &nodes {
        wait_for_members(node, 3, Duration::from_secs(10));
    }
    // A path n1 and n2 own; with n2 out, n1 and n3 do.
    let ns = "ckpt/run1";
    let owned_by = |p: &str| {
        let owners = path_owners(&IDS, ns, p);
        owners.contains(&"n1") && owners.contains(&"n2")
    };
    let path = (0..200).map(|i| format!("step-{i}/rank-0.distcp")).find(|p| owned_by(p)).unwrap();

    nodes[1].signal(libc::SIGSTOP);
    wait_for_members(&nodes[0], 2, Duration::from_secs(4 * TTL_S));
    wait_for_members(&nodes[2], 2, Duration::from_secs(4 * TTL_S));
    let writer = nodes[0].client().await;
    let body = futures::stream::iter([data(9, 200_000)]);
    writer.put_object(ns, &path, body, Durability::WriteBack, None, None).await.unwrap();
    assert!(writer.delete_object(ns, &path).await.unwrap());
    wait_until("the marker flushed", Duration::from_secs(20), || {
        [&nodes[0], &nodes[2]].iter().all(|n| n.metric("unflushed_bytes") == 0)
    });

    // n2 back: an owner again, handed the marker (flushed: a plain copy).
    nodes[1].signal(libc::SIGCONT);
    for node in &nodes {
        wait_for_members(node, 3, Duration::from_secs(4 * TTL_S));
    }
    use kvtier_tiers::Tier as _;
    let view = kvtier_tiers::BlobTierBuilder::new(segments("n2"));
    let started = Instant::now();
    loop {
        let blocks = view.clone().open().await.unwrap().blocks().await.unwrap();
        if blocks.iter().any(|b| b.key.key.as_bytes().starts_with(b"m/")) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the marker never reached n2's segments");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // n1 and n3 gone, n2's disk wiped: n2 alone knows the delete from its segments.
    nodes[0].kill9();
    nodes[2].kill9();
    assert!(nodes[1].terminate().success());
    std::fs::remove_dir_all(nodes[1].data_dir()).unwrap();
    nodes[1].restart();
    wait_for_members(&nodes[1], 1, Duration::from_secs(4 * TTL_S));
    let marker = common::manifest_on_as(&nodes[1], "n2", ns, &path).await;
    assert!(marker.as_ref().is_some_and(|m| m["deleted"] == true), "n2 knows the delete: {marker:?}");
    assert_eq!(nodes[1].client().await.stat_object(ns, &path).await.unwrap(), None);
}

/// A delete marker that only former owners of its path keep, in their segments, reaches the
/// owners through resync: a former owner that restarted after the member list moved on hands
/// nothing off (its first view is the new one), and resync listed only what a member keeps on
/// disk. Four nodes: the path's owners A and B hold its version while the delete goes to C and
/// D; D is gone, C comes back with a wiped disk (the marker only in its segments): without the
/// marker, A and B kept serving the deleted file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_marker_only_a_former_owner_keeps_reaches_the_owners_through_resync() {
    const IDS4: [&str; 4] = ["n1", "n2", "n3", "n4"];
    let etcd = Etcd::start();
    let shared = tempfile::tempdir().unwrap();
    let objects = format!("file://{}/objects", shared.path().display());
    let mut nodes: Vec<Node> = IDS4
        .iter()
        .map(|id| {
            let tables = format!(
                "[cluster]\nnode_id = \"{id}\"\netcd = [\"{}\"]\netcd_prefix = \"/test\"\nlease_ttl = \"{TTL_S}s\"\n\
                 peer_timeout = \"3s\"\nresync_interval = \"1s\"\n\n[namespaces.\"ckpt/*\"]\nreplicas = 2\n\n\
                 [blob]\nurl = \"file://{}/nodes/{id}\"\nobjects_url = \"{objects}\"\nflush_linger = \"10ms\"\n",
                etcd.endpoint,
                shared.path().display()
            );
            Node::start_on_host(&Hosts::loopback(), 0, free_port(), &tables)
        })
        .collect();
    for node in &nodes {
        wait_for_members(node, 4, Duration::from_secs(10));
    }
    let (ns, path) = ("ckpt/run1", "step-7/rank-0.distcp");
    let owners = path_owners(&IDS4, ns, path);
    let at = |id: &str| IDS4.iter().position(|i| *i == id).unwrap();
    let (a, b) = (at(owners[0]), at(owners[1]));
    let (c, d) = {
        let rest: Vec<usize> = (0..4).filter(|i| *i != a && *i != b).collect();
        (rest[0], rest[1])
    };
    // A node back from SIGSTOP refuses peer requests until it is a member again: not yet.
    let manifest_on =
        async |nodes: &[Node], i: usize| match common::try_manifest_on_as(&nodes[i], IDS4[i], ns, path).await {
            Ok(m) => m,
            Err(e) if e.code() == tonic::Code::PermissionDenied => None,
            Err(e) => panic!("{e}"),
        };

    // A and B away: the version is written to C and D, then handed to A and B when they return.
    let stop_owners = |nodes: &[Node], signal| {
        nodes[a].signal(signal);
        nodes[b].signal(signal);
    };
    stop_owners(&nodes, libc::SIGSTOP);
    wait_for_members(&nodes[c], 2, Duration::from_secs(4 * TTL_S));
    let writer = nodes[c].client().await;
    writer
        .put_object(ns, path, futures::stream::iter([data(12, 100_000)]), Durability::WriteBack, None, None)
        .await
        .unwrap();
    stop_owners(&nodes, libc::SIGCONT);
    let started = Instant::now();
    while manifest_on(&nodes, a).await.is_none() || manifest_on(&nodes, b).await.is_none() {
        assert!(started.elapsed() < Duration::from_secs(30), "the owners never got the version");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A and B away again: the delete goes to C and D, which keep the marker in their segments.
    stop_owners(&nodes, libc::SIGSTOP);
    wait_for_members(&nodes[c], 2, Duration::from_secs(4 * TTL_S));
    assert!(nodes[c].client().await.delete_object(ns, path).await.unwrap());
    wait_until("the marker in C's and D's segments", Duration::from_secs(20), || {
        nodes[c].metric("unflushed_bytes") == 0 && nodes[d].metric("unflushed_bytes") == 0
    });

    // D gone for good, C's disk wiped; A and B back, then C (its first view the last one).
    nodes[d].kill9();
    nodes[c].kill9();
    std::fs::remove_dir_all(nodes[c].data_dir()).unwrap();
    stop_owners(&nodes, libc::SIGCONT);
    wait_for_members(&nodes[a], 2, Duration::from_secs(4 * TTL_S));
    nodes[c].restart();
    wait_for_members(&nodes[a], 3, Duration::from_secs(4 * TTL_S));
    let started = Instant::now();
    let knows_delete = async |i: usize| manifest_on(&nodes, i).await.is_some_and(|m| m["deleted"] == true);
    while !(knows_delete(a).await && knows_delete(b).await) {
        assert!(started.elapsed() < Duration::from_secs(30), "the owners never heard of the delete");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(nodes[a].client().await.stat_object(ns, path).await.unwrap(), None);
}
