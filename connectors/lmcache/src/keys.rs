//! LMCache's keys as kvtier block keys, and the header kvtier keeps in front of each value.
//!
//! A `CacheEngineKey` string is `model@world_size@worker_id@chunk_hash@dtype[@layer][@tag%v..]`
//! (`lmcache.utils.CacheEngineKey.to_string`). Everything before the chunk hash names the
//! layout one model's workers share, so it becomes the namespace,
//! `<prefix>/<model>/ws<world_size>.w<worker_id>.<dtype>`, and `kvtier stat` counts each
//! model's hits apart. The rest (`chunk_hash[@layer][@tags]`) is the key, as text while it
//! fits in 64 bytes and as its SHA-256 otherwise.
//!
//! The multiprocess-mode L2 adapters name objects `model@kv_rank@group@chunk_hash[@salt]`
//! (`native_connector_l2_adapter._object_key_to_string`): the namespace is
//! `<prefix>/<model>/rank<kv_rank>` and the key `group@chunk_hash[@salt]`.
//!
//! Model names may hold characters a namespace does not (`:`, `+`, spaces): each such byte,
//! and `_` itself, is written `_xx` (hex), so distinct names stay distinct. A namespace
//! longer than 128 bytes keeps the start of the model name and a hash of all of it.

use kvtier_tiers::{BlockKey, Key, MAX_KEY_LEN, MAX_NAMESPACE_LEN, Namespace};
use sha2::{Digest, Sha256};

/// Why a key string is not one of LMCache's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("LMCache key {key:?}: {reason}")]
pub struct KeyError {
    key: String,
    reason: String,
}

fn refuse(key: &str, reason: impl Into<String>) -> KeyError {
    // Keys come off the wire: quote at most a screenful of one.
    KeyError { key: key.chars().take(200).collect(), reason: reason.into() }
}

/// The block key of a `CacheEngineKey` string, under `prefix` (a valid namespace).
pub fn engine_key(prefix: &str, key: &str) -> Result<BlockKey, KeyError> {
    let parts: Vec<&str> = key.splitn(5, '@').collect();
    let [model, world_size, worker_id, hash, rest] = parts[..] else {
        return Err(refuse(key, "expected model@world_size@worker_id@chunk_hash@dtype"));
    };
    let (dtype, suffix) = rest.split_once('@').map_or((rest, ""), |(d, s)| (d, s));
    let number = |what: &str, v: &str| {
        v.parse::<u32>().map_err(|_| refuse(key, format!("{what} {v:?} is not a non-negative integer")))
    };
    let (world_size, worker_id) = (number("world_size", world_size)?, number("worker_id", worker_id)?);
    check_hash(key, hash)?;
    if dtype.is_empty() {
        return Err(refuse(key, "the dtype is empty"));
    }
    let layout = format!("ws{world_size}.w{worker_id}.{}", escape_segment(dtype));
    let namespace = namespace(prefix, key, model, &layout)?;
    let name = if suffix.is_empty() { hash.to_string() } else { format!("{hash}@{suffix}") };
    Ok(BlockKey::new(namespace, short_key(&name)))
}

/// The block key of a multiprocess-mode object key (`model@kv_rank@group@chunk_hash[@salt]`).
pub fn object_key(prefix: &str, key: &str) -> Result<BlockKey, KeyError> {
    let parts: Vec<&str> = key.splitn(4, '@').collect();
    let [model, kv_rank, group, rest] = parts[..] else {
        return Err(refuse(key, "expected model@kv_rank@object_group@chunk_hash[@cache_salt]"));
    };
    let hex = |what: &str, v: &str| {
        if v.is_empty() || v.len() > 16 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(refuse(key, format!("{what} {v:?} is not hexadecimal")));
        }
        Ok(())
    };
    hex("kv_rank", kv_rank)?;
    hex("object_group", group)?;
    let hash = rest.split_once('@').map_or(rest, |(h, _)| h);
    check_hash(key, hash)?;
    let namespace = namespace(prefix, key, model, &format!("rank{kv_rank}"))?;
    Ok(BlockKey::new(namespace, short_key(&format!("{group}@{rest}"))))
}

/// A chunk hash is hexadecimal (Python's `f"{h:x}"`, so possibly with a leading `-`).
fn check_hash(key: &str, hash: &str) -> Result<(), KeyError> {
    let digits = hash.strip_prefix('-').unwrap_or(hash);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(refuse(key, format!("chunk hash {hash:?} is not hexadecimal")));
    }
    Ok(())
}

fn namespace(prefix: &str, key: &str, model: &str, layout: &str) -> Result<Namespace, KeyError> {
    if model.is_empty() {
        return Err(refuse(key, "the model name is empty"));
    }
    let model_path: Vec<String> = model.split('/').map(escape_segment).collect();
    let mut name = format!("{prefix}/{}/{layout}", model_path.join("/"));
    if name.len() > MAX_NAMESPACE_LEN {
        // The start of the name for people, a hash of all of it for uniqueness.
        let digest = hex::encode(&Sha256::digest(model.as_bytes())[..8]);
        let room = MAX_NAMESPACE_LEN.saturating_sub(prefix.len() + layout.len() + digest.len() + 3);
        let start: String = escape_segment(model).chars().take(room).collect();
        name = format!("{prefix}/{start}-{digest}/{layout}");
    }
    Namespace::new(&name).map_err(|e| refuse(key, format!("namespace: {e}")))
}

/// `segment` with every byte a namespace does not allow, `_` included, written `_xx`; an
/// empty segment becomes `_`, and `.`/`..` have their dots escaped.
fn escape_segment(segment: &str) -> String {
    if segment.is_empty() {
        return "_".into();
    }
    let dots_only = segment.bytes().all(|b| b == b'.');
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        let plain = b.is_ascii_alphanumeric() || b == b'-' || (b == b'.' && !dots_only);
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

/// `name` as a key: itself while it fits, else its SHA-256.
fn short_key(name: &str) -> Key {
    let bytes = name.as_bytes();
    if bytes.len() <= MAX_KEY_LEN {
        Key::new(bytes).expect("1..=64 bytes")
    } else {
        Key::new(&Sha256::digest(bytes)).expect("32 bytes")
    }
}

/// What LMCache needs to allocate a value's memory object: its memory format and, per
/// group, a dtype and a shape (the integers of `lmcache.v1.protocol`: `MemoryFormat`
/// values and `DTYPE_TO_INT` codes; shapes padded to 4 dimensions with zeros).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueHeader {
    /// `MemoryFormat` value.
    pub fmt: i32,
    /// Payload bytes after the header.
    pub length: u64,
    /// Per group: (dtype code, shape).
    pub groups: Vec<(i32, [i32; 4])>,
}

/// The first bytes of every LMCache value kvtier stores: `KVLM`.
pub const VALUE_MAGIC: [u8; 4] = *b"KVLM";
const VALUE_VERSION: u8 = 1;
/// Most groups a header describes (LMCache's hybrid models have a handful).
pub const MAX_GROUPS: usize = 64;

impl ValueHeader {
    /// Bytes of a header with `groups` groups: 20, then 20 per group.
    pub const fn len_for(groups: usize) -> usize {
        20 + 20 * groups
    }

    /// Header bytes: magic, version (u8), groups (u8), 2 zero bytes, fmt (i32), payload
    /// length (u64), then per group a dtype (i32) and 4 dims (i32); little-endian.
    pub fn encode(&self) -> Vec<u8> {
        assert!((1..=MAX_GROUPS).contains(&self.groups.len()), "1..=64 groups");
        let mut out = Vec::with_capacity(Self::len_for(self.groups.len()));
        out.extend_from_slice(&VALUE_MAGIC);
        out.extend_from_slice(&[VALUE_VERSION, self.groups.len() as u8, 0, 0]);
        out.extend_from_slice(&self.fmt.to_le_bytes());
        out.extend_from_slice(&self.length.to_le_bytes());
        for (dtype, shape) in &self.groups {
            out.extend_from_slice(&dtype.to_le_bytes());
            for d in shape {
                out.extend_from_slice(&d.to_le_bytes());
            }
        }
        out
    }

    /// Parses the header at the start of `bytes`; `Err` says what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < 6 || bytes[..4] != VALUE_MAGIC {
            return Err("not an LMCache value written by kvtier (no KVLM header)".into());
        }
        if bytes[4] != VALUE_VERSION {
            return Err(format!("header version {} (this kvtier reads {VALUE_VERSION})", bytes[4]));
        }
        let groups = bytes[5] as usize;
        if groups == 0 || bytes.len() < Self::len_for(groups) {
            return Err(format!("a header of {groups} groups needs {} bytes", Self::len_for(groups)));
        }
        let i32_at = |at: usize| i32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let length = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
        let groups = (0..groups)
            .map(|g| {
                let at = 20 + 20 * g;
                (i32_at(at), [i32_at(at + 4), i32_at(at + 8), i32_at(at + 12), i32_at(at + 16)])
            })
            .collect();
        Ok(ValueHeader { fmt: i32_at(8), length, groups })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_engine_key_maps_to_a_namespace_per_model_and_layout() {
        let k = engine_key("lmcache", "meta-llama/Llama-3.1-8B@8@3@1a2b3c@bfloat16").unwrap();
        assert_eq!(k.namespace.as_str(), "lmcache/meta-llama/Llama-3.1-8B/ws8.w3.bfloat16");
        assert_eq!(k.key.as_bytes(), b"1a2b3c");
        // Layers and tags stay in the key; a negative hash is Python's `f"{h:x}"`.
        let layer = engine_key("t/lmc", "m@1@0@-ff@half@7@tenant%acme").unwrap();
        assert_eq!(layer.namespace.as_str(), "t/lmc/m/ws1.w0.half");
        assert_eq!(layer.key.as_bytes(), b"-ff@7@tenant%acme");
        // A key too long for 64 bytes is hashed: still one key per name.
        let long = format!("m@1@0@{}@half@3", "a".repeat(64));
        let (a, b) = (engine_key("p", &long).unwrap(), engine_key("p", &long.replace("@3", "@4")).unwrap());
        assert_eq!(a.key.as_bytes().len(), 32);
        assert_ne!(a.key.as_bytes(), b.key.as_bytes());
    }

    #[test]
    fn model_names_are_escaped_so_distinct_names_stay_distinct() {
        let ns = |m: &str| engine_key("p", &format!("{m}@1@0@1@half")).unwrap().namespace.as_str().to_string();
        assert_eq!(ns("org/Model:v2 b_c"), "p/org/Model_3av2_20b_5fc/ws1.w0.half");
        assert_ne!(ns("a_3a"), ns("a:"));
        assert_eq!(ns("../x"), "p/_2e_2e/x/ws1.w0.half");
        assert_eq!(ns("a//b"), "p/a/_/b/ws1.w0.half");
        let long = ns(&"m".repeat(300));
        assert!(long.len() <= MAX_NAMESPACE_LEN, "{long}");
        assert_ne!(long, ns(&"m".repeat(301)));
    }

    #[test]
    fn malformed_keys_are_refused_with_the_reason() {
        for (key, why) in [
            ("", "expected model@"),
            ("m@8@0@abc", "expected model@"),
            ("m@x@0@abc@half", "world_size"),
            ("m@8@-1@abc@half", "worker_id"),
            ("m@8@0@xyz@half", "chunk hash"),
            ("m@8@0@@half", "chunk hash"),
            ("@8@0@ab@half", "model name is empty"),
            ("m@8@0@ab@", "dtype is empty"),
        ] {
            let e = engine_key("p", key).unwrap_err().to_string();
            assert!(e.contains(why), "{key:?}: {e}");
        }
        assert!(engine_key("bad prefix", "m@1@0@1@half").unwrap_err().to_string().contains("namespace"));
    }

    #[test]
    fn object_keys_map_to_a_namespace_per_model_and_rank() {
        let k = object_key("lmcache", "Qwen/Qwen3-8B@00000003@0@deadbeef").unwrap();
        assert_eq!(k.namespace.as_str(), "lmcache/Qwen/Qwen3-8B/rank00000003");
        assert_eq!(k.key.as_bytes(), b"0@deadbeef");
        let salted = object_key("lmcache", "m@00000000@1@ab@salt-1").unwrap();
        assert_eq!(salted.key.as_bytes(), b"1@ab@salt-1");
        assert!(object_key("lmcache", "m@zz@0@ab").unwrap_err().to_string().contains("kv_rank"));
        assert!(object_key("lmcache", "m@0@0").is_err());
    }

    #[test]
    fn value_headers_round_trip_and_refuse_foreign_bytes() {
        let h = ValueHeader { fmt: 1, length: 4096, groups: vec![(3, [2, 32, 256, 1024]), (3, [2, 4, 256, 512])] };
        let bytes = h.encode();
        assert_eq!(bytes.len(), ValueHeader::len_for(2));
        assert_eq!(ValueHeader::decode(&bytes).unwrap(), h);
        assert!(ValueHeader::decode(b"not a header at all, no").unwrap_err().contains("KVLM"));
        assert!(ValueHeader::decode(&bytes[..30]).unwrap_err().contains("needs"));
        let mut future = bytes.clone();
        future[4] = 9;
        assert!(ValueHeader::decode(&future).unwrap_err().contains("version"));
    }
}
