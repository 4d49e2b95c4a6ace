use bytes::Bytes;
use futures::TryStreamExt;
use kvtier_tiers::conformance::pattern;

use crate::{Config, Durability, Metrics, Objects, objects::CommitIf};

const NS: &str = "ckpt/run1";

/// 512 KiB chunks (the largest block), memory and SSD, no Blob tier.
fn config(dir: &std::path::Path) -> Config {
    let mut c = crate::config::small_for_tests(dir);
    c.blob.url = String::new();
    c
}

async fn put(m: &Objects, path: &str, data: &Bytes) -> crate::objects::ObjectInfo {
    let mut w = m.write_object(NS, path, Durability::LocalDisk).unwrap();
    // In uneven pieces, as a stream delivers them.
    for piece in data.chunks(100_000) {
        w.write(piece).await.unwrap();
    }
    w.commit().await.unwrap()
}

async fn read(m: &Objects, path: &str, offset: u64, len: u64) -> Vec<u8> {
    let info = m.stat_object(NS, path).await.unwrap().expect("the object exists");
    let ns = kvtier_tiers::Namespace::new(NS).unwrap();
    let pieces: Vec<Bytes> = m.read_object(&ns, &info, offset, len).try_collect().await.unwrap();
    pieces.concat()
}

#[tokio::test]
async fn objects_round_trip_in_chunks_with_ranges_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let m = Objects::open(&config(dir.path()), Metrics::new()).await.unwrap();
    let data = pattern(1, 1_300_000);
    let info = put(&m, "shard-0.pt", &data).await;
    assert_eq!((info.size, info.chunks()), (1_300_000, 3));
    assert_eq!(info.crc32c, kvtier_tiers::crc32c(&data));
    assert_eq!(read(&m, "shard-0.pt", 0, u64::MAX).await, data);
    // Ranges inside a chunk, across chunk boundaries, and past the end.
    assert_eq!(read(&m, "shard-0.pt", 10, 20).await, data[10..30]);
    assert_eq!(read(&m, "shard-0.pt", 500_000, 600_000).await, data[500_000..1_100_000]);
    assert_eq!(read(&m, "shard-0.pt", 1_299_990, 100).await, data[1_299_990..]);
    assert!(read(&m, "shard-0.pt", 2_000_000, 10).await.is_empty());
    put(&m, "shard-1.pt", &pattern(2, 10)).await;
    put(&m, "other/x", &pattern(3, 10)).await;
    let listed: Vec<String> = m.list_objects(NS, "shard-").await.unwrap().into_iter().map(|o| o.path).collect();
    assert_eq!(listed, ["shard-0.pt", "shard-1.pt"]);
    assert!(m.list_objects("elsewhere/ns", "").await.unwrap().is_empty(), "namespaces are separate");

    drop(m);
    let m = Objects::open(&config(dir.path()), Metrics::new()).await.unwrap();
    assert_eq!(m.stat_object(NS, "shard-0.pt").await.unwrap(), Some(info));
    assert_eq!(read(&m, "shard-0.pt", 0, u64::MAX).await, data, "the catalog is rebuilt from the manifests");
    assert_eq!(m.list_objects(NS, "").await.unwrap().len(), 3);
}

#[tokio::test]
async fn a_new_version_replaces_the_old_and_deletes_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let m = Objects::open(&config(dir.path()), Metrics::new()).await.unwrap();
    let v1 = put(&m, "model.bin", &pattern(1, 700_000)).await;
    let v2_data = pattern(2, 900_000);
    let v2 = put(&m, "model.bin", &v2_data).await;
    assert!(v1.generation < v2.generation, "{} then {}", v1.generation, v2.generation);
    assert_eq!(read(&m, "model.bin", 0, u64::MAX).await, v2_data);
    // The old generation is gone: one manifest and two chunks are left.
    assert_eq!(m.node().stats().await.index_blocks, 1 + 2);
    // A reader that resolved v1 before the replace gets an error, never v2's bytes.
    let ns = kvtier_tiers::Namespace::new(NS).unwrap();
    let err = m.read_object(&ns, &v1, 0, u64::MAX).try_collect::<Vec<_>>().await.unwrap_err().to_string();
    assert!(err.contains(&format!("chunk 0 of generation {} cannot be read", v1.generation)), "{err}");

    assert!(m.delete_object(NS, "model.bin").await.unwrap());
    assert!(!m.delete_object(NS, "model.bin").await.unwrap());
    assert_eq!(m.stat_object(NS, "model.bin").await.unwrap(), None);
    assert_eq!(m.node().stats().await.index_blocks, 0, "manifest and chunks deleted");

    // An abandoned write leaves nothing either, and changes nothing.
    let mut w = m.write_object(NS, "model.bin", Durability::LocalDisk).unwrap();
    w.write(&pattern(3, 1_200_000)).await.unwrap();
    w.abort().await;
    assert_eq!((m.stat_object(NS, "model.bin").await.unwrap(), m.node().stats().await.index_blocks), (None, 0));

    // One dropped without either (a cancelled request) deletes its chunks in the background.
    let kept = pattern(4, 600_000);
    put(&m, "kept.bin", &kept).await;
    let mut w = m.write_object(NS, "model.bin", Durability::LocalDisk).unwrap();
    w.write(&pattern(5, 1_200_000)).await.unwrap();
    assert_eq!(m.node().stats().await.index_blocks, 1 + 2 + 2, "the dropped upload's two chunks are stored");
    drop(w);
    for _ in 0..100 {
        if m.node().stats().await.index_blocks == 1 + 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(m.node().stats().await.index_blocks, 1 + 2, "the dropped upload's chunks are deleted");

    // One cut short by a crash (chunks stored, no manifest, no writer left to clean up) is
    // cleared at the next start; a committed object beside it stays whole.
    let ns = kvtier_tiers::Namespace::new(NS).unwrap();
    for i in 0..2 {
        let chunk = kvtier_tiers::Block::new(super::chunk_key(&ns, 7, i), pattern(6, 1000));
        m.node().put(chunk, Durability::LocalDisk).await.unwrap();
    }
    assert_eq!(m.node().stats().await.index_blocks, 1 + 2 + 2, "the crashed upload's two chunks are stored");
    drop(m);
    let m = Objects::open(&config(dir.path()), Metrics::new()).await.unwrap();
    assert_eq!(m.node().stats().await.index_blocks, 1 + 2, "only the committed object is left");
    assert_eq!(read(&m, "kept.bin", 0, u64::MAX).await, kept);
}

#[tokio::test]
async fn bad_paths_and_namespaces_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let m = Objects::open(&config(dir.path()), Metrics::new()).await.unwrap();
    for bad in ["", "a\0b", &"x".repeat(1025)] {
        let err = m.write_object(NS, bad, Durability::Cache).expect_err("refused").to_string();
        assert!(err.contains("object path"), "{err}");
    }
    assert!(m.write_object("", "p", Durability::Cache).is_err());
    assert!(m.stat_object("bad namespace!", "p").await.is_err());
}

/// A commit retried after its answer was lost (the primary stored the manifest, then failed)
/// answers the version that landed, and keeps its chunks: a new generation would retire them.
#[tokio::test]
async fn a_commit_retried_after_it_landed_is_the_same_version() {
    let dir = tempfile::tempdir().unwrap();
    let m = Objects::open(&config(dir.path()), Metrics::new()).await.unwrap();
    let data = pattern(4, 700_000);
    let info = put(&m, "retried", &data).await;
    let ns = kvtier_tiers::Namespace::new(NS).unwrap();
    let again = m.commit_here(&ns, info.clone(), Durability::LocalDisk, CommitIf::Any, None).await.unwrap().unwrap();
    assert_eq!(again.generation, info.generation, "the retry made a new generation");
    assert_eq!(read(&m, "retried", 0, u64::MAX).await, data, "the retry retired the chunks");
    // Conditionally too: the writer's own version is answered as committed, not refused.
    let own = m.commit_here(&ns, info.clone(), Durability::LocalDisk, CommitIf::Absent, None).await.unwrap();
    assert_eq!(own.map(|i| i.generation), Some(info.generation));
    // Another writer's conditional commit of the path is refused.
    let mut other = m.write_object(NS, "retried", Durability::LocalDisk).unwrap();
    other.write(b"second writer").await.unwrap();
    assert!(other.commit_if_absent().await.unwrap().is_none());
    assert_eq!(read(&m, "retried", 0, u64::MAX).await, data);
}

/// A joined object keeps its chunks when one of its parts comes back (the part's manifest
/// on an owner that missed its retiring, resynced back): retiring that part again, or the
/// stale generation's removal, never deletes chunks the joined object names.
#[tokio::test]
async fn a_part_that_comes_back_after_its_join_never_takes_the_joined_objects_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let m = Objects::open(&config(dir.path()), Metrics::new()).await.unwrap();
    let ns = kvtier_tiers::Namespace::new(NS).unwrap();
    let (a, b) = (pattern(5, 600_000), pattern(6, 1000));
    let mut parts = Vec::new();
    for (path, data) in [("u/x/1", &a), ("u/x/2", &b)] {
        let mut w = m.write_part(NS, path, Durability::LocalDisk).unwrap();
        w.write(data).await.unwrap();
        parts.push(w.commit().await.unwrap());
    }
    let joined = m
        .join_parts(NS, "o/joined", &parts, Durability::LocalDisk, CommitIf::Any, Default::default())
        .await
        .unwrap()
        .unwrap();
    assert!(joined.shares_chunks_with(&parts[0]) && joined.shares_chunks_with(&parts[1]));
    assert!(m.stat_object(NS, "u/x/1").await.unwrap().is_none(), "the part was retired");
    let whole = [a.as_ref(), b.as_ref()].concat();
    assert_eq!(read(&m, "o/joined", 0, u64::MAX).await, whole);
    // The part's manifest comes back, as a resynced copy would bring it.
    let json = Bytes::from(serde_json::to_vec(&parts[0]).unwrap());
    let key = super::manifest_key(&ns, "u/x/1", parts[0].generation);
    m.node().put(kvtier_tiers::Block::new(key, json), Durability::LocalDisk).await.unwrap();
    m.catalog.objects.write().insert((ns.clone(), "u/x/1".into()), parts[0].clone());
    // Retiring it again (what an abort or the stale-upload sweep does for an adopted part)
    // leaves the joined object whole.
    assert!(m.forget_object(NS, &parts[0]).await.unwrap());
    assert_eq!(read(&m, "o/joined", 0, u64::MAX).await, whole);
    // Deleting the joined object deletes the adopted chunks: nothing of it is left.
    assert!(m.delete_object(NS, "o/joined").await.unwrap());
    let ns_ = kvtier_tiers::Namespace::new(NS).unwrap();
    let chunk = joined.chunk_key(&ns_, 0);
    assert!(matches!(m.node().get(&chunk).await, crate::GetOutcome::Miss { .. }));
}

/// The node knows no objects: opened alone (`Manager::open`) on a data dir that holds some,
/// it keeps their manifests and chunks as plain blocks (a chunk no manifest names is not
/// swept: only the objects layer knows what names it), and objects opened on the same dir
/// afterwards find every object whole. A manifest put through the node's block API (as a
/// member's copy arrives) is learnt by the catalog through the node's hook.
#[tokio::test]
async fn a_node_opened_without_objects_keeps_their_blocks_as_plain_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let m = Objects::open(&config(dir.path()), Metrics::new()).await.unwrap();
    let data = pattern(1, 700_000);
    let info = put(&m, "model.bin", &data).await;
    let ns = kvtier_tiers::Namespace::new(NS).unwrap();
    let stray = kvtier_tiers::Block::new(super::chunk_key(&ns, 9, 0), pattern(2, 1000));
    m.node().put(stray.clone(), Durability::LocalDisk).await.unwrap();
    drop(m);

    let node = crate::Manager::open(&config(dir.path()), Metrics::new()).await.unwrap();
    assert_eq!(node.stats().await.index_blocks, 1 + 2 + 1, "nothing of the objects was touched");
    let manifest = super::manifest_key(&ns, "model.bin", info.generation);
    let crate::GetOutcome::Hit { block, .. } = node.get(&manifest).await else { panic!("the manifest is a block") };
    drop(node);

    let m = Objects::open(&config(dir.path()), Metrics::new()).await.unwrap();
    assert_eq!(m.stat_object(NS, "model.bin").await.unwrap(), Some(info.clone()));
    assert_eq!(read(&m, "model.bin", 0, u64::MAX).await, data);
    assert_eq!(m.node().stats().await.index_blocks, 1 + 2, "the objects layer swept the chunk no manifest names");

    // The manifest of another path, stored as a plain block: the catalog learns it.
    let mut copied: crate::objects::ObjectInfo = serde_json::from_slice(&block.data).unwrap();
    copied.path = "copy.bin".into();
    let key = super::manifest_key(&ns, "copy.bin", copied.generation);
    let bytes = bytes::Bytes::from(serde_json::to_vec(&copied).unwrap());
    m.node().put(kvtier_tiers::Block::new(key, bytes), Durability::LocalDisk).await.unwrap();
    assert_eq!(m.stat_object(NS, "copy.bin").await.unwrap(), Some(copied));
    assert_eq!(read(&m, "copy.bin", 0, u64::MAX).await, data, "it names the same chunks");
}
