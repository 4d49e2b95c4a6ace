//! What both G4 clients (KVBM's S3 client against kvtier's S3 endpoint, kvtier's native
//! client) must do, as one body each test file runs with its client.

#![allow(dead_code, reason = "each test file uses what it needs")]

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::future::{BoxFuture, join_all};
use kvbm_engine::{
    SequenceHash,
    object::{LayoutConfigExt, ObjectBlockOps, ObjectLockManager},
};

/// A sequence of KVBM blocks' hashes: positions 0.., each past the first naming its parent.
pub fn chain(n: usize, seed: u64) -> Vec<SequenceHash> {
    let mut hash = SequenceHash::root(seed);
    let mut hashes = vec![hash];
    for i in 1..n {
        hash = hash.extend(seed.rotate_left(i as u32) ^ i as u64);
        hashes.push(hash);
    }
    hashes
}

/// What KVBM's offload and onboard do: blocks of a host-memory KV layout (2 layers, K and V,
/// 16 tokens of 128 bf16 each, fully contiguous) put by block id under their hashes through
/// `writer`; then through each of `readers` (one per member), `has_blocks` finds each with
/// its size (one never put: missing), and the blocks come back byte-exact into a layout of
/// another shape (layer-separate: each layer's K and V a region of its own) at other block
/// ids, a hash never put failing alone. A KVBM layout is registered with NIXL even in host
/// memory: this needs NIXL's runtime (`libnixl_capi.so` and its POSIX plugin, from the
/// `nixl-cu12` wheel scripts/dynamo.sh installs).
pub async fn kv_layouts_round_trip_through_every_member(
    writer: Arc<dyn ObjectBlockOps>,
    readers: Vec<Arc<dyn ObjectBlockOps>>,
    seed: u64,
) {
    use kvbm_physical::{
        testing::{TransferChecksums, create_fc_layout, create_lw_layout, create_test_agent_with_backends},
        transfer::{FillPattern, StorageKind},
    };
    let agent = create_test_agent_with_backends("kvtier-g4", &["POSIX"]).expect("a NIXL agent (libnixl_capi.so)");
    let (blocks, ids): (usize, Vec<usize>) = (8, vec![0, 3, 5, 7]);
    let hashes = chain(ids.len(), seed);
    let source = create_fc_layout(agent.clone(), StorageKind::System, blocks);
    let block_size = source.layout().config().block_size_bytes();
    let sums = TransferChecksums::fill_and_capture(&source, &ids, FillPattern::Sequential).expect("filled");
    let put = writer.put_blocks_with_layout(hashes.clone(), source, ids.clone()).await;
    assert!(put.iter().all(Result::is_ok), "puts: {put:?}");
    let absent = SequenceHash::root(seed ^ 0xdead);
    for (r, reader) in readers.iter().enumerate() {
        let asked: Vec<SequenceHash> = hashes.iter().copied().chain([absent]).collect();
        let found: HashMap<SequenceHash, Option<usize>> = reader.has_blocks(asked).await.into_iter().collect();
        assert_eq!(found.len(), hashes.len() + 1);
        assert!(hashes.iter().all(|h| found[h] == Some(block_size)), "sizes through reader {r}: {found:?}");
        assert_eq!(found[&absent], None, "through reader {r}");
        // Other block ids on the way back: what the reader's free list hands out.
        let target = create_lw_layout(agent.clone(), StorageKind::System, blocks);
        let into: Vec<usize> = vec![1, 2, 4, 6];
        let got = reader.get_blocks_with_layout(hashes.clone(), target.clone(), into.clone()).await;
        assert!(got.iter().all(Result::is_ok), "gets through reader {r}: {got:?}");
        sums.verify_against(&target, &into).expect("the blocks come back byte-exact");
        let mut asked = hashes[..2].to_vec();
        asked.push(absent);
        let got = reader.get_blocks_with_layout(asked.clone(), target, vec![1, 2, 4]).await;
        let failed: Vec<SequenceHash> = got.iter().filter_map(|r| r.err()).collect();
        assert_eq!(failed, vec![absent], "through reader {r}: {got:?}");
    }
}

/// Makes the lock manager of racer `r` (spread over the members), instance `id`, its locks
/// held for the duration given.
pub type Locks = Arc<dyn Fn(usize, String, Duration) -> Arc<dyn ObjectLockManager> + Send + Sync>;
/// The instance holding a hash's lock, as the lock object says (`None`: no lock).
pub type Holder = Arc<dyn Fn(SequenceHash) -> BoxFuture<'static, Option<String>> + Send + Sync>;

/// Every one of `racers` instances tries each hash's lock at once; who won each.
async fn race(
    locks: &Locks,
    hashes: &[SequenceHash],
    racers: usize,
    round: &str,
    timeout: Duration,
) -> Vec<(SequenceHash, Vec<String>)> {
    let tries = hashes.iter().flat_map(|h| (0..racers).map(move |r| (*h, r))).map(|(hash, r)| {
        let id = format!("{round}-{r}");
        let manager = locks(r, id.clone(), timeout);
        async move { (hash, id, manager.try_acquire_lock(hash).await.expect("a lock attempt")) }
    });
    let outcomes = join_all(tries).await;
    hashes
        .iter()
        .map(|h| (*h, outcomes.iter().filter(|(o, _, won)| o == h && *won).map(|(_, id, _)| id.clone()).collect()))
        .collect()
}

/// KVBM's G4 locks raced through every member: a fresh lock has one winner; one past its
/// deadline is taken over by exactly one racer (the wall clock decides); a held lock is won
/// by nobody else; released, it is free again; the meta marks a block done.
pub async fn lock_races_have_one_winner_per_hash(locks: Locks, holder: Holder, seed: u64) {
    let hashes = chain(6, seed);
    for (hash, won) in race(&locks, &hashes, 12, "fresh", Duration::from_secs(300)).await {
        assert_eq!(won.len(), 1, "{hash}: {won:?}");
        assert_eq!(holder(hash).await, Some(won[0].clone()));
    }
    let expired = chain(6, seed ^ 1);
    let brief = locks(0, "brief".into(), Duration::from_millis(1));
    for hash in &expired {
        assert!(brief.try_acquire_lock(*hash).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    for (hash, won) in race(&locks, &expired, 12, "takeover", Duration::from_secs(300)).await {
        assert_eq!(won.len(), 1, "{hash}: {won:?}");
        assert_eq!(holder(hash).await, Some(won[0].clone()));
    }
    for (hash, won) in race(&locks, &hashes, 4, "late", Duration::from_secs(300)).await {
        assert!(won.is_empty(), "{hash}: {won:?} took a held lock");
    }
    let first = locks(0, "finisher".into(), Duration::from_secs(300));
    for hash in &hashes {
        let owner = holder(*hash).await.expect("held");
        let manager = locks(1, owner, Duration::from_secs(300));
        assert!(!first.has_meta(*hash).await.unwrap());
        manager.create_meta(*hash).await.unwrap();
        manager.release_lock(*hash).await.unwrap();
        assert!(first.has_meta(*hash).await.unwrap());
        assert!(first.try_acquire_lock(*hash).await.unwrap(), "a released lock is free");
    }
}

/// Lock puts racing deletes: holders take and release one lock again and again while others
/// take it over (deadlines already past); each attempt wins, loses, or fails as `may_fail`
/// allows, and the lock object is only ever a whole lock of one racer. How many failed.
pub async fn lock_puts_racing_deletes_leave_only_whole_locks(
    locks: Locks,
    holder: Holder,
    hash: SequenceHash,
    may_fail: fn(&str) -> bool,
) -> usize {
    let errors = Arc::new(AtomicUsize::new(0));
    let racers = (0..8).map(|r| {
        let (manager, errors) = (locks(r, format!("churn-{r}"), Duration::ZERO), errors.clone());
        async move {
            for _ in 0..15 {
                match manager.try_acquire_lock(hash).await {
                    Ok(true) => manager.release_lock(hash).await.expect("a release"),
                    Ok(false) => {}
                    Err(e) => {
                        let e = format!("{e:#}");
                        assert!(may_fail(&e), "an unclear error: {e}");
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    });
    join_all(racers).await;
    if let Some(owner) = holder(hash).await {
        assert!(owner.starts_with("churn-"), "{owner}");
    }
    errors.load(Ordering::Relaxed)
}
