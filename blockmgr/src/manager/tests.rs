use std::{
    fmt,
    io::{Read, Seek, SeekFrom, Write},
    path::Path,
    sync::atomic::AtomicUsize,
};

use futures::future::BoxFuture;
use kvtier_tiers::{BlockMeta, CpuTierBuilder, PutStatus, SsdTierBuilder, TierUsage, conformance::pattern};

use super::*;

const MIB: u64 = 1 << 20;

/// 8 MiB of memory (8 regions of 1 MiB), 32 MiB of SSD, 512 KiB blocks at most.
fn config(dir: &Path) -> Config {
    crate::config::small_for_tests(dir)
}

fn key(i: u64) -> BlockKey {
    BlockKey::parse("test/model", &i.to_be_bytes()).unwrap()
}

fn block(i: u64, len: usize) -> Block {
    Block::new(key(i), pattern(i, len))
}

async fn open(dir: &Path) -> Manager {
    Manager::open(&config(dir), Metrics::new()).await.unwrap()
}

fn hit(outcome: GetOutcome) -> (Block, TierKind) {
    match outcome {
        GetOutcome::Hit { block, tier } => (block, tier),
        GetOutcome::Miss { reason, message } => panic!("miss ({reason:?}): {message}"),
    }
}

fn miss(outcome: GetOutcome) -> MissReason {
    match outcome {
        GetOutcome::Hit { block, .. } => panic!("unexpected hit for {}", block.key),
        GetOutcome::Miss { reason, .. } => reason,
    }
}

#[test_log::test(tokio::test)]
async fn put_get_lookup_delete_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let m = open(dir.path()).await;
    let blocks: Vec<Block> = (0..5).map(|i| block(i, 100_000 + i as usize)).collect();
    for b in &blocks {
        let out = m.put(b.clone(), Durability::Cache).await.unwrap();
        assert_eq!(out, PutOutcome { status: PutStatus::Stored, tier: TierKind::Cpu });
    }
    assert_eq!(m.put(blocks[0].clone(), Durability::Cache).await.unwrap().status, PutStatus::Existed);
    for b in &blocks {
        let (got, tier) = hit(m.get(&b.key).await);
        assert!(got.data == b.data && tier == TierKind::Cpu);
    }
    let keys: Vec<BlockKey> = [0, 1, 2, 9, 3].iter().map(|&i| key(i)).collect();
    assert_eq!(m.lookup(&keys), vec![TierKind::Cpu; 3], "prefix stops at the first absent key");
    assert!(m.delete(&key(1)).await);
    assert!(!m.delete(&key(1)).await);
    assert_eq!(miss(m.get(&key(1)).await), MissReason::NotFound);
    assert_eq!(m.lookup(&keys).len(), 1);
    let stats = m.stats().await;
    assert_eq!((stats.puts, stats.hits, stats.misses, stats.index_blocks), (6, 5, 1, 4));
}

#[test_log::test(tokio::test(flavor = "multi_thread", worker_threads = 2))]
async fn memory_overflow_demotes_to_ssd_within_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let m = open(dir.path()).await;
    // 48 blocks of 512 KiB = 24 MiB into 8 MiB of memory.
    let blocks: Vec<Block> = (0..48).map(|i| block(i, 512 << 10)).collect();
    for b in &blocks {
        m.put(b.clone(), Durability::Cache).await.unwrap();
        let stats = m.stats().await;
        for t in &stats.tiers {
            assert!(t.used_bytes <= t.capacity_bytes, "{} over capacity: {t:?}", t.name);
        }
    }
    m.settle().await;
    let stats = m.stats().await;
    let (cpu, ssd) = (&stats.tiers[0], &stats.tiers[1]);
    assert!(cpu.used_bytes <= cpu.capacity_bytes && ssd.blocks > 0, "{stats:?}");
    assert!(stats.demotions > 0 && stats.dropped == 0, "{stats:?}");
    let tiers = m.lookup(&blocks.iter().map(|b| b.key.clone()).collect::<Vec<_>>());
    assert_eq!(tiers.len(), 48, "every block is still present");
    assert!(tiers.contains(&TierKind::Ssd));
    for b in &blocks {
        assert!(hit(m.get(&b.key).await).0.data == b.data, "{} came back wrong", b.key);
    }
}

#[test_log::test(tokio::test(flavor = "multi_thread", worker_threads = 2))]
async fn ssd_hit_promotes_to_memory() {
    let dir = tempfile::tempdir().unwrap();
    let b = block(1, 300_000);
    {
        let m = open(dir.path()).await;
        m.put(b.clone(), Durability::LocalDisk).await.unwrap();
    }
    let m = open(dir.path()).await;
    assert_eq!(m.lookup(std::slice::from_ref(&b.key)), [TierKind::Ssd], "recovered from SSD");
    let (got, tier) = hit(m.get(&b.key).await);
    assert!(got.data == b.data && tier == TierKind::Ssd);
    // Promotion runs in the background; once it is done the block is in memory.
    m.settle().await;
    assert_eq!(m.lookup(std::slice::from_ref(&b.key)), [TierKind::Cpu], "an SSD hit is promoted to memory");
    assert_eq!(hit(m.get(&b.key).await).1, TierKind::Cpu);
    assert_eq!(m.stats().await.promotions, 1);
}

/// Counts reads of a tier it wraps.
struct CountingTier {
    inner: Arc<dyn Tier>,
    gets: AtomicUsize,
}

impl fmt::Debug for CountingTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CountingTier({})", self.inner)
    }
}
impl fmt::Display for CountingTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

#[deny(clippy::missing_trait_methods)]
impl Tier for CountingTier {
    fn kind(&self) -> TierKind {
        self.inner.kind()
    }
    fn put_batch<'a>(&'a self, blocks: &'a [Block]) -> BoxFuture<'a, Vec<kvtier_tiers::Result<PutStatus>>> {
        self.inner.put_batch(blocks)
    }
    fn get_batch<'a>(&'a self, keys: &'a [BlockKey]) -> BoxFuture<'a, Vec<kvtier_tiers::Result<Option<Block>>>> {
        self.gets.fetch_add(keys.len(), Ordering::SeqCst);
        self.inner.get_batch(keys)
    }
    fn contains_batch<'a>(&'a self, keys: &'a [BlockKey]) -> BoxFuture<'a, kvtier_tiers::Result<Vec<bool>>> {
        self.inner.contains_batch(keys)
    }
    fn delete_batch<'a>(&'a self, keys: &'a [BlockKey]) -> BoxFuture<'a, Vec<kvtier_tiers::Result<bool>>> {
        self.inner.delete_batch(keys)
    }
    fn usage(&self) -> BoxFuture<'_, kvtier_tiers::Result<TierUsage>> {
        self.inner.usage()
    }
    fn blocks(&self) -> BoxFuture<'_, kvtier_tiers::Result<Vec<BlockMeta>>> {
        self.inner.blocks()
    }
    fn eviction_candidates(&self, size: u64, max: usize) -> Vec<BlockKey> {
        self.inner.eviction_candidates(size, max)
    }

    fn eviction_candidates_keeping(
        &self,
        size: u64,
        max: usize,
        stays: &(dyn Fn(&BlockKey) -> bool + Sync),
    ) -> Vec<BlockKey> {
        self.inner.eviction_candidates_keeping(size, max, stays)
    }
    fn footprint(&self, len: u64) -> u64 {
        self.inner.footprint(len)
    }
}

#[test_log::test(tokio::test(flavor = "multi_thread", worker_threads = 2))]
async fn concurrent_gets_of_an_ssd_block_read_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let ssd = Arc::new(CountingTier {
        inner: Arc::new(
            SsdTierBuilder::new(dir.path().join("ssd"), c.ssd.capacity.0)
                .with_region_size(c.ssd.region_size.0)
                .with_max_block_size(c.max_block_size.0)
                .build()
                .await
                .unwrap(),
        ),
        gets: AtomicUsize::new(0),
    });
    let cpu = CpuTierBuilder::new(c.cpu.capacity.0)
        .with_region_size(MIB)
        .with_max_block_size(c.max_block_size.0)
        .build()
        .unwrap();
    let b = block(7, 400_000);
    ssd.put(b.clone()).await.unwrap();
    let m = Manager::with_tiers(cpu, Some(ssd.clone()), &c, Metrics::new()).await.unwrap();
    // All 32 gets are polled before the first SSD read can finish: one read serves them.
    let outcomes = futures::future::join_all((0..32).map(|_| m.get(&b.key))).await;
    for o in outcomes {
        assert!(hit(o).0.data == b.data);
    }
    assert_eq!(ssd.gets.load(Ordering::SeqCst), 1, "single flight");
}

#[test_log::test(tokio::test(flavor = "multi_thread", worker_threads = 2))]
async fn corrupt_ssd_copy_is_a_miss_and_a_metric_never_wrong_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let b = block(3, 200_000);
    {
        let m = open(dir.path()).await;
        m.put(b.clone(), Durability::LocalDisk).await.unwrap();
    }
    // Flip a byte in the middle of the block's data on disk.
    let path = dir.path().join("ssd").join(kvtier_tiers::SLOT_FILE);
    let mut bytes = Vec::new();
    std::fs::File::open(&path).unwrap().read_to_end(&mut bytes).unwrap();
    let needle = &b.data[1000..1064];
    let at = bytes.windows(needle.len()).position(|w| w == needle).expect("block bytes on disk");
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.seek(SeekFrom::Start(at as u64)).unwrap();
    f.write_all(&[bytes[at] ^ 0xff]).unwrap();
    drop(f);

    let m = open(dir.path()).await;
    assert_eq!(miss(m.get(&b.key).await), MissReason::ChecksumMismatch);
    assert_eq!(miss(m.get(&b.key).await), MissReason::NotFound, "the bad copy is gone");
    let stats = m.stats().await;
    assert_eq!(stats.checksum_failures, 1);
    assert_eq!(m.metrics().misses.with_label_values(&["checksum_mismatch"]).get(), 1);
    // The node keeps serving: the key can be stored again.
    m.put(b.clone(), Durability::Cache).await.unwrap();
    assert!(hit(m.get(&b.key).await).0.data == b.data);
}

#[test_log::test(tokio::test(flavor = "multi_thread", worker_threads = 2))]
async fn full_ssd_drops_its_oldest_blocks() {
    let dir = tempfile::tempdir().unwrap();
    // No Blob tier: with one, SSD's oldest blocks are demoted there instead of dropped.
    let mut config = config(dir.path());
    config.blob.url = String::new();
    let m = Manager::open(&config, Metrics::new()).await.unwrap();
    // 100 blocks of 512 KiB (50 MiB) through 8 MiB of memory and 32 MiB of SSD.
    for i in 0..100 {
        m.put(block(i, 512 << 10), Durability::LocalDisk).await.unwrap();
    }
    m.settle().await;
    let stats = m.stats().await;
    for t in &stats.tiers {
        assert!(t.used_bytes <= t.capacity_bytes, "{t:?}");
    }
    assert!(stats.dropped > 0 && stats.tiers[1].evictions > 0, "{stats:?}");
    let early: Vec<BlockKey> = (0..10).map(key).collect();
    let on_ssd = |k: &BlockKey| m.lookup(std::slice::from_ref(k)) == [TierKind::Ssd];
    assert!(!early.iter().any(on_ssd), "the SSD evicts its oldest blocks first");
    let mut present = 0;
    for i in 0..100 {
        match m.get(&key(i)).await {
            GetOutcome::Hit { block: got, .. } => {
                assert!(got.data == block(i, 512 << 10).data, "block {i} came back wrong");
                present += 1;
            }
            GetOutcome::Miss { reason, .. } => assert_eq!(reason, MissReason::NotFound),
        }
    }
    assert!((60..100).contains(&present), "{present} blocks present");
    assert!(matches!(m.get(&key(99)).await, GetOutcome::Hit { .. }), "the newest stays");
}

#[test_log::test(tokio::test)]
async fn streamed_puts_check_length_and_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let m = open(dir.path()).await;
    let b = block(1, 100_000);

    let mut w = m.begin_put(b.key.clone(), b.len(), Some(b.crc32c), Durability::Cache).await.unwrap();
    for chunk in b.data.chunks(30_000) {
        w.write(chunk).unwrap();
    }
    assert!(w.write(b"x").is_err(), "bytes past the declared length are refused");
    assert_eq!(m.finish_put(w).await.unwrap().status, PutStatus::Stored);
    assert!(hit(m.get(&b.key).await).0.data == b.data);

    let other = block(2, 100_000);
    let mut w = m.begin_put(other.key.clone(), other.len(), Some(other.crc32c ^ 1), Durability::Cache).await.unwrap();
    w.write(&other.data).unwrap();
    let err = m.finish_put(w).await.unwrap_err();
    assert!(
        matches!(err, NodeError::Tier(TierError::ChecksumMismatch { .. })) && err.to_string().contains("test/model/"),
        "{err}"
    );

    let mut w = m.begin_put(other.key.clone(), other.len(), None, Durability::Cache).await.unwrap();
    w.write(&other.data[..5000]).unwrap();
    assert!(m.finish_put(w).await.is_err(), "a short block is refused");
    assert_eq!(miss(m.get(&other.key).await), MissReason::NotFound, "nothing of a refused block is stored");

    let used = m.stats().await.tiers[0].used_bytes;
    let w = m.begin_put(key(3), 200_000, None, Durability::Cache).await.unwrap();
    drop(w);
    assert_eq!(m.stats().await.tiers[0].used_bytes, used, "an abandoned put frees its space");
    let err = m.begin_put(key(4), 0, None, Durability::Cache).await.unwrap_err();
    assert!(matches!(err, NodeError::Tier(TierError::InvalidSize { .. })));
    let err = m.begin_put(key(4), (512 << 10) + 1, None, Durability::Cache).await.unwrap_err();
    assert!(err.to_string().contains("524289"), "{err}");
}

#[test_log::test(tokio::test)]
async fn transfer_budget_makes_puts_wait_not_grow() {
    let dir = tempfile::tempdir().unwrap();
    let m = open(dir.path()).await;
    // Exhaust the arena's reservation share (2 MiB of 8), then the 4 MiB budget.
    let mut held = Vec::new();
    for i in 0..12 {
        held.push(m.begin_put(key(100 + i), 512 << 10, None, Durability::Cache).await.unwrap());
    }
    let waiting = m.begin_put(key(200), 512 << 10, None, Durability::Cache);
    tokio::pin!(waiting);
    assert!(futures::poll!(waiting.as_mut()).is_pending(), "a put beyond the budget waits");
    held.pop();
    let w = waiting.await.unwrap();
    assert_eq!(w.written(), 0);
}

#[test_log::test(tokio::test(flavor = "multi_thread", worker_threads = 2))]
async fn persist_memory_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let blocks: Vec<Block> = (0..6).map(|i| block(i, 256 << 10)).collect();
    {
        let m = open(dir.path()).await;
        for b in &blocks {
            m.put(b.clone(), Durability::Cache).await.unwrap();
        }
        assert_eq!(m.persist_memory().await, 6);
    }
    let m = open(dir.path()).await;
    for b in &blocks {
        assert!(hit(m.get(&b.key).await).0.data == b.data);
    }
}

#[test_log::test(tokio::test)]
async fn local_disk_without_ssd_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.ssd.enabled = false;
    let m = Manager::open(&c, Metrics::new()).await.unwrap();
    let err = m.put(block(1, 10), Durability::LocalDisk).await.unwrap_err();
    assert!(err.to_string().contains("ssd.enabled"), "{err}");
    // A streamed put is refused at its header, before any byte is received.
    let err = m.begin_put(key(1), 10, None, Durability::LocalDisk).await.unwrap_err();
    assert!(err.to_string().contains("ssd.enabled"), "{err}");
    assert!(m.lookup(&[key(1)]).is_empty(), "nothing was stored");
    // Memory-only: a full arena refuses with NoSpace rather than growing.
    let mut refused = false;
    for i in 0..40 {
        if let Err(e) = m.put(block(i + 10, 512 << 10), Durability::Cache).await {
            assert!(e.as_tier().is_some_and(kvtier_tiers::Error::is_no_space), "{e}");
            refused = true;
        }
    }
    let stats = m.stats().await;
    assert!(stats.tiers[0].used_bytes <= stats.tiers[0].capacity_bytes);
    assert!(refused || stats.dropped > 0, "{stats:?}");
}

#[test_log::test(tokio::test(flavor = "multi_thread", worker_threads = 2))]
async fn a_new_block_size_gets_ssd_room_when_the_ssd_is_full_of_small_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let m = open(dir.path()).await;
    // 4 KiB blocks take every SSD region (15 regions of 263 slots).
    for i in 0..4500 {
        m.put(block(i, 4096), Durability::LocalDisk).await.unwrap();
    }
    let stats = m.stats().await;
    assert!(stats.tiers[1].evictions > 0, "the SSD filled up: {stats:?}");
    // A 512 KiB block needs a region of its own: one must be emptied for it.
    let big = block(100_000, 512 << 10);
    m.put(big.clone(), Durability::LocalDisk).await.expect("a region is drained for the new size");
    assert!(hit(m.get(&big.key).await).0.data == big.data);
    let stats = m.stats().await;
    assert!(stats.tiers[1].used_bytes <= stats.tiers[1].capacity_bytes);
}

#[test_log::test(tokio::test(flavor = "multi_thread", worker_threads = 2))]
async fn a_get_falls_through_to_ssd_when_the_memory_copy_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let m = open(dir.path()).await;
    let b = block(1, 100_000);
    m.put(b.clone(), Durability::LocalDisk).await.unwrap();
    assert_eq!(m.lookup(std::slice::from_ref(&b.key)), [TierKind::Cpu]);
    // The memory copy vanishes behind the index's back (what a racing move looks like).
    m.inner.cpu.delete(&b.key).await.unwrap();
    let (got, tier) = hit(m.get(&b.key).await);
    assert!(got.data == b.data && tier == TierKind::Ssd);
}

#[test_log::test(tokio::test(flavor = "multi_thread", worker_threads = 2))]
async fn a_stale_ssd_read_is_neither_served_nor_promoted() {
    let dir = tempfile::tempdir().unwrap();
    let old = block(1, 100_000);
    {
        let m = open(dir.path()).await;
        m.put(old.clone(), Durability::LocalDisk).await.unwrap();
    }
    let m = open(dir.path()).await;
    // The key is deleted and stored again with other bytes; a read of the old copy that
    // was in flight then completes.
    let new = Block::new(old.key.clone(), pattern(2, 100_000));
    assert!(m.delete(&old.key).await);
    m.put(new.clone(), Durability::Cache).await.unwrap();
    m.inner.promote(old.clone(), TierKind::Ssd).await;
    assert!(hit(m.get(&old.key).await).0.data == new.data, "the old bytes were not promoted over the new ones");
    assert_eq!(m.stats().await.promotions, 0);
}

/// A member of a two-node cluster whose other member is unreachable, with two copies per
/// block and a write quorum of one: this node keeps its own copy of every put.
async fn open_in_pair(dir: &Path) -> Manager {
    let mut c = config(dir);
    c.cluster.node_id = "a".into();
    c.cluster.members = vec!["a=127.0.0.1:9".into(), "b=127.0.0.1:9".into()];
    c.cluster.peer_timeout = std::time::Duration::from_millis(200);
    c.namespaces.insert(
        "test/*".into(),
        crate::config::NamespaceConfig { replicas: Some(2), write_quorum: Some(1), ..Default::default() },
    );
    Manager::open(&c, Metrics::new()).await.unwrap()
}

#[test_log::test(tokio::test(flavor = "multi_thread", worker_threads = 2))]
async fn a_flushed_notice_that_overtakes_the_copy_releases_it_on_arrival() {
    let dir = tempfile::tempdir().unwrap();
    let m = open_in_pair(dir.path()).await;
    // Keys whose primary is the other member: this node holds its copies unflushed until
    // the primary says Blob has them.
    let placement = crate::cluster::Placement::new(["a", "b"]);
    let not_primary: Vec<u64> =
        (0..100).filter(|&i| placement.owners(&crate::keys::placement_key(&key(i)), 2)[0] == "b").take(3).collect();
    let (early, late, deleted) = (not_primary[0], not_primary[1], not_primary[2]);
    // The primary's notice for `early` arrives before this node's copy of it does.
    m.flushed_elsewhere(&[(key(early), Some(block(early, 10_000).crc32c))]).await;
    m.put(block(early, 10_000), Durability::WriteBack).await.unwrap();
    m.put(block(late, 10_000), Durability::WriteBack).await.unwrap();
    assert!(!m.unflushed(&key(early)), "the early notice released the copy");
    assert!(m.unflushed(&key(late)), "a copy no notice named waits for one");
    assert_eq!(m.stats().await.unflushed_bytes, 10_000);
    // A delete forgets an early notice: the key stored again waits for its own.
    m.flushed_elsewhere(&[(key(deleted), Some(block(deleted, 10_000).crc32c))]).await;
    m.delete(&key(deleted)).await;
    m.put(block(deleted, 10_000), Durability::WriteBack).await.unwrap();
    assert!(m.unflushed(&key(deleted)), "a notice from before a delete releases nothing");
    // A notice about other bytes under a key (another version) releases no copy.
    let other =
        (0..200).filter(|&i| placement.owners(&crate::keys::placement_key(&key(i)), 2)[0] == "b").nth(3).unwrap();
    m.flushed_elsewhere(&[(key(other), Some(block(other, 9_999).crc32c))]).await;
    m.put(block(other, 10_000), Durability::WriteBack).await.unwrap();
    m.flushed_elsewhere(&[(key(other), Some(block(other, 9_999).crc32c))]).await;
    assert!(m.unflushed(&key(other)), "neither early nor late");
    m.flushed_elsewhere(&[(key(other), Some(block(other, 10_000).crc32c))]).await;
    assert!(!m.unflushed(&key(other)), "the notice of its own bytes releases it");
}

#[test_log::test(tokio::test(flavor = "multi_thread", worker_threads = 2))]
async fn a_put_asking_more_than_the_copy_here_has_makes_it_so() {
    let dir = tempfile::tempdir().unwrap();
    let m = open(dir.path()).await;
    // A cache copy (memory only), as a read replica or a writer's copy is.
    let b = block(1, 100_000);
    m.put(b.clone(), Durability::Cache).await.unwrap();
    assert!(!m.inner.index.get(&b.key).unwrap().tiers.has(TierKind::Ssd));
    // An owner's copy of the same bytes: now on SSD too.
    let stored = m.put(b.clone(), Durability::LocalDisk).await.unwrap();
    assert_eq!(stored.status, PutStatus::Stored, "an upgrade, not a no-op");
    assert!(m.inner.index.get(&b.key).unwrap().tiers.has(TierKind::Ssd));
    // A write-back copy: marked (a restart would flush it) and flushed to Blob.
    m.put(b.clone(), Durability::WriteBack).await.unwrap();
    let e = m.inner.index.get(&b.key).unwrap();
    assert!(e.durable || e.tiers.has(TierKind::Blob), "{e:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !m.inner.index.get(&b.key).unwrap().tiers.has(TierKind::Blob) {
        assert!(std::time::Instant::now() < deadline, "the upgraded copy was never flushed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Asking no more than what is here is the usual no-op; other bytes under the key too.
    assert_eq!(m.put(b.clone(), Durability::LocalDisk).await.unwrap().status, PutStatus::Existed);
    let other = Block::new(b.key.clone(), pattern(2, 100_000));
    assert_eq!(m.put(other, Durability::WriteBack).await.unwrap().status, PutStatus::Existed);
    assert!(hit(m.get(&b.key).await).0.data == b.data, "the first bytes stay");
}
