//! Named objects written back to Blob under their own names, through real `kvtier serve`
//! processes, against a local directory and a real Azurite: the file is the object's bytes
//! where other tools look for it, its chunks never go into segments (each byte once), a
//! node with a wiped disk reads the object back from the file, and a delete removes it.
//! Across three nodes the parts are staged by the nodes that hold them (fan-in) and
//! committed once.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Node, blob::Backend, data, start_three_sharing_blob, start_three_sharing_blob_on, wait_until};
use kvtier_blockmgr::{Durability, ObjectRange};
use kvtier_tiers::{Namespace, ObjectBlobs, Retries, Tier};

use common::export::{
    NS, PATH, file_in_blob, node_behind_proxy, object_id, owners_and_a_second_path, pieces,
    wipe_and_restore_everywhere, write_back_on,
};

async fn a_write_back_object_lands_in_blob_under_its_name_and_serves_a_wiped_node(backend: Backend) {
    let mut node = Node::start_with("", &backend.toml(""));
    let client = node.unix_client().await;
    // 13 chunks of 1 MiB (the test's largest block): parts of 5 chunks (S3's 5 MiB minimum).
    let object = data(7, (12 << 20) + 12_345);
    let size = object.len() as u64;
    client.put_object(NS, PATH, pieces(&object), Durability::WriteBack, Some(size), None).await.unwrap();
    wait_until("the export", Duration::from_secs(30), || node.metric("objects_exported_total") == 1);
    wait_until("the manifest's flush", Duration::from_secs(30), || node.metric("unflushed_bytes") == 0);

    let objects_url = format!("{}/objects", backend.url);
    let file = file_in_blob(&objects_url, &backend.options(), size).await.expect("the object's file");
    assert!(file == object, "the file holds the object's bytes");
    if let common::blob::Store::Dir(dir) = &backend.store {
        let plain = dir.path().join("bucket/kv/objects/acme%2Fckpt").join(PATH);
        assert_eq!(std::fs::metadata(&plain).unwrap().len(), size, "a plain file at {}", plain.display());
    }
    assert_eq!(node.metric("object_parts_staged_total"), 3);
    assert_eq!(node.metric("object_export_bytes_total"), size);
    // Each byte once: the segments hold the manifest, not the chunks.
    let segments = backend.view().await.blocks().await.unwrap();
    assert_eq!(segments.len(), 1, "only the manifest went into a segment: {segments:?}");

    // A restart brings the SSD's write-back mark back on the chunks: they are released
    // again (Blob has them), not left pinned against blob.max_unflushed.
    assert!(node.terminate().success());
    node.restart();
    wait_until("the chunks released", Duration::from_secs(10), || node.metric("unflushed_bytes") == 0);

    // A node with an empty disk learns of the object from the manifest's segment and
    // reads its chunks back from the file (checked against the manifest's CRCs).
    let status = node.terminate();
    assert!(status.success(), "{status}: {}", node.stderr());
    std::fs::remove_dir_all(node.data_dir()).unwrap();
    node.restart();
    let client = node.unix_client().await;
    assert!(client.read_object(NS, PATH, ObjectRange::all()).await.unwrap() == object);
    assert_eq!(node.metric("object_blob_reads_total"), 13);
    let range = client.read_object(NS, PATH, ObjectRange::bytes(5 << 20, 100)).await.unwrap();
    assert_eq!(range, object.slice((5 << 20)..(5 << 20) + 100));

    // A delete removes the file too.
    assert!(client.delete_object(NS, PATH).await.unwrap());
    assert_eq!(file_in_blob(&objects_url, &backend.options(), 1).await, None);
}

async fn an_object_replaced_in_blob_is_never_read_for_the_old_version(backend: Backend) {
    // A version is exported; the file is then overwritten by other bytes (another writer, a
    // restore gone wrong). A node without the chunks refuses the file's bytes.
    let mut node = Node::start_with("", &backend.toml(""));
    let client = node.unix_client().await;
    let object = data(8, 3 << 20);
    let info = client.put_object(NS, PATH, pieces(&object), Durability::WriteBack, None, None).await.unwrap();
    wait_until("the manifest's flush", Duration::from_secs(30), || {
        node.metric("objects_exported_total") == 1 && node.metric("unflushed_bytes") == 0
    });
    let objects_url = format!("{}/objects", backend.url);
    let blobs = ObjectBlobs::open(&objects_url, &backend.options(), Retries::default()).unwrap();
    let name = blobs.name(&Namespace::new(NS).unwrap(), PATH);
    blobs.put(&name, data(9, 3 << 20)).await.unwrap();
    assert!(node.terminate().success());
    std::fs::remove_dir_all(node.data_dir()).unwrap();
    node.restart();
    let client = node.unix_client().await;
    let err = client.read_object(NS, PATH, ObjectRange::all()).await.unwrap_err();
    let said = format!("chunk 0 of generation {} cannot be read", info.generation);
    assert!(err.to_string().contains(&said), "{err}");
}

async fn objects_written_while_blob_is_down_and_ssd_is_pressed_all_land_in_blob(mut backend: Backend) {
    // SSD past its demotion mark from the first object on: the flusher looks for blocks to
    // copy to Blob ahead of eviction, and write-back manifests are among them. Their file
    // is what makes them durable, so they must wait for their export, never go into a
    // segment first (which left the export nothing to do: the object never reached Blob).
    let mut node = Node::start_with(
        "",
        &backend.toml("demote_above = 0.05\nflush_linger = \"1ms\"\nretry_timeout = \"1s\"\nretries = 1"),
    );
    let client = node.unix_client().await;
    backend.stop();
    let objects: Vec<(String, Bytes)> =
        (0..8).map(|i| (format!("run1/step-{i}/rank-0.distcp"), data(100 + i, 1_100_000))).collect();
    for (path, object) in &objects {
        client.put_object(NS, path, pieces(object), Durability::WriteBack, None, None).await.unwrap();
    }
    wait_until("an export failing while Blob is down", Duration::from_secs(60), || {
        node.labelled_metric("object_export_failures_total", "reason=\"blob\"") > 0
    });
    backend.resume();
    wait_until("every export", Duration::from_secs(60), || node.metric("objects_exported_total") == 8);
    wait_until("nothing unflushed", Duration::from_secs(60), || node.metric("unflushed_bytes") == 0);
    let blobs = ObjectBlobs::open(&format!("{}/objects", backend.url), &backend.options(), Retries::default()).unwrap();
    for (path, object) in &objects {
        let name = blobs.name(&Namespace::new(NS).unwrap(), path);
        let file = blobs.read(&name, 0..object.len() as u64).await.unwrap();
        assert!(file.as_ref() == Some(object), "{path}: not in Blob ({:?} bytes)", file.map(|f| f.len()));
    }
    assert!(node.terminate().success());
}

common::blob::on_both_backends!(
    a_write_back_object_lands_in_blob_under_its_name_and_serves_a_wiped_node,
    an_object_replaced_in_blob_is_never_read_for_the_old_version,
    objects_written_while_blob_is_down_and_ssd_is_pressed_all_land_in_blob,
);

#[tokio::test]
async fn three_nodes_stage_the_parts_they_hold_and_commit_the_file_once() {
    let shared = tempfile::tempdir().unwrap();
    let (nodes, objects_url) = start_three_sharing_blob(shared.path());
    // 20 chunks of 1 MiB, each on 2 of the 3 nodes: 4 parts of 5 chunks. (Every chunk
    // waits unflushed until the commit's export: an object's share per node must fit in
    // blob.max_unflushed of its SSD, here 24 of 32 MiB.)
    let object = data(10, 20 << 20);
    write_back_on(&nodes, &object).await;
    let exported = || nodes.iter().map(|n| n.metric("objects_exported_total")).sum::<u64>();
    let file = file_in_blob(&objects_url, &[], object.len() as u64).await.expect("the object's file");
    assert!(file == object, "the file holds the object's bytes");

    // Fan-in: each part was staged once, by the node holding its chunks (the primary of its
    // first chunk), not relayed by the path's primary. (Which nodes those are follows from
    // the version's random id: all four on one node is a placement like any other.)
    let id = object_id(&nodes).await;
    let mut expected = [0u64; 3];
    for part in 0..4u32 {
        let mut first = b"c/".to_vec();
        first.extend_from_slice(&id.to_be_bytes());
        first.extend_from_slice(&(part * 5).to_be_bytes());
        let stager = common::block_owners(&["n1", "n2", "n3"], NS, &first, 2)[0];
        expected[["n1", "n2", "n3"].iter().position(|n| *n == stager).unwrap()] += 1;
    }
    let staged: Vec<u64> = nodes.iter().map(|n| n.metric("object_parts_staged_total")).collect();
    assert_eq!(staged, expected, "parts staged per node vs the primaries of their first chunks");
    assert_eq!(exported(), 1, "committed once");
    let exported_bytes: u64 = nodes.iter().map(|n| n.metric("object_export_bytes_total")).sum();
    assert_eq!(exported_bytes, object.len() as u64);

    // Deleted from any node: the file goes too.
    assert!(nodes[2].client().await.delete_object(NS, PATH).await.unwrap());
    assert_eq!(file_in_blob(&objects_url, &[], 1).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_restoring_one_checkpoint_read_each_chunk_from_blob_once() {
    let shared = tempfile::tempdir().unwrap();
    let (mut nodes, _) = start_three_sharing_blob(shared.path());
    let object = data(11, 10 << 20);
    write_back_on(&nodes, &object).await;

    // Every disk wiped: the object is only in Blob (its file, and its manifest in the
    // primary's segments). All three nodes restore it at once.
    let clients = wipe_and_restore_everywhere(&mut nodes, &object).await;
    // Each chunk came from Blob once, read by its primary; the other readers got it from
    // the primary, and keep a copy of their own.
    let reads: Vec<u64> = nodes.iter().map(|n| n.metric("object_blob_reads_total")).collect();
    assert_eq!(reads.iter().sum::<u64>(), 10, "{reads:?}");
    let again = clients[1].read_object(NS, PATH, ObjectRange::all()).await.unwrap();
    assert!(again == object);
    assert_eq!(nodes.iter().map(|n| n.metric("object_blob_reads_total")).sum::<u64>(), 10, "read from copies after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_of_the_default_16_mib_travel_between_members_in_pieces() {
    // The default block and message sizes (objects in 16 MiB chunks, gRPC messages of at most
    // 16 MiB) on smaller tiers: a chunk read back from Blob by its primary reaches the other
    // readers through `Peer/FetchChunk`, which once answered it in one message too large to
    // be read.
    let shared = tempfile::tempdir().unwrap();
    let small_tiers = "[cpu]\ncapacity = \"256MiB\"\n[ssd]\ncapacity = \"512MiB\"\n";
    let (mut nodes, _) = start_three_sharing_blob_on(shared.path(), |dir, tables| {
        common::default_config(dir, &format!("{small_tiers}{tables}"))
    });
    let object = data(12, 40_000_000);
    write_back_on(&nodes, &object).await;
    wipe_and_restore_everywhere(&mut nodes, &object).await;
    let reads: u64 = nodes.iter().map(|n| n.metric("object_blob_reads_total")).sum();
    assert_eq!(reads, 3, "3 chunks, each read from Blob once");
}

/// The manifests (delete markers included) in node `id`'s own segments under `shared`.
async fn manifests_in_segments(shared: &std::path::Path, id: &str) -> usize {
    let url = format!("file://{}/nodes/{id}", shared.display());
    let segments = kvtier_tiers::BlobTierBuilder::new(&url).open().await.unwrap();
    segments.blocks().await.unwrap().iter().filter(|b| b.key.key.as_bytes().starts_with(b"m/")).count()
}

/// With the primary down for good and the second owner's disk wiped: the second owner knows
/// `deleted` is deleted, and it and the other node read `object` at PATH.
async fn wiped_second_owner_serves_alone(
    nodes: &mut [Node],
    (primary, second, other): (usize, usize, usize),
    deleted: &str,
    object: &Bytes,
) {
    nodes[primary].kill9();
    assert!(nodes[second].terminate().success());
    std::fs::remove_dir_all(nodes[second].data_dir()).unwrap();
    nodes[second].restart();

    let marker = common::manifest_on(&nodes[second], NS, deleted).await;
    assert!(marker.as_ref().is_some_and(|m| m["deleted"] == true), "the second owner knows the delete: {marker:?}");
    for node in [second, other] {
        let client = nodes[node].client().await;
        let read = client.read_object(NS, PATH, ObjectRange::all()).await;
        assert!(read.as_ref().is_ok_and(|r| r == object), "node {node}: {:?}", read.map(|r| r.len()));
        assert_eq!(client.stat_object(NS, deleted).await.unwrap(), None, "node {node}");
    }
}

/// Every owner of a path keeps its manifests in its own segments, delete markers included,
/// not only the primary (whose flush the others once took as theirs: their copies became
/// evictable and went with an eviction or a wiped disk). So with the primary down and the
/// second owner's disk wiped, the second owner still serves the object written back and
/// knows the deleted one is deleted. (The 1000-fault run found the gap: once no owner knew
/// a delete, a stale copy of the old version brought a deleted file back on every node.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_owner_keeps_the_manifests_and_delete_markers_in_its_own_segments() {
    let shared = tempfile::tempdir().unwrap();
    let (mut nodes, _) = start_three_sharing_blob(shared.path());
    let (owners, deleted) = owners_and_a_second_path();

    let object = data(50, 300_000);
    write_back_on(&nodes, &object).await;
    let client = nodes[0].client().await;
    client.put_object(NS, &deleted, pieces(&data(51, 1000)), Durability::WriteBack, None, None).await.unwrap();
    assert!(client.delete_object(NS, &deleted).await.unwrap());
    wait_until("every copy flushed", Duration::from_secs(30), || {
        nodes.iter().all(|n| n.metric("unflushed_bytes") == 0)
    });
    wiped_second_owner_serves_alone(&mut nodes, owners, &deleted, &object).await;
}

/// The same for the copies an owner pulls when it comes back (it was down while the
/// object was written and the other deleted, each acknowledged by the primary alone): they
/// go into its own segments too, not only into its evictable cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_back_from_an_absence_keeps_what_it_pulled_in_its_own_segments() {
    let shared = tempfile::tempdir().unwrap();
    let (mut nodes, _) = start_three_sharing_blob_on(shared.path(), |dir, tables| {
        let tables = tables.replacen("peer_timeout", "resync_interval = \"1s\"\npeer_timeout", 1);
        common::small_config(dir, "", &format!("{tables}\n[namespaces.\"acme/*\"]\nreplicas = 2\nwrite_quorum = 1\n"))
    });
    let (owners, deleted) = owners_and_a_second_path();
    let (primary, second, _) = owners;
    nodes[second].kill9();

    let object = data(52, 300_000);
    let client = nodes[primary].client().await;
    client.put_object(NS, PATH, pieces(&object), Durability::WriteBack, None, None).await.unwrap();
    client.put_object(NS, &deleted, pieces(&data(53, 1000)), Durability::WriteBack, None, None).await.unwrap();
    assert!(client.delete_object(NS, &deleted).await.unwrap());

    // Back, it pulls both versions (the exports wait to hear from it, so whether its copies
    // are still write-back ones is a race: either way they reach its segments).
    nodes[second].restart();
    let id = ["n1", "n2", "n3"][second];
    let started = std::time::Instant::now();
    while manifests_in_segments(shared.path(), id).await < 2 || nodes.iter().any(|n| n.metric("unflushed_bytes") > 0) {
        assert!(started.elapsed() < Duration::from_secs(30), "the pulled manifests never reached {id}'s segments");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wiped_second_owner_serves_alone(&mut nodes, owners, &deleted, &object).await;
}

/// A node that starts with a wiped disk while Blob is down learns its objects once Blob
/// answers, without another restart. The catalog was rebuilt only from what the index held
/// at start, so a version kept only in the node's own segments (a delete marker, its SSD copy
/// evicted) stayed unknown, and a stale copy handed to the node meanwhile took its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_while_blob_is_down_learns_its_objects_when_blob_answers() {
    let mut backend = Backend::azurite();
    let mut node = Node::start_with("", &backend.toml(""));
    let object = data(60, 300_000);
    write_back_then_wipe(&mut node, &object).await;
    backend.stop();
    node.restart();
    let client = node.unix_client().await;
    assert_eq!(client.stat_object(NS, PATH).await.unwrap(), None, "with Blob down the node knows nothing yet");
    backend.resume();
    learned_within_a_minute(&client, &object).await;
}

/// Writes `object` at PATH write-back through `node` (a node alone), waits until it is
/// exported and its manifest flushed, then stops the node and wipes its disk.
async fn write_back_then_wipe(node: &mut Node, object: &Bytes) {
    let client = node.client().await;
    client.put_object(NS, PATH, pieces(object), Durability::WriteBack, None, None).await.unwrap();
    wait_until("the export and the manifest's flush", Duration::from_secs(30), || {
        node.metric("objects_exported_total") == 1 && node.metric("unflushed_bytes") == 0
    });
    assert!(node.terminate().success());
    std::fs::remove_dir_all(node.data_dir()).unwrap();
}

/// Waits until `client`'s node knows PATH (a minute at most), then reads it back as `object`.
async fn learned_within_a_minute(client: &kvtier_blockmgr::Client, object: &Bytes) {
    let started = std::time::Instant::now();
    while client.stat_object(NS, PATH).await.unwrap().is_none() {
        assert!(started.elapsed() < Duration::from_secs(60), "the node never learned the object");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(client.read_object(NS, PATH, ObjectRange::all()).await.unwrap() == *object);
}

/// A manifest that cannot be read when a node rebuilds its catalog (Blob refuses its
/// segment for a while) is learned once it can be: the catalog once skipped it until the
/// next start, which lost a delete marker kept only in the node's segments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_unreadable_at_start_is_learned_once_blob_serves_it() {
    let (_azurite, proxy, mut node, _) = node_behind_proxy("unread", "");
    let object = data(61, 200_000);
    // Wiped, the node finds the manifest only in its segments, which Blob now refuses to read.
    write_back_then_wipe(&mut node, &object).await;
    proxy.fail_matching(503, Some("GET"), "/seg/");
    node.restart();
    let client = node.client().await;
    assert_eq!(client.stat_object(NS, PATH).await.unwrap(), None, "the manifest cannot be read yet");
    proxy.clear();
    learned_within_a_minute(&client, &object).await;
}
