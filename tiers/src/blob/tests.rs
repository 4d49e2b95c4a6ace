//! The Blob tier against the local-directory backend and a real Azurite (started by
//! `scripts/azurite.sh`, which installs it from npm on first use).

use std::sync::Arc;

use super::BlobTierBuilder;
use kvtier_testkit::Azurite;

use crate::{Tier, conformance::Subject};

fn subject(url: String, options: Vec<(String, String)>) -> Subject {
    let (url2, options2) = (url.clone(), options.clone());
    Subject::new(move || {
        let (url, options) = (url.clone(), options.clone());
        Box::pin(async move {
            let builder = BlobTierBuilder::new(url).options(options).segment_size(256 << 10).max_block_size(1 << 20);
            Ok(Arc::new(builder.open().await?) as Arc<dyn Tier>)
        })
    })
    .persistent(true)
    .bounded(false)
    .corrupt(move |_tier, key| {
        let (url, options) = (url2.clone(), options2.clone());
        Box::pin(async move { crate::conformance::damage_blob_copy(&url, options, &key).await })
    })
}

#[tokio::test]
async fn the_local_directory_backend_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    crate::conformance::run_all(&subject(format!("file://{}/kv", dir.path().display()), Vec::new())).await;
}

#[tokio::test]
async fn azurite_passes_the_conformance_suite() {
    let azurite = Azurite::start();
    crate::conformance::run_all(&subject("az://kvtier/conformance".into(), azurite.options())).await;
}

#[tokio::test]
async fn an_s3_compatible_store_passes_the_conformance_suite() {
    let s3 = kvtier_testkit::S3Server::start();
    crate::conformance::run_all(&subject("s3://kvtier/conformance".into(), s3.options())).await;
}

#[tokio::test]
async fn blocks_are_packed_into_few_segments_and_foreign_objects_are_skipped() {
    use crate::{Block, BlockKey, TierExt, conformance::pattern};
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/kv", dir.path().display());
    let tier = BlobTierBuilder::new(&url).segment_size(1 << 20).open().await.unwrap();
    let blocks: Vec<Block> =
        (0..64).map(|i| Block::new(BlockKey::parse("t/m", &[i as u8; 8]).unwrap(), pattern(i, 64 << 10))).collect();
    assert!(tier.put_batch(&blocks).await.into_iter().all(|r| r.is_ok()));
    let count = |d: &str| std::fs::read_dir(dir.path().join("kv").join(d)).map_or(0, |r| r.count());
    // One PUT per segment: its index is in its footer.
    assert_eq!((count("seg"), count("idx")), (4, 0), "64 blocks of 64 KiB in 1 MiB segments");
    assert_eq!(tier.requests().puts, 4);

    // A segment of the earlier format (its index an `idx` object written after it) still
    // reads; a torn index and an object that is not ours are skipped on reopen.
    let legacy = Block::new(BlockKey::parse("t/m", b"legacy").unwrap(), pattern(7, 5000));
    let entry = super::format::Entry { key: legacy.key.clone(), offset: 0, len: 5000, crc32c: legacy.crc32c };
    std::fs::create_dir_all(dir.path().join("kv/idx")).unwrap();
    std::fs::write(dir.path().join("kv/seg/0000000000000100-00000001.seg"), &legacy.data).unwrap();
    std::fs::write(dir.path().join("kv/idx/0000000000000100-00000001.idx"), super::format::encode_index(&[entry]))
        .unwrap();
    std::fs::write(dir.path().join("kv/idx/00000000000000ff-00000001.idx"), b"KVTBLOB1 torn").unwrap();
    std::fs::write(dir.path().join("kv/idx/readme.txt"), b"hello").unwrap();
    // A segment whose footer is damaged (a bit flipped in its index) and one whose trailer
    // names more bytes than it has: skipped with a warning, never read as an index.
    let mut damaged = legacy.data.to_vec();
    let footer = super::format::encode_footer(&[super::format::Entry {
        key: BlockKey::parse("t/m", b"damaged").unwrap(),
        offset: 0,
        len: 5000,
        crc32c: legacy.crc32c,
    }]);
    damaged.extend_from_slice(&footer);
    let flip = damaged.len() - footer.len() + 20;
    damaged[flip] ^= 0x01;
    std::fs::write(dir.path().join("kv/seg/0000000000000101-00000001.seg"), &damaged).unwrap();
    let mut overlong = vec![0u8; 100];
    overlong.extend_from_slice(&u64::MAX.to_le_bytes());
    overlong.extend_from_slice(b"KVTSEGF1");
    std::fs::write(dir.path().join("kv/seg/0000000000000102-00000001.seg"), &overlong).unwrap();
    drop(tier);
    let tier = BlobTierBuilder::new(&url).open().await.unwrap();
    assert_eq!(tier.usage().await.unwrap().blocks, 64 + 1);
    assert_eq!(tier.get(&blocks[63].key).await.unwrap().unwrap().data, blocks[63].data);
    assert_eq!(tier.get(&legacy.key).await.unwrap().unwrap().data, legacy.data);
    assert!(tier.get(&BlockKey::parse("t/m", b"damaged").unwrap()).await.unwrap().is_none());
    // A new segment after the torn record's number never reuses its name.
    let more = Block::new(BlockKey::parse("t/m", b"more").unwrap(), pattern(99, 1000));
    tier.put(more.clone()).await.unwrap();
    assert_eq!(tier.get(&more.key).await.unwrap().unwrap().data, more.data);

    // A torn segment (cut short after its index was written): blocks past the cut are
    // errors, never short or wrong bytes; those before it still read.
    let mut segs: Vec<_> = std::fs::read_dir(dir.path().join("kv/seg")).unwrap().map(|e| e.unwrap().path()).collect();
    segs.sort();
    let first = std::fs::OpenOptions::new().write(true).open(&segs[0]).unwrap();
    first.set_len(8 << 10).unwrap(); // blocks 0..16 of 64 KiB lived here
    drop(first);
    let err = tier.get(&blocks[0].key).await.unwrap_err().to_string();
    assert!(err.contains("checksum"), "cut short in this block: {err}");
    assert!(tier.get(&blocks[15].key).await.is_err(), "past the end: an error");
    assert_eq!(tier.get(&blocks[16].key).await.unwrap().unwrap().data, blocks[16].data);
}

#[tokio::test]
async fn a_bad_url_or_an_unreachable_store_is_a_clear_error() {
    let err = BlobTierBuilder::new("not a url").open().await.unwrap_err();
    assert!(err.to_string().contains("blob.url"), "{err}");
    let err = BlobTierBuilder::new("ftp://host/x").open().await.unwrap_err();
    assert!(err.to_string().contains("blob.url"), "{err}");
    // A misspelt option is refused by name, not dropped (which would fall back to other
    // credentials); a local directory takes no options.
    let misspelt = [("azure_storage_acount_name".to_string(), "x".to_string())];
    let err = BlobTierBuilder::new("az://c/p").options(misspelt.clone()).open().await.unwrap_err();
    assert!(err.to_string().contains("blob.options") && err.to_string().contains("azure_storage_acount_name"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let err = BlobTierBuilder::new(url).options(misspelt).open().await.unwrap_err();
    assert!(err.to_string().contains("azure_storage_acount_name"), "{err}");
    // Azure at a port where nothing listens: the list at open fails, naming the object.
    let err = BlobTierBuilder::new("az://c/p")
        .options([
            ("azure_storage_account_name".to_string(), "devstoreaccount1".to_string()),
            ("azure_storage_account_key".to_string(), "a2V5".to_string()),
            ("azure_storage_endpoint".to_string(), "http://127.0.0.1:9/devstoreaccount1".to_string()),
            ("azure_allow_http".to_string(), "true".to_string()),
            ("azure_skip_signature".to_string(), "false".to_string()),
        ])
        .open()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("list") && err.to_string().contains("p/idx"), "{err}");
}

#[tokio::test]
async fn wrong_credentials_and_a_missing_container_are_clear_errors() {
    let azurite = Azurite::start();
    let mut wrong = azurite.options();
    wrong[1].1 = "d3Jvbmcga2V5IHdyb25nIGtleSB3cm9uZyBrZXk=".into();
    let err = BlobTierBuilder::new("az://kvtier/p").options(wrong).open().await.unwrap_err().to_string();
    assert!(err.contains("list p/idx") && err.contains("403"), "{err}");
    let err = BlobTierBuilder::new("az://no-such-container/p").options(azurite.options()).open().await.unwrap_err();
    let err = err.to_string();
    assert!(err.contains("list p/idx") && err.contains("ContainerNotFound"), "{err}");
}

#[tokio::test]
async fn compaction_rewrites_sparse_segments_and_what_it_keeps_survives_a_reopen() {
    use crate::{Block, BlockKey, TierExt, conformance::pattern};
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/kv", dir.path().display());
    let open = || BlobTierBuilder::new(&url).segment_size(256 << 10).open();
    let tier = open().await.unwrap();
    let blocks: Vec<Block> =
        (0..12).map(|i| Block::new(BlockKey::parse("t/m", &[i as u8; 8]).unwrap(), pattern(i, 64 << 10))).collect();
    tier.put_batch(&blocks).await.into_iter().for_each(|r| assert!(r.is_ok()));
    let count = |d: &str| std::fs::read_dir(dir.path().join("kv").join(d)).map_or(0, |r| r.count());
    assert_eq!(count("seg"), 3, "12 blocks of 64 KiB in 256 KiB segments");
    // Segment 1: 3 of 4 deleted (25% live). Segment 2: all deleted. Segment 3: untouched.
    let gone: Vec<BlockKey> = [0, 1, 2, 4, 5, 6, 7].iter().map(|&i| blocks[i].key.clone()).collect();
    assert!(tier.delete_batch(&gone).await.into_iter().all(|r| r.unwrap()));
    let used = tier.usage().await.unwrap().used;

    let report = tier.compact(0.5).await.unwrap();
    assert_eq!((report.segments_removed, report.blocks_moved), (2, 1), "{report:?}");
    // The deletion record stays: segment 3 is older than it (records are kept conservatively).
    assert_eq!(report.deletions_removed, 0);
    assert_eq!((count("seg"), count("idx"), count("del")), (2, 0, 1));
    assert_eq!(tier.usage().await.unwrap().used, used, "compaction moves bytes, it does not lose them");
    assert_eq!(tier.compact(0.5).await.unwrap(), super::Compaction::default(), "nothing left to do");
    // Once every segment older than it is gone, so is the deletion record.
    let rest: Vec<BlockKey> = (8..12).map(|i| blocks[i].key.clone()).collect();
    tier.delete_batch(&rest).await;
    let report = tier.compact(0.5).await.unwrap();
    assert_eq!((report.segments_removed, report.deletions_removed), (1, 1), "{report:?}");
    let used = tier.usage().await.unwrap().used;

    drop(tier);
    let tier = open().await.unwrap();
    assert_eq!(tier.usage().await.unwrap().used, used);
    for (i, b) in blocks.iter().enumerate() {
        let got = tier.get(&b.key).await.unwrap();
        if gone.contains(&b.key) || i >= 8 {
            assert!(got.is_none(), "block {i} was deleted");
        } else {
            assert_eq!(got.expect("kept").data, b.data, "block {i}");
        }
    }
}

#[tokio::test]
async fn compaction_removes_segments_no_index_names_once_old_enough() {
    use crate::{Block, BlockKey, conformance::pattern};
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/kv", dir.path().display());
    let tier = BlobTierBuilder::new(&url).open().await.unwrap();
    let block = Block::new(BlockKey::parse("t/m", b"kept").unwrap(), pattern(1, 4096));
    tier.put_batch(std::slice::from_ref(&block)).await.into_iter().for_each(|r| assert!(r.is_ok()));
    // An upload of the earlier format whose index never landed.
    std::fs::write(dir.path().join("kv/seg/00000000000000ff-00000001.seg"), vec![7u8; 4096]).unwrap();
    // A whole segment (its index in its footer) this tier never loaded: another writer's,
    // made after this load.
    let named: Vec<_> = std::fs::read_dir(dir.path().join("kv/seg")).unwrap().map(|e| e.unwrap().path()).collect();
    let other = dir.path().join("kv/seg/00000000000001ff-00000002.seg");
    std::fs::copy(named.iter().find(|p| !p.ends_with("00000000000000ff-00000001.seg")).unwrap(), &other).unwrap();
    let count = || std::fs::read_dir(dir.path().join("kv/seg")).unwrap().count();
    assert_eq!(tier.compact(0.5).await.unwrap().orphans_removed, 0, "younger than an hour: maybe in flight");
    assert_eq!(count(), 3);
    assert_eq!(tier.compact_with(0.5, std::time::Duration::ZERO).await.unwrap().orphans_removed, 1);
    assert_eq!(count(), 2, "the named segment stays, and so does the whole one another writer made");
    assert!(other.exists());
    use crate::TierExt;
    assert!(tier.get(&block.key).await.unwrap().unwrap() == block);
}

/// A read that looked a block's location up before a compaction moved it (and removed the
/// old segment) reads it where it is now: it answered "not here", and the node then dropped
/// a copy Blob still held from its index (a delete marker kept only in Blob was lost on
/// two owners in the 1000-fault run at e81cca5; this is one way it can go).
#[tokio::test]
async fn a_read_racing_a_compaction_finds_the_block_where_it_moved() {
    use crate::{Block, BlockKey, TierExt, conformance::pattern};
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/kv", dir.path().display());
    let tier = BlobTierBuilder::new(&url).segment_size(256 << 10).open().await.unwrap();
    let blocks: Vec<Block> =
        (0..4).map(|i| Block::new(BlockKey::parse("t/m", &[i as u8; 8]).unwrap(), pattern(i, 64 << 10))).collect();
    tier.put_batch(&blocks).await.into_iter().for_each(|r| assert!(r.is_ok()));
    let gone: Vec<BlockKey> = blocks[1..].iter().map(|b| b.key.clone()).collect();
    assert!(tier.delete_batch(&gone).await.into_iter().all(|r| r.unwrap()));
    let looked_up = tier.state.lock().index.get(&blocks[0].key).cloned();

    let report = tier.compact(0.5).await.unwrap();
    assert_eq!((report.segments_removed, report.blocks_moved), (1, 1), "{report:?}");
    let read = tier.read_one(&blocks[0].key, looked_up).await.unwrap();
    assert!(read.is_some_and(|b| b == blocks[0]), "read where it moved");
    assert!(tier.get(&blocks[0].key).await.unwrap().is_some_and(|b| b == blocks[0]), "and still indexed");
}
