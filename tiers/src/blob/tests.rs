//! The Blob tier against the local-directory backend (the same suite runs against Azurite
//! in blockmgr's tests, where the test command starts one).

use std::sync::Arc;

use super::{BlobTierBuilder, format};
use crate::{Tier, conformance::Subject};

fn subject(dir: &std::path::Path) -> Subject {
    let url = format!("file://{}/kv", dir.display());
    let root = dir.join("kv");
    Subject::new(move || {
        let url = url.clone();
        Box::pin(async move {
            let tier = BlobTierBuilder::new(url).segment_size(256 << 10).max_block_size(1 << 20).open().await?;
            Ok(Arc::new(tier) as Arc<dyn Tier>)
        })
    })
    .persistent(true)
    .bounded(false)
    .corrupt(move |_tier, key| {
        let root = root.clone();
        Box::pin(async move { flip_a_byte_of(&root, &key) })
    })
}

/// Damages `key`'s bytes in whichever segment file its index names.
pub(crate) fn flip_a_byte_of(root: &std::path::Path, key: &crate::BlockKey) {
    for idx in std::fs::read_dir(root.join("idx")).unwrap() {
        let idx = idx.unwrap().path();
        let entries = format::decode_index(&std::fs::read(&idx).unwrap()).unwrap();
        if let Some(e) = entries.iter().find(|e| &e.key == key) {
            let seg = root.join("seg").join(idx.file_name().unwrap()).with_extension("seg");
            let mut bytes = std::fs::read(&seg).unwrap();
            bytes[(e.offset + e.len / 2) as usize] ^= 0x40;
            std::fs::write(&seg, bytes).unwrap();
            return;
        }
    }
    panic!("{key} is in no index");
}

#[tokio::test]
async fn the_local_directory_backend_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    crate::conformance::run_all(&subject(dir.path())).await;
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
    let count = |d: &str| std::fs::read_dir(dir.path().join("kv").join(d)).unwrap().count();
    assert_eq!((count("seg"), count("idx")), (4, 4), "64 blocks of 64 KiB in 1 MiB segments");

    // A torn index and an object that is not ours: skipped on reopen, the rest served.
    std::fs::write(dir.path().join("kv/idx/00000000000000ff-00000001.idx"), b"KVTBLOB1 torn").unwrap();
    std::fs::write(dir.path().join("kv/idx/readme.txt"), b"hello").unwrap();
    drop(tier);
    let tier = BlobTierBuilder::new(&url).open().await.unwrap();
    assert_eq!(tier.usage().await.unwrap().blocks, 64);
    assert_eq!(tier.get(&blocks[63].key).await.unwrap().unwrap().data, blocks[63].data);
    // A new segment after the torn record's number never reuses its name.
    let more = Block::new(BlockKey::parse("t/m", b"more").unwrap(), pattern(99, 1000));
    tier.put(more.clone()).await.unwrap();
    assert_eq!(tier.get(&more.key).await.unwrap().unwrap().data, more.data);
}

#[tokio::test]
async fn a_bad_url_or_an_unreachable_store_is_a_clear_error() {
    let err = BlobTierBuilder::new("not a url").open().await.unwrap_err();
    assert!(err.to_string().contains("blob.url"), "{err}");
    let err = BlobTierBuilder::new("ftp://host/x").open().await.unwrap_err();
    assert!(err.to_string().contains("blob.url"), "{err}");
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
