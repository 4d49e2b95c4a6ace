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

/// Checks a block length against the rule every tier and the manager enforce: 1 byte at
/// least, `max` at most. The error names the key, the size and the limit.
pub fn check_block_size(key: &BlockKey, len: u64, max: u64) -> crate::Result<()> {
    if len == 0 || len > max {
        return Err(crate::Error::InvalidSize { key: key.to_string(), size: len, max });
    }
    Ok(())
}

/// An immutable block. Cloning shares the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Block {
    /// Identity.
    pub key: BlockKey,
    /// Contents.
    pub data: Bytes,
    /// CRC-32C of `data`, computed once when the block entered the store and checked by
    /// every tier that reads it back from a medium that can corrupt it.
    pub crc32c: u32,
}

impl Block {
    /// A block whose checksum is computed here.
    pub fn new(key: BlockKey, data: Bytes) -> Self {
        let crc32c = crc32c(&data);
        Block { key, data, crc32c }
    }

    /// A block whose checksum the caller already computed over `data`.
    pub fn with_crc32c(key: BlockKey, data: Bytes, crc32c: u32) -> Self {
        Block { key, data, crc32c }
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
            .finish()
    }
}
