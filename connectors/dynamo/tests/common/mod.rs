//! What both G4 clients (KVBM's S3 client against kvtier's S3 endpoint, kvtier's native
//! client) must do, as one body each test file runs with its client.

#![allow(dead_code, reason = "each test file uses what it needs")]

use std::{collections::HashMap, sync::Arc};

use kvbm_engine::{
    SequenceHash,
    object::{LayoutConfigExt, ObjectBlockOps},
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
