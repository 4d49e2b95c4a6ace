//! How named objects' blocks are keyed: a manifest is `m/` + 24 bytes of SHA-256(path) +
//! the generation, a chunk `c/` + its version's id + its index. The node, the cluster and
//! the objects layer all tell these keys apart (to place a path's manifests together, to keep
//! manifests in a node's own segments), so the encoding sits below all three.

use kvtier_tiers::{BlockKey, Key, Namespace};
use sha2::{Digest, Sha256};

/// The prefix of every manifest key.
pub(crate) const MANIFEST: &[u8] = b"m/";
/// The prefix of every chunk key.
pub(crate) const CHUNK: &[u8] = b"c/";

/// The key of `path`'s manifest of `generation` in `ns`.
pub(crate) fn manifest_key(ns: &Namespace, path: &str, generation: u64) -> BlockKey {
    let digest = Sha256::digest(path.as_bytes());
    let mut key = MANIFEST.to_vec();
    key.extend_from_slice(&digest[..24]);
    key.extend_from_slice(&generation.to_be_bytes());
    BlockKey::new(ns.clone(), Key::new(&key).expect("34 bytes"))
}

/// Whether `key` is an object's manifest (by its prefix and length).
pub(crate) fn is_manifest_key(key: &BlockKey) -> bool {
    let k = key.key.as_bytes();
    k.starts_with(MANIFEST) && k.len() == 34
}

/// Whether `key` is an object's chunk (by its prefix and length).
pub(crate) fn is_chunk_key(key: &BlockKey) -> bool {
    let k = key.key.as_bytes();
    k.starts_with(CHUNK) && k.len() == 14
}

/// What places `key` on nodes: its namespace and bytes, except that every generation of a
/// path's manifest places alike (so the same nodes always know a path's versions).
pub(crate) fn placement_key(key: &BlockKey) -> Vec<u8> {
    let k = key.key.as_bytes();
    let k = if is_manifest_key(key) { &k[..26] } else { k };
    [key.namespace.as_str().as_bytes(), &[0], k].concat()
}

/// The id of the version a chunk belongs to.
pub(crate) fn chunk_id(key: &BlockKey) -> Option<u64> {
    let k = key.key.as_bytes();
    is_chunk_key(key).then(|| u64::from_be_bytes(k[2..10].try_into().expect("8 bytes")))
}

/// The key of chunk `index` of the version with id `id`.
pub(crate) fn chunk_key(ns: &Namespace, id: u64, index: u64) -> BlockKey {
    let mut key = CHUNK.to_vec();
    key.extend_from_slice(&id.to_be_bytes());
    key.extend_from_slice(&(index as u32).to_be_bytes());
    BlockKey::new(ns.clone(), Key::new(&key).expect("14 bytes"))
}
