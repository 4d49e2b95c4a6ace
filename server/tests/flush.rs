//! The Blob tier's write side in a real `kvtier serve`, against a real Azurite and against
//! a local directory (the same suite on both): demotion CPU -> SSD -> Blob and read-through
//! back; write-back blocks flushed after a `kill -9`; a wiped data dir served from Blob;
//! Blob stopped mid-run (backpressure, then recovery with nothing lost); a damaged segment
//! range read as a miss.

mod common;

use std::time::{Duration, Instant};

use common::{
    Node,
    blob::{Backend, Store},
    data, key,
};
use kvtier_blockmgr::{Client, Durability, GetItem, MissReason, PutItem, Stats};
use kvtier_tiers::{BlobTierBuilder, BlockKey, Tier, TierExt, TierKind};
use tonic::Code;

const NS: &str = "acme/ckpt/run1";
const BLOCK: usize = 256 << 10;

fn items(range: std::ops::Range<u64>) -> Vec<PutItem> {
    range.map(|i| PutItem::new(key(i), data(i, BLOCK))).collect()
}

fn block_key(i: u64) -> BlockKey {
    BlockKey::parse(NS, &key(i)).unwrap()
}

/// Polls the node's stats until `done` holds (at most 30 s).
async fn wait_for(client: &Client, what: &str, done: impl Fn(&Stats) -> bool) -> Stats {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = client.stats().await.unwrap();
        if done(&stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {stats:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Write-back puts of one block at a time from block `first` until one is refused: how
/// many were acknowledged, and the refusal (code, message).
async fn put_until_refused(client: &Client, first: u64) -> (u64, (Code, String)) {
    let mut acked = first;
    loop {
        let r = client.put(NS, &items(acked..acked + 1), Durability::WriteBack).await.unwrap().remove(0);
        match r.result {
            Ok(()) => acked += 1,
            Err(refused) => return (acked, refused),
        }
        assert!(acked < first + 500, "never refused");
    }
}

async fn put_all(client: &Client, blocks: &[PutItem], durability: Durability) {
    for r in client.put(NS, blocks, durability).await.unwrap() {
        assert_eq!(r.result, Ok(()), "{r:?}");
    }
}

/// Every block of `range` reads back byte-exact; returns the tiers it came from.
async fn read_all(client: &Client, range: std::ops::Range<u64>) -> Vec<TierKind> {
    let keys: Vec<Vec<u8>> = range.clone().map(key).collect();
    let mut tiers = Vec::new();
    for (i, item) in range.zip(client.get(NS, &keys).await.unwrap()) {
        let GetItem::Hit { data: got, tier, .. } = item else { panic!("block {i}: {item:?}") };
        assert!(got == data(i, BLOCK), "block {i} read back other bytes");
        tiers.push(tier);
    }
    tiers
}

async fn demotion_goes_cpu_ssd_blob_and_reads_back(backend: Backend) {
    // 50 MiB of cache blocks through 8 MiB of memory and 32 MiB of SSD, in waves.
    let node = Node::start_with("", &backend.toml("demote_above = 0.5"));
    let client = node.unix_client().await;
    for wave in 0..25 {
        put_all(&client, &items(wave * 8..wave * 8 + 8), Durability::Cache).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        wait_for(&client, "the flush queue to drain", |s| s.flush_queue == 0).await;
    }
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.dropped, 0, "every block SSD evicted was in Blob first: {stats:?}");
    assert!(stats.flushed_blocks > 0, "{stats:?}");
    let keys: Vec<Vec<u8>> = (0..200).map(key).collect();
    let placed = client.lookup(NS, &keys).await.unwrap();
    assert_eq!(placed.len(), 200, "every block is somewhere");
    assert!(placed.contains(&TierKind::Blob), "some left the node's disk for Blob: {placed:?}");
    // The last wave first: reading the others promotes them, and they would push it out.
    let newest = read_all(&client, 192..200).await;
    assert!(newest.contains(&TierKind::Cpu), "{newest:?}");
    let tiers = read_all(&client, 0..192).await;
    assert!(tiers.contains(&TierKind::Blob), "{tiers:?}");
    let metrics = node.http_get("/metrics");
    assert!(metrics.contains("kvtier_demotions_total{from=\"ssd\",to=\"blob\"}"), "{metrics}");
    let puts_line = metrics.lines().find(|l| l.starts_with("kvtier_blob_requests_total{op=\"put\"}")).unwrap();
    let puts: u64 = puts_line.rsplit(' ').next().unwrap().parse().unwrap();
    // Segments of up to 4 MiB (16 blocks) plus their indexes: far fewer PUTs than blocks.
    assert!(puts < stats.flushed_blocks, "{puts} PUTs for {} blocks", stats.flushed_blocks);
}

async fn write_back_blocks_reach_blob_after_a_kill_9(backend: Backend) {
    // A long linger holds the (partial) batch back, so the kill lands before its flush.
    let mut node = Node::start_with("", &backend.toml("flush_linger = \"2s\"\nsegment_size = \"64MiB\""));
    let client = node.unix_client().await;
    put_all(&client, &items(0..16), Durability::WriteBack).await;
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.unflushed_bytes, 16 * BLOCK as u64, "acknowledged, not flushed yet: {stats:?}");
    node.kill9();
    node.restart();
    let client = node.unix_client().await;
    wait_for(&client, "the restarted node to flush", |s| s.unflushed_bytes == 0 && s.flushed_blocks == 16).await;
    assert!(node.stderr().contains("queueing unflushed blocks"), "{}", node.stderr());
    let view = backend.view().await;
    for i in 0..16 {
        let got = view.get(&block_key(i)).await.unwrap().unwrap_or_else(|| panic!("block {i} is not in Blob"));
        assert!(got.data == data(i, BLOCK));
    }
}

async fn a_wiped_node_serves_flushed_blocks_from_blob(backend: Backend) {
    let mut node = Node::start_with("", &backend.toml(""));
    let client = node.unix_client().await;
    put_all(&client, &items(0..24), Durability::WriteBack).await;
    wait_for(&client, "the flush", |s| s.unflushed_bytes == 0).await;
    assert!(node.terminate().success());
    std::fs::remove_dir_all(node.data_dir()).unwrap();
    node.restart();
    let client = node.unix_client().await;
    let keys: Vec<Vec<u8>> = (0..24).map(key).collect();
    assert_eq!(client.lookup(NS, &keys).await.unwrap(), vec![TierKind::Blob; 24]);
    assert_eq!(read_all(&client, 0..24).await, vec![TierKind::Blob; 24]);
}

async fn blob_down_is_backpressure_then_recovery_loses_nothing(mut backend: Backend) {
    // At most 8 MiB (a quarter of the SSD) may wait for the flush.
    let extra = "max_unflushed = 0.25\nflush_wait = \"500ms\"\nretries = 1\nretry_timeout = \"1s\"";
    let node = Node::start_with("", &backend.toml(extra));
    let client = node.unix_client().await;
    put_all(&client, &items(0..4), Durability::WriteBack).await;
    wait_for(&client, "the first flush", |s| s.unflushed_bytes == 0).await;
    backend.stop();
    let (acked, refusal) = put_until_refused(&client, 4).await;
    assert_eq!(refusal.0, Code::ResourceExhausted, "{refusal:?}");
    assert!(refusal.1.contains("backpressure") && refusal.1.contains("the last flush failed"), "{}", refusal.1);
    assert!(acked >= 4 + 28, "puts went on into local tiers up to the limit: {acked}");
    // Cache puts still land locally meanwhile.
    let cache: Vec<PutItem> = (1000..1004).map(|i| PutItem::new(key(i), data(i, BLOCK))).collect();
    put_all(&client, &cache, Durability::Cache).await;

    backend.resume();
    wait_for(&client, "the flush to resume", |s| s.unflushed_bytes == 0 && s.flush_queue == 0).await;
    let view = backend.view().await;
    for i in 0..acked {
        let got = view.get(&block_key(i)).await.unwrap().unwrap_or_else(|| panic!("acknowledged block {i} lost"));
        assert!(got.data == data(i, BLOCK));
    }
    read_all(&client, 0..acked).await;
    assert!(node.http_get("/metrics").contains("kvtier_flush_backpressure_total 1"));
}

async fn a_damaged_segment_range_is_a_miss(backend: Backend) {
    let mut node = Node::start_with("", &backend.toml(""));
    let client = node.unix_client().await;
    put_all(&client, &items(0..4), Durability::WriteBack).await;
    wait_for(&client, "the flush", |s| s.unflushed_bytes == 0).await;
    assert!(node.terminate().success());
    std::fs::remove_dir_all(node.data_dir()).unwrap();
    kvtier_tiers::conformance::damage_blob_copy(&backend.url, backend.options(), &block_key(0)).await;
    node.restart();
    let client = node.unix_client().await;
    let got = client.get(NS, &[key(0)]).await.unwrap().remove(0);
    assert!(matches!(got, GetItem::Miss { reason: MissReason::ChecksumMismatch, .. }), "{got:?}");
    assert_eq!(read_all(&client, 1..4).await, vec![TierKind::Blob; 3], "its neighbours in the segment are intact");
}

async fn a_stale_copy_in_blob_never_passes_for_a_newer_version(mut backend: Backend) {
    // v1 is flushed; its delete cannot reach Blob (down); v2 of the same key is written
    // back. Once Blob returns, v2 must replace v1 there, not be taken as already flushed.
    let extra = "retries = 0\nretry_timeout = \"1s\"";
    let mut node = Node::start_with("", &backend.toml(extra));
    let client = node.unix_client().await;
    let v1 = PutItem::new(key(0), data(1, BLOCK));
    let v2 = PutItem::new(key(0), data(2, BLOCK));
    put_all(&client, std::slice::from_ref(&v1), Durability::WriteBack).await;
    wait_for(&client, "v1's flush", |s| s.unflushed_bytes == 0).await;
    backend.stop();
    assert_eq!(client.delete(NS, &[key(0)]).await.unwrap(), vec![true]);
    put_all(&client, std::slice::from_ref(&v2), Durability::WriteBack).await;
    backend.resume();
    wait_for(&client, "v2's flush", |s| s.unflushed_bytes == 0 && s.flush_queue == 0).await;
    assert!(backend.view().await.get(&block_key(0)).await.unwrap().unwrap().data == v2.data, "Blob holds v2");
    assert!(node.terminate().success());
    std::fs::remove_dir_all(node.data_dir()).unwrap();
    node.restart();
    let got = node.unix_client().await.get(NS, &[key(0)]).await.unwrap().remove(0);
    let GetItem::Hit { data: got, tier, .. } = got else { panic!("{got:?}") };
    assert_eq!(tier, TierKind::Blob);
    assert!(got == v2.data, "a wiped node reads v2 from Blob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_errors_from_blob_delay_the_flush_and_lose_nothing() {
    // Revoked credentials, a conflict, server errors: each fails the flush for a while;
    // the puts are acknowledged meanwhile and everything reaches Blob once it answers.
    for status in [403, 409, 500, 503] {
        let (azurite, proxy, toml) = common::blob::behind_fault_proxy(&format!("faults-{status}"), "");
        let node = Node::start_with("", &toml);
        let client = node.unix_client().await;
        proxy.fail(status, 3);
        put_all(&client, &items(0..8), Durability::WriteBack).await;
        wait_for(&client, "the flush past the errors", |s| s.unflushed_bytes == 0).await;
        assert_eq!(proxy.pending_failures(), 0, "{status}: every injected failure was met");
        let metrics = node.http_get("/metrics");
        assert!(!metrics.contains("kvtier_flush_errors_total 0"), "{status}: the failures were counted");
        let url = format!("az://kvtier/faults-{status}");
        let view = BlobTierBuilder::new(url).options(azurite.options()).open().await.unwrap();
        for i in 0..8 {
            let got = view.get(&block_key(i)).await.unwrap().unwrap_or_else(|| panic!("{status}: block {i} lost"));
            assert!(got.data == data(i, BLOCK));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_errors_on_read_through_are_misses_then_hits() {
    let (_azurite, proxy, toml) = common::blob::behind_fault_proxy("read-faults", "retry_timeout = \"1s\"");
    let mut node = Node::start_with("", &toml);
    let client = node.unix_client().await;
    put_all(&client, &items(0..2), Durability::WriteBack).await;
    wait_for(&client, "the flush", |s| s.unflushed_bytes == 0).await;
    assert!(node.terminate().success());
    std::fs::remove_dir_all(node.data_dir()).unwrap();
    node.restart();
    let client = node.unix_client().await;
    proxy.fail(500, 1000);
    let got = client.get(NS, &[key(0)]).await.unwrap().remove(0);
    let GetItem::Miss { reason: MissReason::Error, message } = &got else { panic!("{got:?}") };
    assert!(message.contains("500"), "the miss names the store's answer: {message}");
    assert!(node.alive());
    proxy.fail(500, 0);
    assert_eq!(read_all(&client, 0..2).await, vec![TierKind::Blob; 2], "Blob answering again: read through");
}

async fn a_node_started_while_blob_is_down_serves_locally_then_catches_up(mut backend: Backend) {
    // Blob holds blocks 0..4 from an earlier run; block 0 is deleted while Blob is down.
    let mut node = Node::start_with("", &backend.toml("retries = 0\nretry_timeout = \"1s\""));
    let client = node.unix_client().await;
    put_all(&client, &items(0..4), Durability::WriteBack).await;
    wait_for(&client, "the flush", |s| s.unflushed_bytes == 0).await;
    assert!(node.terminate().success());
    std::fs::remove_dir_all(node.data_dir()).unwrap();
    backend.stop();
    node.restart();
    assert!(node.stderr().contains("Blob is unreachable at start"), "{}", node.stderr());
    let client = node.unix_client().await;
    put_all(&client, &items(4..8), Durability::WriteBack).await;
    assert_eq!(read_all(&client, 4..8).await, vec![TierKind::Cpu; 4], "the local tiers serve");
    assert_eq!(client.lookup(NS, &[key(1)]).await.unwrap(), vec![], "Blob's blocks are unknown yet");
    put_all(&client, &items(0..1), Durability::Cache).await;
    assert_eq!(client.delete(NS, &[key(0)]).await.unwrap(), vec![true]);

    backend.resume();
    wait_for(&client, "the flush after Blob returned", |s| s.unflushed_bytes == 0).await;
    let keys: Vec<Vec<u8>> = (1..8).map(key).collect();
    assert_eq!(client.lookup(NS, &keys).await.unwrap().len(), 7, "Blob's blocks are indexed once it answers");
    read_all(&client, 1..8).await;
    assert_eq!(
        client.get(NS, &[key(0)]).await.unwrap().remove(0),
        GetItem::Miss { reason: MissReason::NotFound, message: "not found".into() }
    );
    let view = backend.view().await;
    assert!(view.get(&block_key(0)).await.unwrap().is_none(), "the delete made while Blob was down reached it");
    assert!(view.get(&block_key(7)).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_blob_endpoint_is_backpressure_then_catches_up() {
    // Azurite frozen: requests time out (after `timeout`) instead of being refused.
    let backend = Backend::azurite();
    let Store::Azurite(azurite) = &backend.store else { unreachable!() };
    let extra = "max_unflushed = 0.25\nflush_wait = \"500ms\"\nretries = 0\nretry_timeout = \"1s\"";
    let toml = backend.toml(extra).replace("[blob.options]\n", "[blob.options]\ntimeout = \"1s\"\n");
    let node = Node::start_with("", &toml);
    let client = node.unix_client().await;
    azurite.freeze();
    let (acked, refusal) = put_until_refused(&client, 0).await;
    azurite.thaw();
    assert_eq!(refusal.0, Code::ResourceExhausted, "{refusal:?}");
    assert!(acked >= 28, "puts went on into local tiers up to the limit: {acked}");
    wait_for(&client, "the flush after the endpoint answered again", |s| s.unflushed_bytes == 0).await;
    let view = backend.view().await;
    for i in 0..acked {
        assert!(view.get(&block_key(i)).await.unwrap().is_some(), "acknowledged block {i} lost");
    }
}

async fn a_damaged_ssd_copy_is_read_from_blob_instead(backend: Backend) {
    let mut node = Node::start_with("", &backend.toml(""));
    let client = node.unix_client().await;
    put_all(&client, &items(0..2), Durability::WriteBack).await;
    wait_for(&client, "the flush", |s| s.unflushed_bytes == 0).await;
    assert!(node.terminate().success());
    let path = node.data_dir().join("ssd").join(kvtier_tiers::SLOT_FILE);
    let mut file = std::fs::read(&path).unwrap();
    let needle = &data(1, BLOCK)[5000..5064];
    let at = file.windows(needle.len()).position(|w| w == needle).expect("block bytes on disk");
    file[at + 10] ^= 0x40;
    std::fs::write(&path, &file).unwrap();
    node.restart();
    let client = node.unix_client().await;
    assert_eq!(read_all(&client, 0..2).await, vec![TierKind::Ssd, TierKind::Blob], "the good copy in Blob serves");
    assert!(node.http_get("/metrics").contains("kvtier_checksum_failures_total{tier=\"ssd\"} 1"));
}

async fn a_delete_made_while_blob_is_down_holds_through_restarts_and_wipes(mut backend: Backend) {
    // Flushed blocks deleted while Blob is down: each delete is held (on disk) and retried.
    // It once was only logged, so the copy stayed in Blob and a restart, or a node on a
    // wiped disk, served the deleted block again.
    let extra = "retries = 0\nretry_timeout = \"1s\"";
    let mut node = Node::start_with("", &backend.toml(extra));
    let client = node.unix_client().await;
    put_all(&client, &items(0..4), Durability::WriteBack).await;
    wait_for(&client, "the flush", |s| s.unflushed_bytes == 0).await;
    backend.stop();
    assert_eq!(client.delete(NS, &[key(0), key(1)]).await.unwrap(), vec![true, true]);
    assert_eq!(node.metric("blob_deletes_held"), 2);

    // Killed while Blob is still down, restarted once it is back: the held deletes come from
    // the data dir and are applied before Blob's blocks are indexed.
    node.kill9();
    backend.resume();
    node.restart();
    let client = node.unix_client().await;
    let missing = |got: &GetItem| matches!(got, GetItem::Miss { .. });
    let got = client.get(NS, &[key(0), key(1), key(2)]).await.unwrap();
    assert!(missing(&got[0]) && missing(&got[1]), "deleted blocks stay deleted after a restart: {got:?}");
    assert!(matches!(got[2], GetItem::Hit { .. }), "the others stay: {got:?}");
    common::wait_until("the held deletes applied", Duration::from_secs(30), || node.metric("blob_deletes_held") == 0);
    assert_eq!(backend.view().await.get(&block_key(0)).await.unwrap().map(|b| b.key), None, "gone from Blob");

    // Another delete while Blob is down, retried while the node runs: a node on a wiped disk
    // (which has no held list) does not find it in Blob afterwards.
    backend.stop();
    assert_eq!(client.delete(NS, &[key(2)]).await.unwrap(), vec![true]);
    backend.resume();
    common::wait_until("the held delete retried", Duration::from_secs(30), || node.metric("blob_deletes_held") == 0);
    assert!(node.terminate().success());
    std::fs::remove_dir_all(node.data_dir()).unwrap();
    node.restart();
    let got = node.unix_client().await.get(NS, &[key(2), key(3)]).await.unwrap();
    assert!(missing(&got[0]), "a wiped node does not bring the deleted block back: {got:?}");
    assert!(matches!(got[1], GetItem::Hit { tier: TierKind::Blob, .. }), "{got:?}");
}

async fn a_delete_before_blob_is_loaded_holds_for_a_block_only_blob_has(mut backend: Backend) {
    // A node on a wiped disk starts while Blob is down: its Blob-only blocks are not indexed
    // yet. A delete of one must still reach Blob once it is back (it answered "nothing to
    // delete", and the load then indexed the block again).
    let extra = "retries = 0\nretry_timeout = \"1s\"";
    let mut node = Node::start_with("", &backend.toml(extra));
    let client = node.unix_client().await;
    put_all(&client, &items(0..2), Durability::WriteBack).await;
    wait_for(&client, "the flush", |s| s.unflushed_bytes == 0).await;
    assert!(node.terminate().success());
    std::fs::remove_dir_all(node.data_dir()).unwrap();
    backend.stop();
    node.restart();
    let client = node.unix_client().await;
    client.delete(NS, &[key(0)]).await.unwrap();
    assert_eq!(node.metric("blob_deletes_held"), 1);
    backend.resume();
    common::wait_until("Blob loaded, the delete applied", Duration::from_secs(60), || {
        node.metric("blob_deletes_held") == 0 && node.metric("index_blocks") > 0
    });
    let got = client.get(NS, &[key(0), key(1)]).await.unwrap();
    assert!(matches!(got[0], GetItem::Miss { .. }), "the deleted block stays deleted: {got:?}");
    assert!(matches!(got[1], GetItem::Hit { tier: TierKind::Blob, .. }), "{got:?}");
}

common::blob::on_both_backends!(
    demotion_goes_cpu_ssd_blob_and_reads_back,
    write_back_blocks_reach_blob_after_a_kill_9,
    a_wiped_node_serves_flushed_blocks_from_blob,
    blob_down_is_backpressure_then_recovery_loses_nothing,
    a_damaged_segment_range_is_a_miss,
    a_stale_copy_in_blob_never_passes_for_a_newer_version,
    a_node_started_while_blob_is_down_serves_locally_then_catches_up,
    a_damaged_ssd_copy_is_read_from_blob_instead,
    a_delete_made_while_blob_is_down_holds_through_restarts_and_wipes,
    a_delete_before_blob_is_loaded_holds_for_a_block_only_blob_has,
);

#[tokio::test]
async fn cache_only_namespaces_never_reach_blob_and_refuse_write_back() {
    let backend = Backend::dir();
    let policy = "[namespaces.\"acme/*\"]\ncache_only = true\n";
    let node = Node::start_with("", &format!("{}\n{policy}", backend.toml("demote_above = 0.5")));
    let client = node.unix_client().await;
    let r = client.put(NS, &items(0..1), Durability::WriteBack).await.unwrap().remove(0);
    let (code, message) = r.result.unwrap_err();
    assert_eq!(code, Code::FailedPrecondition);
    assert!(message.contains("cache_only") && message.contains(NS), "{message}");
    // 50 MiB of cache blocks: SSD evicts, nothing is demoted to Blob.
    for wave in 0..25 {
        put_all(&client, &items(wave * 8..wave * 8 + 8), Durability::Cache).await;
    }
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.flushed_blocks, 0, "{stats:?}");
    assert!(stats.dropped > 0, "SSD evicted without a Blob copy: {stats:?}");
    assert_eq!(backend.view().await.blocks().await.unwrap().len(), 0);

    // Without a Blob tier, write-back is refused by name too.
    let no_blob = Node::start_with("", "[blob]\nurl = \"\"\n");
    let r = no_blob.unix_client().await.put(NS, &items(0..1), Durability::WriteBack).await.unwrap().remove(0);
    assert!(r.result.unwrap_err().1.contains("needs a Blob tier"));
}

#[tokio::test]
async fn ssd_never_evicts_a_write_back_block_blob_lacks() {
    // The unflushed limit is the whole SSD: with Blob down, write-back fills it, and then
    // puts are refused rather than older acknowledged blocks evicted.
    let mut backend = Backend::dir();
    let node = Node::start_with("", &backend.toml("max_unflushed = 1.0\nflush_wait = \"200ms\"\nretries = 0"));
    let client = node.unix_client().await;
    backend.stop();
    let (acked, refusal) = put_until_refused(&client, 0).await;
    assert_eq!(refusal.0, Code::ResourceExhausted, "{refusal:?}");
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.dropped, 0, "{stats:?}");
    assert!(acked > 100, "the SSD filled first: {acked}");
    backend.resume();
    wait_for(&client, "the flush to resume", |s| s.unflushed_bytes == 0).await;
    read_all(&client, 0..acked).await;
    assert_eq!(backend.view().await.blocks().await.unwrap().len() as u64, acked);
}
