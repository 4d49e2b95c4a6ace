//! The conformance suite: what every [`Tier`] must do, as async functions over `dyn Tier`.
//!
//! Every implementation (and every wrapper, and the gRPC-backed tier of the block manager)
//! runs [`run_all`] from its own tests. Differences in capability are parameters of
//! [`Subject`], not forks of the suite. Compiled for tests and under the `conformance`
//! feature. The emulators it is run against (Azurite, moto) are in `kvtier_testkit`.

use std::{fmt, sync::Arc};

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::{Block, BlockKey, Error, PutStatus, Result, Tier, TierExt};

type Open = Box<dyn Fn() -> BoxFuture<'static, Result<Arc<dyn Tier>>> + Send + Sync>;
type Corrupt = Box<dyn Fn(Arc<dyn Tier>, BlockKey) -> BoxFuture<'static, ()> + Send + Sync>;

/// A tier under test and what it can do.
pub struct Subject {
    open: Open,
    max_block: u64,
    persistent: bool,
    corrupt: Option<Corrupt>,
    bounded: bool,
}

impl fmt::Debug for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subject")
            .field("max_block", &self.max_block)
            .field("persistent", &self.persistent)
            .field("corruptible", &self.corrupt.is_some())
            .finish()
    }
}

impl Subject {
    /// `open` returns the tier; for a persistent tier, each call reopens the same storage
    /// (the suite drops the previous handle first).
    pub fn new(open: impl Fn() -> BoxFuture<'static, Result<Arc<dyn Tier>>> + Send + Sync + 'static) -> Self {
        Subject { open: Box::new(open), max_block: 1 << 20, persistent: false, corrupt: None, bounded: true }
    }

    /// The tier's maximum block size. Default 1 MiB.
    pub fn max_block(mut self, bytes: u64) -> Self {
        self.max_block = bytes;
        self
    }

    /// Blocks survive dropping and reopening the tier. Default false.
    pub fn persistent(mut self, yes: bool) -> Self {
        self.persistent = yes;
        self
    }

    /// How to damage a stored block's bytes behind the tier's back (for tiers that verify
    /// checksums on read). Default: none, the corruption test is skipped.
    pub fn corrupt(
        mut self,
        f: impl Fn(Arc<dyn Tier>, BlockKey) -> BoxFuture<'static, ()> + Send + Sync + 'static,
    ) -> Self {
        self.corrupt = Some(Box::new(f));
        self
    }

    /// Whether filling the tier ends in `NoSpace` (false for a tier that evicts on its
    /// own, such as a whole server). Default true.
    pub fn bounded(mut self, yes: bool) -> Self {
        self.bounded = yes;
        self
    }

    async fn open(&self) -> Arc<dyn Tier> {
        (self.open)().await.expect("opening the tier under test")
    }
}

pub use kvtier_testkit::pattern;

fn key(ns: &str, i: u64) -> BlockKey {
    BlockKey::parse(ns, &i.to_be_bytes()).expect("valid key")
}

fn block(ns: &str, i: u64, len: usize) -> Block {
    Block::new(key(ns, i), pattern(i, len))
}

/// Runs every test that applies to `subject`.
pub async fn run_all(subject: &Subject) {
    round_trip(subject).await;
    partial_batch_hits(subject).await;
    idempotent_reput(subject).await;
    bad_sizes_fail_alone(subject).await;
    delete_frees(subject).await;
    if subject.bounded {
        capacity_held(subject).await;
    }
    if subject.corrupt.is_some() {
        corrupt_block_reads_as_miss(subject).await;
    }
    if subject.persistent {
        reopen_recovers(subject).await;
    }
}

/// Blocks of many sizes come back byte-exact with their checksums.
pub async fn round_trip(subject: &Subject) {
    let tier = subject.open().await;
    let max = subject.max_block as usize;
    let sizes = [1, 100, 4095, 4096, 4097, 65_536, max / 2 + 1, max];
    let blocks: Vec<Block> = sizes.iter().enumerate().map(|(i, &len)| block("conf/rt", i as u64, len)).collect();
    for r in tier.put_batch(&blocks).await {
        assert_eq!(r.expect("put"), PutStatus::Stored);
    }
    let keys: Vec<BlockKey> = blocks.iter().map(|b| b.key.clone()).collect();
    let got = tier.get_batch(&keys).await;
    for (b, g) in blocks.iter().zip(got) {
        let g = g.expect("get").unwrap_or_else(|| panic!("{tier}: {} missing after put", b.key));
        assert_eq!(g.key, b.key);
        assert!(g.data == b.data, "{tier}: bytes of {} ({} bytes) differ", b.key, b.len());
        assert_eq!(g.crc32c, b.crc32c);
    }
    assert!(tier.contains_batch(&keys).await.unwrap().iter().all(|&c| c));
    tier.delete_batch(&keys).await;
}

/// A batch answers per key, in order, hits and misses mixed.
pub async fn partial_batch_hits(subject: &Subject) {
    let tier = subject.open().await;
    let (a, c) = (block("conf/pb", 1, 1000), block("conf/pb", 3, 3000));
    tier.put_batch(&[a.clone(), c.clone()]).await.into_iter().for_each(|r| {
        r.unwrap();
    });
    let keys = [a.key.clone(), key("conf/pb", 2), c.key.clone(), key("conf/other-ns", 1)];
    let got: Vec<Option<Block>> = tier.get_batch(&keys).await.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(got.iter().map(Option::is_some).collect::<Vec<_>>(), [true, false, true, false]);
    assert!(got[2].as_ref().unwrap().data == c.data, "answers stay in request order");
    assert_eq!(tier.contains_batch(&keys).await.unwrap(), [true, false, true, false], "namespaces are separate");
    tier.delete_batch(&keys).await;
}

/// A second put of a key writes nothing and says so.
pub async fn idempotent_reput(subject: &Subject) {
    let tier = subject.open().await;
    let b = block("conf/re", 1, 5000);
    assert_eq!(tier.put(b.clone()).await.unwrap(), PutStatus::Stored);
    let before = tier.usage().await.unwrap();
    let other_bytes = Block::new(b.key.clone(), pattern(99, 5000));
    assert_eq!(tier.put(other_bytes).await.unwrap(), PutStatus::Existed);
    assert_eq!(tier.usage().await.unwrap(), before);
    assert!(tier.get(&b.key).await.unwrap().unwrap().data == b.data, "the first bytes stay");
    tier.delete(&b.key).await.unwrap();
}

/// Empty and oversized blocks are refused with a clear error; the rest of the batch lands.
pub async fn bad_sizes_fail_alone(subject: &Subject) {
    let tier = subject.open().await;
    let good = block("conf/bad", 1, 10);
    let empty = Block::new(key("conf/bad", 2), Bytes::new());
    let huge = block("conf/bad", 3, subject.max_block as usize + 1);
    let results = tier.put_batch(&[empty, good.clone(), huge]).await;
    for i in [0, 2] {
        match &results[i] {
            Err(e @ Error::InvalidSize { .. }) => {
                assert!(e.to_string().contains("conf/bad/"), "error names the key: {e}")
            }
            other => panic!("{tier}: bad size answered {other:?}"),
        }
    }
    assert_eq!(*results[1].as_ref().unwrap(), PutStatus::Stored);
    assert_eq!(tier.contains_batch(&[key("conf/bad", 2), key("conf/bad", 3)]).await.unwrap(), [false, false]);
    tier.delete(&good.key).await.unwrap();
}

/// Delete answers whether the key was there and gives its space back.
pub async fn delete_frees(subject: &Subject) {
    let tier = subject.open().await;
    let before = tier.usage().await.unwrap();
    let b = block("conf/del", 1, 70_000);
    tier.put(b.clone()).await.unwrap();
    assert!(tier.usage().await.unwrap().used > before.used);
    assert_eq!(
        tier.delete_batch(&[b.key.clone(), key("conf/del", 2)])
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect::<Vec<_>>(),
        [true, false]
    );
    assert!(tier.get(&b.key).await.unwrap().is_none());
    assert_eq!(tier.usage().await.unwrap(), before);
}

/// Filling the tier ends in `NoSpace` without exceeding capacity; evicting the tier's own
/// candidates makes room again.
pub async fn capacity_held(subject: &Subject) {
    let tier = subject.open().await;
    let len = (subject.max_block / 2) as usize;
    let capacity = tier.usage().await.unwrap().capacity;
    let limit = capacity / len as u64 + 8;
    let mut stored = Vec::new();
    let mut refused = None;
    for i in 0..limit {
        let b = block("conf/cap", i, len);
        match tier.put(b.clone()).await {
            Ok(_) => stored.push(b),
            Err(e) => {
                assert!(e.is_no_space(), "{tier}: a full tier answers NoSpace, got {e}");
                refused = Some(b);
                break;
            }
        }
        let u = tier.usage().await.unwrap();
        assert!(u.used <= u.capacity, "{tier}: used {} > capacity {}", u.used, u.capacity);
    }
    let refused =
        refused.unwrap_or_else(|| panic!("{tier}: {limit} puts of {len} bytes never filled {capacity} bytes"));
    let victims = tier.eviction_candidates(len as u64, 4);
    assert!(!victims.is_empty(), "{tier}: a full tier names eviction candidates");
    tier.delete_batch(&victims).await;
    assert_eq!(tier.put(refused.clone()).await.unwrap(), PutStatus::Stored, "{tier}: evicting candidates made room");
    for b in stored.iter().filter(|b| !victims.contains(&b.key)) {
        assert!(tier.get(&b.key).await.unwrap().unwrap().data == b.data, "{tier}: survivors are intact");
    }
    let mut all: Vec<BlockKey> = stored.into_iter().map(|b| b.key).collect();
    all.push(refused.key);
    tier.delete_batch(&all).await;
}

/// A block damaged behind the tier's back reads as a checksum error once, then as a miss.
pub async fn corrupt_block_reads_as_miss(subject: &Subject) {
    let tier = subject.open().await;
    let (good, bad) = (block("conf/crc", 1, 9000), block("conf/crc", 2, 9000));
    tier.put_batch(&[good.clone(), bad.clone()]).await;
    (subject.corrupt.as_ref().expect("corruptible"))(tier.clone(), bad.key.clone()).await;
    let got = tier.get_batch(&[good.key.clone(), bad.key.clone()]).await;
    assert!(got[0].as_ref().unwrap().as_ref().unwrap().data == good.data);
    match &got[1] {
        Err(e @ Error::ChecksumMismatch { .. }) => assert!(e.to_string().contains("conf/crc/"), "{e}"),
        other => panic!("{tier}: a damaged block answered {other:?}, not a checksum error"),
    }
    assert!(tier.get(&bad.key).await.unwrap().is_none(), "the damaged copy is dropped");
    tier.delete_batch(&[good.key, bad.key]).await;
}

/// Blocks survive a reopen; deleted blocks stay deleted.
pub async fn reopen_recovers(subject: &Subject) {
    let tier = subject.open().await;
    let blocks: Vec<Block> = (0..20).map(|i| block("conf/reopen", i, 1000 + i as usize * 3000)).collect();
    tier.put_batch(&blocks).await.into_iter().for_each(|r| {
        r.unwrap();
    });
    tier.delete(&blocks[3].key).await.unwrap();
    let used = tier.usage().await.unwrap().used;
    drop(tier);
    let tier = subject.open().await;
    assert_eq!(tier.usage().await.unwrap().used, used, "{tier}: usage is rebuilt exactly");
    for (i, b) in blocks.iter().enumerate() {
        let got = tier.get(&b.key).await.unwrap();
        if i == 3 {
            assert!(got.is_none(), "{tier}: a deleted block came back after reopen");
        } else {
            assert!(got.expect("recovered").data == b.data, "{tier}: {} changed across reopen", b.key);
        }
    }
    let more = block("conf/reopen", 100, 4096);
    assert_eq!(tier.put(more.clone()).await.unwrap(), PutStatus::Stored, "a reopened tier takes new blocks");
    let keys: Vec<BlockKey> = blocks.into_iter().map(|b| b.key).chain([more.key]).collect();
    tier.delete_batch(&keys).await;
}

/// Flips a bit of `key`'s bytes in the Blob segment holding it under `url` (with the
/// store's `options`), as damage at rest would.
pub async fn damage_blob_copy(url: &str, options: Vec<(String, String)>, key: &BlockKey) {
    crate::blob::damage_copy(url, options, key).await
}
