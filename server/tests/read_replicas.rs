//! Read replicas across five real `kvtier serve` processes (static membership): a block
//! that several nodes read gets copies on the readers' nodes once it is popular, its owner
//! sends later readers to those copies instead of answering every read itself, a delete
//! reaches them, and a reader sent to read replicas that are gone (`kill -9`) is answered
//! by the owner.

mod common;

use common::{Node, block_owners, data, key, start_static_cluster};
use kvtier_blockmgr::{Client, Durability, GetItem, PutItem};

const IDS: [&str; 5] = ["n1", "n2", "n3", "n4", "n5"];
const KV: &str = "kv/llama";

/// Five members; a key is popular from its second read by another node.
fn start_five() -> Vec<Node> {
    start_static_cluster(&IDS, |_| "peer_timeout = \"3s\"\nread_replica_after = 2\n".into())
}

/// Whether `node` holds `k` itself (asked as a member, without counting as a read).
async fn holds(node: &Node, k: &[u8]) -> bool {
    let peer = Client::connect(&node.addrs.grpc).await.unwrap().as_peer("n1").unwrap();
    matches!(peer.get(KV, &[k.to_vec()]).await.unwrap().pop(), Some(GetItem::Hit { .. }))
}

async fn read(node: &Node, item: &PutItem) {
    let got = node.client().await.get(KV, std::slice::from_ref(&item.key)).await.unwrap().pop();
    assert!(matches!(&got, Some(GetItem::Hit { data, .. }) if *data == item.data), "{got:?}");
}

fn answered<'a>(nodes: impl IntoIterator<Item = &'a Node>, answer: &str) -> u64 {
    nodes.into_iter().map(|n| n.labelled_metric("peer_reads_total", &format!("answer=\"{answer}\""))).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn popular_blocks_get_read_replicas_that_serve_later_readers() {
    let mut nodes = start_five();
    // Six KV blocks (one copy each) that n1 writes and does not own (it keeps a cache copy).
    let items: Vec<PutItem> = (0..200)
        .filter(|&i| block_owners(&IDS, KV, &key(i), 1)[0] != "n1")
        .take(6)
        .map(|i| PutItem::new(key(i), data(i, 150_000)))
        .collect();
    for r in nodes[0].client().await.put(KV, &items, Durability::LocalDisk).await.unwrap() {
        assert!(r.result.is_ok(), "{:?}", r.result);
    }
    // Each block is read, one after the other, by the three nodes that neither own nor
    // wrote it: the first keeps nothing, the second keeps the copy its owner answered (a
    // read replica), the third is sent to the second and keeps one too.
    let readers_of = |item: &PutItem| -> Vec<usize> {
        let owner = block_owners(&IDS, KV, &item.key, 1)[0];
        (1..IDS.len()).filter(|&i| IDS[i] != owner).collect()
    };
    for item in &items {
        for r in readers_of(item) {
            read(&nodes[r], item).await;
        }
    }
    assert_eq!(answered(&nodes, "owner"), 12, "owners answered two reads of each block");
    assert_eq!(answered(&nodes, "redirect"), 6, "and sent the third reader on");
    assert_eq!(answered(&nodes, "replica"), 6, "to a read replica, which answered it");
    assert_eq!(nodes.iter().map(|n| n.metric("read_replicas_kept_total")).sum::<u64>(), 12);
    for item in &items {
        let readers = readers_of(item);
        assert!(!holds(&nodes[readers[0]], &item.key).await, "a reader below the threshold keeps nothing");
        assert!(holds(&nodes[readers[1]], &item.key).await && holds(&nodes[readers[2]], &item.key).await);
    }

    // A delete through any node reaches the read replicas too.
    assert!(nodes[0].client().await.delete(KV, std::slice::from_ref(&items[0].key)).await.unwrap()[0]);
    for r in readers_of(&items[0]) {
        assert!(!holds(&nodes[r], &items[0].key).await, "{} still holds a deleted block", IDS[r]);
    }

    // Both read replicas of the second block killed: the next reader is sent to them, finds
    // neither, and the owner answers it itself.
    let readers = readers_of(&items[1]);
    nodes[readers[1]].kill9();
    nodes[readers[2]].kill9();
    let owner = IDS.iter().position(|id| *id == block_owners(&IDS, KV, &items[1].key, 1)[0]).unwrap();
    let (owner_before, redirect_before) = (answered([&nodes[owner]], "owner"), answered([&nodes[owner]], "redirect"));
    read(&nodes[readers[0]], &items[1]).await;
    assert_eq!(answered([&nodes[owner]], "redirect"), redirect_before + 1, "sent to the read replicas");
    assert_eq!(answered([&nodes[owner]], "owner"), owner_before + 1, "then answered by the owner");
    assert!(holds(&nodes[readers[0]], &items[1].key).await, "and kept as a read replica");
}
