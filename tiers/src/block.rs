//! A block: key, bytes and the CRC-32C taken when it entered the store.

use bytes::Bytes;

use crate::BlockKey;

/// CRC-32C (Castagnoli) of `data`; hardware-accelerated where the CPU has it.
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// Extends a running CRC-32C with more bytes (for data that arrives in chunks).
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, data)
}

/// The CRC-32C of `a` followed by `b`, from their CRC-32Cs and `b`'s length (an object
/// joined from parts whose bytes are not read again).
pub fn crc32c_combine(a: u32, b: u32, b_len: u64) -> u32 {
    crc32c::crc32c_combine(a, b, b_len as usize)
}

/// Checks a block length against the rule every tier and the manager enforce: 1 byte at
/// least, `max` at most. The error names the key, the size and the limit.
pub fn check_block_size(key: &BlockKey, len: u64, max: u64) -> crate::Result<()> {
    if len == 0 || len > max {
        return Err(crate::Error::InvalidSize { key: key.to_string(), size: len, max });
    }
    Ok(())
}

/// An immutable block. Cloning shares the bytes.
#[derive(Clone)]
pub struct Block {
    /// Identity.
    pub key: BlockKey,
    /// Contents.
    pub data: Bytes,
    /// CRC-32C of `data`, computed once when the block entered the store and checked by
    /// every tier that reads it back from a medium that can corrupt it.
    pub crc32c: u32,
    /// Written with write-back durability: the node must not let its last local copy go
    /// before the block is in the Blob tier. Tiers that persist blocks (SSD) record it, so
    /// the mark survives a restart; it is not part of the block's identity.
    pub durable: bool,
}

impl PartialEq for Block {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key && self.crc32c == other.crc32c && self.data == other.data
    }
}

impl Eq for Block {}

impl Block {
    /// A block whose checksum is computed here.
    pub fn new(key: BlockKey, data: Bytes) -> Self {
        let crc32c = crc32c(&data);
        Block { key, data, crc32c, durable: false }
    }

    /// A block whose checksum the caller already computed over `data`.
    pub fn with_crc32c(key: BlockKey, data: Bytes, crc32c: u32) -> Self {
        Block { key, data, crc32c, durable: false }
    }

    /// The block marked (or not) as written with write-back durability.
    pub fn with_durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.data.len() as u64
    }

    /// True for a block of no bytes (tiers refuse these).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("key", &self.key)
            .field("len", &self.data.len())
            .field("crc32c", &format_args!("{:#010x}", self.crc32c))
            .field("durable", &self.durable)
            .finish()
    }
}
