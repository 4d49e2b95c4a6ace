//! The Blob tier in a real `kvtier serve`: a node with an empty disk serves what its Blob
//! prefix holds (read through, one GET per key however many readers wait, then cached in
//! memory), and a damaged copy in Blob is a miss, never wrong bytes.

mod common;

use common::{Node, data, key};
use kvtier_blockmgr::{GetItem, MissReason};
use kvtier_tiers::{BlobTierBuilder, Block, BlockKey, Tier, TierKind};

const NS: &str = "acme/llama/bf16";

/// Blocks under `url` as another node's flush would have left them.
async fn blob_holding(url: &str, n: u64) -> Vec<Block> {
    let blocks: Vec<Block> =
        (0..n).map(|i| Block::new(BlockKey::parse(NS, &key(i)).unwrap(), data(i, 200_000))).collect();
    let tier = BlobTierBuilder::new(url).segment_size(1 << 20).open().await.unwrap();
    assert!(tier.put_batch(&blocks).await.iter().all(|r| r.is_ok()));
    blocks
}

#[tokio::test]
async fn an_empty_node_serves_its_blob_prefix_reading_each_block_once() {
    let shared = tempfile::tempdir().unwrap();
    let url = format!("file://{}/bucket/kv", shared.path().display());
    let blocks = blob_holding(&url, 6).await;
    let node = Node::start_with("", &format!("[blob]\nurl = \"{url}\"\n"));
    let keys: Vec<Vec<u8>> = (0..6).map(key).collect();
    let client = node.unix_client().await;
    assert_eq!(client.lookup(NS, &keys).await.unwrap(), vec![TierKind::Blob; 6], "indexed at start");

    // Eight readers of one key at once: one GET from Blob.
    let clients: Vec<_> = futures::future::join_all((0..8).map(|_| node.unix_client())).await;
    let gets = futures::future::join_all(clients.iter().map(|c| c.get(NS, &keys[..1]))).await;
    for got in gets {
        let GetItem::Hit { data, .. } = got.unwrap().remove(0) else { panic!("a hit") };
        assert_eq!(data, blocks[0].data);
    }
    assert!(node.http_get("/metrics").contains("kvtier_tier_reads_total{tier=\"blob\"} 1"));

    // Every block reads through byte-exact, and is cached in memory on the way back.
    for (item, b) in client.get(NS, &keys).await.unwrap().into_iter().zip(&blocks) {
        let GetItem::Hit { data, .. } = item else { panic!("{item:?}") };
        assert_eq!(data, b.data);
    }
    let mut tiers = Vec::new();
    for _ in 0..100 {
        tiers = client.lookup(NS, &keys).await.unwrap();
        if tiers == vec![TierKind::Cpu; 6] {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(tiers, vec![TierKind::Cpu; 6], "promoted after the read-through");
    let GetItem::Hit { tier, .. } = client.get(NS, &keys[..1]).await.unwrap().remove(0) else { panic!() };
    assert_eq!(tier, TierKind::Cpu);
    assert!(node.http_get("/metrics").contains("kvtier_promotions_total{from=\"blob\",to=\"cpu\"} 6"));
    // A delete reaches Blob too: a node started later does not see it.
    assert_eq!(client.delete(NS, &keys[..1]).await.unwrap(), vec![true]);
    let later = Node::start_with("", &format!("[blob]\nurl = \"{url}\"\n"));
    assert_eq!(later.unix_client().await.lookup(NS, &keys).await.unwrap(), vec![]);
    assert_eq!(later.unix_client().await.lookup(NS, &keys[1..]).await.unwrap(), vec![TierKind::Blob; 5]);
}

#[tokio::test]
async fn a_damaged_copy_in_blob_is_a_miss_not_wrong_bytes() {
    let shared = tempfile::tempdir().unwrap();
    let url = format!("file://{}/kv", shared.path().display());
    blob_holding(&url, 1).await;
    let seg = std::fs::read_dir(shared.path().join("kv/seg")).unwrap().next().unwrap().unwrap().path();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[1234] ^= 1;
    std::fs::write(&seg, bytes).unwrap();
    let node = Node::start_with("", &format!("[blob]\nurl = \"{url}\"\n"));
    let client = node.unix_client().await;
    let got = client.get(NS, &[key(0)]).await.unwrap().remove(0);
    assert!(matches!(got, GetItem::Miss { reason: MissReason::ChecksumMismatch, .. }), "{got:?}");
    assert_eq!(client.lookup(NS, &[key(0)]).await.unwrap(), vec![], "the damaged copy left the index");
    assert!(node.http_get("/metrics").contains("kvtier_checksum_failures_total{tier=\"blob\"} 1"));
}
