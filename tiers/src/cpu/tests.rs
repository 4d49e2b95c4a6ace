use super::*;
use crate::{TierExt, conformance};

fn tier(capacity: u64) -> CpuTier {
    CpuTierBuilder::new(capacity).with_region_size(1 << 20).with_max_block_size(1 << 20).build().unwrap()
}

#[test_log::test(tokio::test)]
async fn conformance_suite() {
    conformance::run_all(
        &conformance::Subject::new(|| Box::pin(async { Ok(Arc::new(tier(8 << 20)) as Arc<dyn Tier>) }))
            .max_block(1 << 20),
    )
    .await;
}

#[test_log::test(tokio::test)]
async fn readers_keep_evicted_slots_alive() {
    let t = tier(1 << 20);
    let key = BlockKey::parse("ns", b"k").unwrap();
    t.put(Block::new(key.clone(), Bytes::from(vec![7u8; 1 << 20]))).await.unwrap();
    let held = t.get(&key).await.unwrap().unwrap();
    assert!(t.delete(&key).await.unwrap());
    // The only slot is still referenced by `held`, so the arena is full.
    let other = BlockKey::parse("ns", b"other").unwrap();
    let err = t.put(Block::new(other.clone(), Bytes::from(vec![1u8; 1 << 20]))).await.unwrap_err();
    assert!(err.is_no_space(), "{err}");
    assert!(held.data.iter().all(|&b| b == 7), "a held read sees its bytes, never a reused slot");
    drop(held);
    t.put(Block::new(other, Bytes::from(vec![1u8; 1 << 20]))).await.unwrap();
}

#[test_log::test(tokio::test)]
async fn reservation_commit_and_abandon() {
    let t = tier(2 << 20);
    let key = BlockKey::parse("ns", b"r").unwrap();
    let mut r = t.reserve(&key, 10).unwrap();
    r.write(b"hello").unwrap();
    assert!(t.commit(key.clone(), r, 0).is_err(), "a half-written reservation cannot commit");
    assert_eq!(t.usage().await.unwrap().used, 0, "an abandoned reservation frees its slot");
    let mut r = t.reserve(&key, 10).unwrap();
    r.write(b"hello").unwrap();
    r.write(b"world").unwrap();
    assert!(r.write(b"!").is_err());
    assert_eq!(t.commit(key.clone(), r, crate::crc32c(b"helloworld")).unwrap(), PutStatus::Stored);
    assert_eq!(&t.get(&key).await.unwrap().unwrap().data[..], b"helloworld");
    assert!(t.memfd().is_some());
}
