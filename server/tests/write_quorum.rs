//! Write quorums across real `kvtier serve` processes (static membership): a put needs its
//! write quorum, is acknowledged at it (not when the slowest owner answers), and an owner's
//! `kill -9` loses no acknowledged read.

mod common;

use std::time::Duration;

use common::{IDS, block_owners, data, holders, key, start_cluster, start_static_cluster};
use kvtier_blockmgr::{Durability, GetItem, PutItem};
use tonic::Code;

#[tokio::test]
async fn a_put_needs_its_write_quorum_and_an_owners_kill_9_loses_no_read() {
    let mut nodes = start_cluster(2);
    let writer = nodes[0].client().await;
    let before: Vec<PutItem> = (0..16).map(|i| PutItem::new(key(i), data(i, 50_000))).collect();
    for r in writer.put("ckpt/run1", &before, Durability::LocalDisk).await.unwrap() {
        assert!(r.result.is_ok(), "{:?}", r.result);
    }

    nodes[1].kill9();
    // Acknowledged blocks read from the surviving owner.
    let reader = nodes[2].client().await;
    let keys: Vec<Vec<u8>> = before.iter().map(|i| i.key.clone()).collect();
    for (item, got) in before.iter().zip(reader.get("ckpt/run1", &keys).await.unwrap()) {
        assert!(matches!(&got, GetItem::Hit { data, .. } if *data == item.data), "{got:?}");
    }
    // W = R = 2: a block one of whose owners is n2 is refused, naming the quorum and n2.
    let after: Vec<PutItem> = (100..116).map(|i| PutItem::new(key(i), data(i, 50_000))).collect();
    let reports = writer.put("ckpt/run1", &after, Durability::LocalDisk).await.unwrap();
    let mut refused = 0;
    for (item, r) in after.iter().zip(&reports) {
        let needs_n2 = block_owners(&IDS, "ckpt/run1", &item.key, 2).contains(&"n2");
        match &r.result {
            Ok(()) => assert!(!needs_n2, "a block owned by the dead n2 was acknowledged"),
            Err((code, message)) => {
                assert!(needs_n2, "{message}");
                assert_eq!(*code, Code::Unavailable, "{message}");
                assert!(
                    message.contains("of the 2 nodes the write quorum needs") && message.contains("n2"),
                    "{message}"
                );
                refused += 1;
            }
        }
    }
    assert!(refused > 0);

    // Back on the same address, n2 takes copies again once the writer's down back-off
    // (2 s) has passed: puts are refused until then, none after.
    nodes[1].restart();
    let started = std::time::Instant::now();
    loop {
        let reports = writer.put("ckpt/run1", &after, Durability::LocalDisk).await.unwrap();
        if reports.iter().all(|r| r.result.is_ok()) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "n2 never took copies again: {reports:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for item in &after {
        let have = holders(&nodes, "ckpt/run1", &item.key).await;
        assert!(block_owners(&IDS, "ckpt/run1", &item.key, 2).iter().all(|o| have.contains(o)), "{have:?}");
    }
}

#[tokio::test]
async fn a_write_quorum_of_one_acknowledges_with_an_owner_down() {
    let mut nodes = start_cluster(1);
    nodes[2].kill9();
    let writer = nodes[0].client().await;
    let items: Vec<PutItem> = (0..16).map(|i| PutItem::new(key(i), data(i, 20_000))).collect();
    for r in writer.put("ckpt/run1", &items, Durability::LocalDisk).await.unwrap() {
        assert!(r.result.is_ok(), "{:?}", r.result);
    }
}

/// `write_quorum < replicas`: a put is acknowledged once the quorum holds it, not once every
/// owner answered. One owner frozen (SIGSTOP: connections accepted, nothing answered) with a
/// peer timeout of five minutes: puts still complete (waiting for it would take the timeout),
/// and the frozen owner gets its copies once it runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_owner_does_not_hold_up_puts_the_quorum_acknowledged() {
    let nodes = start_static_cluster(&IDS, |_| {
        "peer_timeout = \"300s\"\n\n[namespaces.\"ckpt/*\"]\nreplicas = 3\nwrite_quorum = 2\n".to_string()
    });
    let writer = nodes[0].client().await;
    let warm: Vec<PutItem> = (0..4).map(|i| PutItem::new(key(i), data(i, 10_000))).collect();
    for r in writer.put("ckpt/run1", &warm, Durability::LocalDisk).await.unwrap() {
        assert!(r.result.is_ok(), "{:?}", r.result);
    }

    nodes[2].signal(libc::SIGSTOP);
    let items: Vec<PutItem> = (10..26).map(|i| PutItem::new(key(i), data(i, 50_000))).collect();
    // Far below the peer timeout: a put that waited for n3 would not finish in it.
    let put = tokio::time::timeout(Duration::from_secs(60), writer.put("ckpt/run1", &items, Durability::LocalDisk));
    let reports = put.await;
    nodes[2].signal(libc::SIGCONT);
    let reports = reports.expect("puts waited for the frozen owner past the write quorum").unwrap();
    for r in &reports {
        assert!(r.result.is_ok(), "{:?}", r.result);
    }
    // n1 and n2 had them when the puts were acknowledged; n3 gets its copies once it runs.
    for item in &items {
        let have = holders(&nodes, "ckpt/run1", &item.key).await;
        assert!(have.contains("n1") && have.contains("n2"), "{have:?}");
    }
    let started = std::time::Instant::now();
    for item in &items {
        while !holders(&nodes, "ckpt/run1", &item.key).await.contains("n3") {
            assert!(started.elapsed() < Duration::from_secs(30), "n3 never got its copy of {:?}", item.key);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A delete through the node that acknowledged a put at its write quorum waits for that
/// put's copies still on their way: one landing after the delete would bring the block back
/// on its owner (and resync would spread it again). The third owner is frozen while the
/// blocks are put and deleted, so its copies and the deletes wait in its socket together;
/// once it runs, every delete answers and no node holds any of the blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_after_a_quorum_put_waits_for_its_copies_so_none_lands_after_it() {
    let nodes = start_static_cluster(&IDS, |_| {
        "peer_timeout = \"300s\"\n\n[namespaces.\"ckpt/*\"]\nreplicas = 3\nwrite_quorum = 2\n".to_string()
    });
    let writer = nodes[0].client().await;
    let warm = [PutItem::new(key(0), data(0, 10_000))];
    assert!(writer.put("ckpt/run1", &warm, Durability::LocalDisk).await.unwrap()[0].result.is_ok());

    nodes[2].signal(libc::SIGSTOP);
    let items: Vec<PutItem> = (30..46).map(|i| PutItem::new(key(i), data(i, 200_000))).collect();
    for r in writer.put("ckpt/run1", &items, Durability::LocalDisk).await.unwrap() {
        assert!(r.result.is_ok(), "{:?}", r.result);
    }
    let keys: Vec<Vec<u8>> = items.iter().map(|i| i.key.clone()).collect();
    let deletes_at_n1 = || nodes[0].labelled_metric("requests_total", "op=\"delete\"");
    let before = deletes_at_n1();
    let delete = {
        let (writer, keys) = (writer.clone(), keys.clone());
        tokio::spawn(async move { writer.delete("ckpt/run1", &keys).await })
    };
    // n3 runs again once n1 has the delete: without the wait, n1 would have sent it on to
    // n3 at once, behind the copies but racing them there.
    let started = std::time::Instant::now();
    while deletes_at_n1() == before {
        assert!(started.elapsed() < Duration::from_secs(30), "the delete never reached n1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nodes[2].signal(libc::SIGCONT);
    let deleted = tokio::time::timeout(Duration::from_secs(60), delete).await.expect("the delete hung").unwrap();
    assert_eq!(deleted.unwrap(), vec![true; keys.len()]);
    for k in &keys {
        let have = holders(&nodes, "ckpt/run1", k).await;
        assert!(have.is_empty(), "{k:?} is back on {have:?} after its delete was acknowledged");
    }
}
