//! The real `kvtier` binary: round trips, kill -9 recovery, corruption, demotion,
//! graceful shutdown, metrics and the CLI.

mod common;

use std::sync::Arc;

use common::{MIB, Node, data, key};
use kvtier_blockmgr::{Durability, GetItem, MissReason, PutItem};
use kvtier_client::RemoteTier;
use kvtier_tiers::{Tier, TierKind, conformance};

const NS: &str = "acme/llama3-8b/bf16-16tok";

fn items(range: std::ops::Range<u64>, len: usize) -> Vec<PutItem> {
    range.map(|i| PutItem::new(key(i), data(i, len))).collect()
}

fn assert_hits(got: &[GetItem], range: std::ops::Range<u64>, len: usize) {
    assert_eq!(got.len(), range.clone().count());
    for (item, i) in got.iter().zip(range) {
        match item {
            GetItem::Hit { data: d, .. } => assert!(*d == data(i, len), "block {i} differs"),
            GetItem::Miss { reason, message } => panic!("block {i} missing ({reason:?}): {message}"),
        }
    }
}

#[test_log::test(tokio::test(flavor = "multi_thread", worker_threads = 2))]
async fn round_trips_over_tcp_and_unix_socket() {
    let node = Node::start();
    let (tcp, unix) = (node.client().await, node.unix_client().await);
    // A batch of 200 small blocks in one stream, and 1 MiB blocks split into 64 KiB chunks.
    let small = items(0..200, 3000);
    assert!(tcp.put(NS, &small, Durability::Cache).await.unwrap().iter().all(|r| r.result.is_ok() && !r.existed));
    let big = items(1000..1004, MIB as usize);
    let chunked = unix.clone().with_chunk_size(64 << 10);
    assert!(chunked.put(NS, &big, Durability::Cache).await.unwrap().iter().all(|r| r.result.is_ok()));

    let keys: Vec<Vec<u8>> = (0..200).map(key).collect();
    assert_hits(&unix.get(NS, &keys).await.unwrap(), 0..200, 3000);
    assert_hits(&tcp.get(NS, &(1000..1004).map(key).collect::<Vec<_>>()).await.unwrap(), 1000..1004, MIB as usize);

    let again = tcp.put(NS, &small[..3], Durability::Cache).await.unwrap();
    assert!(again.iter().all(|r| r.existed), "a second put of a key is a no-op");

    let mut probe: Vec<Vec<u8>> = (0..5).map(key).collect();
    probe.insert(3, b"absent".to_vec());
    assert_eq!(tcp.lookup(NS, &probe).await.unwrap(), vec![TierKind::Cpu; 3]);
    assert_eq!(tcp.delete(NS, &[key(1), b"absent".to_vec()]).await.unwrap(), [true, false]);
    let got = tcp.get(NS, &[key(0), key(1)]).await.unwrap();
    assert!(matches!(got[1], GetItem::Miss { reason: MissReason::NotFound, .. }));
    assert_eq!(tcp.lookup(NS, &probe).await.unwrap().len(), 1);
    assert!(
        tcp.get("other/ns", &[key(0)]).await.unwrap().iter().all(|g| matches!(g, GetItem::Miss { .. })),
        "namespaces are separate"
    );
}

/// A delete that arrives past the deadline its sender gave it deletes nothing (a member's
/// undo of a commit, delayed while this node was stopped, must not land after the version
/// settled); one in time deletes.
#[test_log::test(tokio::test(flavor = "multi_thread", worker_threads = 2))]
async fn a_delete_past_its_deadline_deletes_nothing() {
    let node = Node::start();
    let client = node.client().await;
    client.put(NS, &items(0..2, 100), Durability::Cache).await.unwrap();
    let past = std::time::SystemTime::now() - std::time::Duration::from_secs(1);
    let refused = client.delete_by(NS, &[key(0)], Some(past)).await.unwrap_err();
    assert!(refused.to_string().contains("past its deadline"), "{refused}");
    assert_hits(&client.get(NS, &[key(0)]).await.unwrap(), 0..1, 100);
    let soon = std::time::SystemTime::now() + std::time::Duration::from_secs(30);
    assert_eq!(client.delete_by(NS, &[key(0)], Some(soon)).await.unwrap(), [true]);
    assert!(matches!(client.get(NS, &[key(0)]).await.unwrap()[0], GetItem::Miss { .. }));
}

#[test_log::test(tokio::test(flavor = "multi_thread", worker_threads = 2))]
async fn kill_9_loses_no_block_acknowledged_on_ssd() {
    let mut node = Node::start();
    let client = node.client().await;
    // Disk-durable puts, and cache puts that overflow memory onto SSD.
    client
        .put(NS, &items(0..20, 500_000), Durability::LocalDisk)
        .await
        .unwrap()
        .iter()
        .for_each(|r| r.result.clone().unwrap());
    client
        .put(NS, &items(100..150, 400_000), Durability::Cache)
        .await
        .unwrap()
        .iter()
        .for_each(|r| r.result.clone().unwrap());
    let all: Vec<u64> = (0..20).chain(100..150).collect();
    let tiers = client.lookup(NS, &all.iter().map(|&i| key(i)).collect::<Vec<_>>()).await.unwrap();
    assert_eq!(tiers.len(), all.len());
    // What the server acknowledged as being on SSD right now must survive.
    let stats = client.stats().await.unwrap();
    assert!(stats.tiers[1].blocks > 20, "memory overflowed onto SSD: {stats:?}");
    let mut on_ssd: Vec<u64> = (0..20).collect();
    for &i in &all[20..] {
        if client.lookup(NS, &[key(i)]).await.unwrap() == [TierKind::Ssd] {
            on_ssd.push(i);
        }
    }
    drop(client);
    node.kill9();
    node.restart();

    let client = node.client().await;
    for i in on_ssd {
        let len = if i < 20 { 500_000 } else { 400_000 };
        assert_hits(&client.get(NS, &[key(i)]).await.unwrap(), i..i + 1, len);
    }
    assert!(node.stderr().contains("index rebuilt"), "{}", node.stderr());
}

#[test_log::test(tokio::test(flavor = "multi_thread", worker_threads = 2))]
async fn flipped_bytes_in_the_slot_file_read_as_a_miss_never_wrong_data() {
    let mut node = Node::start();
    let client = node.client().await;
    client.put(NS, &items(0..4, 300_000), Durability::LocalDisk).await.unwrap();
    drop(client);
    node.kill9();
    // Damage block 2's bytes on disk.
    let path = node.data_dir().join("ssd").join(kvtier_tiers::SLOT_FILE);
    let mut file = std::fs::read(&path).unwrap();
    let needle = &data(2, 300_000)[5000..5064];
    let at = file.windows(needle.len()).position(|w| w == needle).expect("block bytes on disk");
    file[at + 10] ^= 0x40;
    std::fs::write(&path, &file).unwrap();
    node.restart();

    let client = node.client().await;
    let got = client.get(NS, &[key(0), key(2), key(3)]).await.unwrap();
    assert!(matches!(&got[1], GetItem::Miss { reason: MissReason::ChecksumMismatch, .. }), "{:?}", got[1]);
    assert_hits(&got[..1], 0..1, 300_000);
    assert_hits(&got[2..], 3..4, 300_000);
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.checksum_failures, 1);
    assert!(node.stderr().contains("checksum mismatch"), "a log line names the failure");
    assert!(node.http_get("/metrics").contains("kvtier_checksum_failures_total{tier=\"ssd\"} 1"));
    // Still serving: the block can be written again and read back.
    client.put(NS, &items(2..3, 300_000), Durability::Cache).await.unwrap();
    assert_hits(&client.get(NS, &[key(2)]).await.unwrap(), 2..3, 300_000);
}

#[test_log::test(tokio::test(flavor = "multi_thread", worker_threads = 2))]
async fn exceeding_memory_demotes_to_ssd_and_stays_within_capacity() {
    let node = Node::start();
    let client = node.client().await;
    // 24 MiB of 512 KiB blocks through 8 MiB of memory, in batches.
    for batch in 0..6u64 {
        let r = client.put(NS, &items(batch * 8..batch * 8 + 8, 512 << 10), Durability::Cache).await.unwrap();
        assert!(r.iter().all(|r| r.result.is_ok()));
        for t in client.stats().await.unwrap().tiers {
            assert!(t.used_bytes <= t.capacity_bytes, "{t:?}");
        }
    }
    let stats = client.stats().await.unwrap();
    assert!(stats.tiers[0].used_bytes <= 8 * MIB && stats.tiers[1].blocks > 0, "{stats:?}");
    assert_eq!(stats.dropped, 0);
    let keys: Vec<Vec<u8>> = (0..48).map(key).collect();
    let tiers = client.lookup(NS, &keys).await.unwrap();
    assert_eq!(tiers.len(), 48);
    assert!(tiers.contains(&TierKind::Ssd) && tiers.contains(&TierKind::Cpu), "{tiers:?}");
    // A lookup that pins says what each block would cost to load: SSD more than memory.
    let looked = client.lookup_pinned(NS, &keys, std::time::Duration::from_secs(5)).await.unwrap();
    assert_eq!((looked.tiers.len(), looked.load_us.len(), looked.pinned), (48, 48, true), "{looked:?}");
    let cost = |tier| looked.tiers.iter().zip(&looked.load_us).filter(|(t, _)| **t == tier).map(|(_, us)| *us).max();
    let cheapest_ssd =
        looked.tiers.iter().zip(&looked.load_us).filter(|(t, _)| **t == TierKind::Ssd).map(|(_, us)| *us).min();
    assert!(cost(TierKind::Cpu) < cheapest_ssd, "{looked:?}");
    let shm_looked = node.shm(&[NS]).lookup_pinned(NS, &[key(0).as_slice()], std::time::Duration::ZERO).unwrap();
    assert_eq!(
        (shm_looked.tiers.len(), shm_looked.pinned),
        (1, false),
        "the shm plane answers the same: {shm_looked:?}"
    );
    assert_hits(&client.get(NS, &keys).await.unwrap(), 0..48, 512 << 10);
    let metrics = node.http_get("/metrics");
    for needle in [
        "kvtier_demotions_total{from=\"cpu\",to=\"ssd\"}",
        "kvtier_get_hits_total{tier=\"ssd\"}",
        "kvtier_tier_used_bytes{tier=\"cpu\"}",
        "kvtier_request_duration_seconds_bucket{op=\"put\"",
    ] {
        assert!(metrics.contains(needle), "/metrics lacks {needle}");
    }
    assert_eq!(node.http_get("/healthz"), "ok\n");
}

#[test_log::test(tokio::test(flavor = "multi_thread", worker_threads = 2))]
async fn sigterm_persists_memory_and_exits_cleanly() {
    let mut node = Node::start();
    let client = node.client().await;
    client.put(NS, &items(0..6, 200_000), Durability::Cache).await.unwrap();
    assert_eq!(client.lookup(NS, &(0..6).map(key).collect::<Vec<_>>()).await.unwrap(), vec![TierKind::Cpu; 6]);
    drop(client);
    let status = node.terminate();
    assert!(status.success(), "{status}: {}", node.stderr());
    assert!(node.stderr().contains("memory persisted"));
    node.restart();
    let client = node.client().await;
    assert_hits(&client.get(NS, &(0..6).map(key).collect::<Vec<_>>()).await.unwrap(), 0..6, 200_000);
}

#[test_log::test(tokio::test(flavor = "multi_thread", worker_threads = 2))]
async fn the_server_passes_the_tier_conformance_suite() {
    let node = Node::start();
    let addr = node.addrs.grpc.clone();
    let subject = conformance::Subject::new(move || {
        let addr = addr.clone();
        Box::pin(async move {
            let tier = RemoteTier::connect(&addr, MIB)
                .await
                .map_err(|e| kvtier_tiers::Error::Generic { tier: "remote".into(), source: Box::new(e) })?;
            Ok(Arc::new(tier) as Arc<dyn Tier>)
        })
    })
    .max_block(MIB)
    // A node makes room by demoting and evicting, so it never answers NoSpace.
    .bounded(false);
    conformance::run_all(&subject).await;
}

#[test]
fn a_sigterm_right_after_the_ready_line_is_a_clean_shutdown() {
    // The signal handlers are installed before the ready line is printed: a supervisor
    // that stops a node the moment it is up gets a clean exit, not a kill.
    for _ in 0..10 {
        let mut node = Node::start();
        let status = node.terminate();
        assert!(status.success(), "{status}: {}", node.stderr());
    }
}
