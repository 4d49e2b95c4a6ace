//! Block identity: a validated namespace and a key of at most 64 bytes.
//!
//! A namespace names a tenant + model + layout (`acme/llama3-8b/bf16-16tok`): 1 to 128 bytes
//! of `[A-Za-z0-9._-]` in `/`-separated segments, none empty, none `.` or `..` (namespaces
//! become object-store prefixes, so they must be safe path segments). A key is 1 to 64
//! arbitrary bytes: whatever the engine already has (a block hash, a sequence hash).

use std::{fmt, hash::Hash, sync::Arc};

use crate::{Error, Result};

/// Longest key in bytes.
pub const MAX_KEY_LEN: usize = 64;
/// Longest namespace in bytes.
pub const MAX_NAMESPACE_LEN: usize = 128;

/// A validated namespace. Cloning is a reference-count increment.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace(Arc<str>);

impl Namespace {
    /// Validates `name` against the namespace rules.
    pub fn new(name: &str) -> Result<Self> {
        let invalid = |why: &str| Err(Error::InvalidKey { reason: format!("namespace {name:?}: {why}") });
        if name.is_empty() {
            return invalid("must not be empty");
        }
        if name.len() > MAX_NAMESPACE_LEN {
            return invalid(&format!("is {} bytes, the limit is {MAX_NAMESPACE_LEN}", name.len()));
        }
        if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))) {
            return invalid(&format!("character {c:?} is not allowed (use A-Z a-z 0-9 . _ - and / between segments)"));
        }
        if name.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..") {
            return invalid("segments between '/' must be non-empty and not '.' or '..'");
        }
        Ok(Namespace(Arc::from(name)))
    }

    /// The namespace as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// A key of 1..=64 bytes, stored inline (no heap allocation).
#[derive(Clone, Copy)]
pub struct Key {
    len: u8,
    bytes: [u8; MAX_KEY_LEN],
}

impl Key {
    /// Validates and copies `bytes`.
    pub fn new(bytes: &[u8]) -> Result<Self> {
        if bytes.is_empty() || bytes.len() > MAX_KEY_LEN {
            return Err(Error::InvalidKey {
                reason: format!("key is {} bytes, allowed 1..={MAX_KEY_LEN}", bytes.len()),
            });
        }
        let mut key = Key { len: bytes.len() as u8, bytes: [0; MAX_KEY_LEN] };
        key.bytes[..bytes.len()].copy_from_slice(bytes);
        Ok(key)
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}
impl Eq for Key {}
impl Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state)
    }
}
impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Key {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({self})")
    }
}

/// The identity of a block: namespace plus key.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockKey {
    /// The namespace (tenant/model/layout).
    pub namespace: Namespace,
    /// The key within it.
    pub key: Key,
}

impl BlockKey {
    /// Builds a key from parts already validated.
    pub fn new(namespace: Namespace, key: Key) -> Self {
        BlockKey { namespace, key }
    }

    /// Validates both parts.
    pub fn parse(namespace: &str, key: &[u8]) -> Result<Self> {
        Ok(BlockKey { namespace: Namespace::new(namespace)?, key: Key::new(key)? })
    }
}

/// Shown as `namespace/hexkey`.
impl fmt::Display for BlockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.key)
    }
}

impl fmt::Debug for BlockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockKey({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_rules() {
        for ok in ["a", "acme/llama3-8b/bf16-16tok", "A.b_c-d", &"x".repeat(MAX_NAMESPACE_LEN)] {
            Namespace::new(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["", "/a", "a/", "a//b", "a/../b", "./a", "a b", "ü", "a\0b", &"x".repeat(MAX_NAMESPACE_LEN + 1)] {
            let err = Namespace::new(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid key: namespace"), "{bad:?} -> {err}");
        }
    }

    #[test]
    fn key_rules_and_identity() {
        assert!(Key::new(&[]).is_err());
        assert!(Key::new(&[7; 65]).unwrap_err().to_string().contains("65 bytes"));
        let a = Key::new(&[1, 2, 3]).unwrap();
        let b = Key::new(&[1, 2, 3, 0]).unwrap();
        assert_ne!(a, b, "trailing zero bytes are part of the key");
        assert_eq!(a.to_string(), "010203");
        let k = BlockKey::parse("ns/x", &[0xab; 64]).unwrap();
        assert_eq!(k.to_string(), format!("ns/x/{}", "ab".repeat(64)));
    }
}
