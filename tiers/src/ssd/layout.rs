//! On-disk format of an SSD slot file (all integers little-endian).
//!
//! ```text
//! offset 0          superblock (4 KiB): magic, version, region size, region count, store id
//! offset 1 MiB      region 0: [region header 4 KiB][slot][slot]...
//!                   region 1: ...
//! slot              [slot header 4 KiB][data, padded to 4 KiB]
//! ```
//! A region header names the slot class (0: packed, blocks of any size one after another;
//! format version 2) and the epoch of the region's current class assignment. A slot header names its block (namespace, key, length, CRC-32C of the data),
//! its generation (a store-wide counter, newer wins), its flags (version 2: bit 0 = written
//! with write-back durability, so a restart knows it must still reach Blob) and repeats the store id, epoch, region
//! and slot number, so a header left over from an earlier use of the space is recognised as
//! stale. Every header ends with a CRC-32C of itself. A freed slot's header is zeroed (a
//! tombstone), so deleted blocks do not come back after a restart; in a packed region it is
//! rewritten with flag bit 1 (deleted) instead, keeping its length, so the chain of headers
//! recovery walks stays whole. In a packed region `slot` is the page the header is on.
//!
//! Version 2 of the format (packed regions) reads version 1 files and upgrades their
//! superblock when it opens them; a version 1 build refuses a version 2 file, rather than
//! misread its packed regions as free space.

use crate::{BlockKey, Key, Namespace, slab::PAGE};

/// Where region 0 starts; the space before holds the superblock.
pub(super) const DATA_START: u64 = 1 << 20;
/// Every header occupies one page.
pub(super) const HEADER: u64 = PAGE;

const SUPER_MAGIC: &[u8; 8] = b"KVTSSD\0\x01";
const REGION_MAGIC: &[u8; 8] = b"KVTREG\0\x01";
/// Version 2 slot headers end with a flags byte; version 1 headers (no flags) still read.
const SLOT_MAGIC: &[u8; 8] = b"KVTBLK\0\x02";
const SLOT_MAGIC_V1: &[u8; 8] = b"KVTBLK\0\x01";
const FLAG_DURABLE: u8 = 1;
const FLAG_DELETED: u8 = 2;
/// The format this build writes; it reads `VERSION - 1` too.
pub(super) const VERSION: u32 = 2;

/// The first page of the slot file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Superblock {
    pub(super) region_size: u64,
    pub(super) regions: u32,
    pub(super) store_id: u64,
    /// The format version the file was written in.
    pub(super) version: u32,
}

/// The first page of a region in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RegionHeader {
    pub(super) store_id: u64,
    pub(super) region: u32,
    /// Data bytes per slot (the class size).
    pub(super) class_size: u64,
    pub(super) epoch: u64,
}

/// The first page of an occupied slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SlotHeader {
    pub(super) store_id: u64,
    pub(super) epoch: u64,
    pub(super) region: u32,
    pub(super) slot: u32,
    pub(super) generation: u64,
    pub(super) len: u64,
    pub(super) crc32c: u32,
    pub(super) durable: bool,
    /// A tombstone: the block was freed (packed regions only).
    pub(super) deleted: bool,
    pub(super) key: BlockKey,
}

/// Little-endian cursor over a header page.
struct Writer<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf[self.at..self.at + b.len()].copy_from_slice(b);
        self.at += b.len();
        self
    }
    fn u8(&mut self, v: u8) -> &mut Self {
        self.bytes(&[v])
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    /// Appends the CRC-32C of everything written so far.
    fn seal(&mut self) {
        let crc = crate::crc32c(&self.buf[..self.at]);
        self.u32(crc);
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let b = self.buf.get(self.at..self.at + n)?;
        self.at += n;
        Some(b)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.bytes(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.bytes(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.bytes(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.bytes(8)?.try_into().ok()?))
    }
    /// Checks the CRC-32C that follows everything read so far.
    fn verify_seal(&mut self) -> Option<()> {
        let expected = crate::crc32c(&self.buf[..self.at]);
        (self.u32()? == expected).then_some(())
    }
}

fn writer(page: &mut [u8]) -> Writer<'_> {
    page[..HEADER as usize].fill(0);
    Writer { buf: page, at: 0 }
}

impl Superblock {
    pub(super) fn encode(&self, page: &mut [u8]) {
        writer(page)
            .bytes(SUPER_MAGIC)
            .u32(self.version)
            .u64(self.region_size)
            .u32(self.regions)
            .u64(self.store_id)
            .seal();
    }

    /// Decodes a superblock, or says what is wrong with the page.
    pub(super) fn decode(page: &[u8]) -> Result<Self, String> {
        let mut r = Reader { buf: page, at: 0 };
        if r.bytes(8) != Some(SUPER_MAGIC) {
            return Err("not a kvtier slot file (bad superblock magic)".into());
        }
        let version = r.u32().ok_or("truncated superblock")?;
        if !(1..=VERSION).contains(&version) {
            return Err(format!("slot file format version {version}, this build reads versions 1 to {VERSION}"));
        }
        let sb = Superblock {
            region_size: r.u64().ok_or("truncated superblock")?,
            regions: r.u32().ok_or("truncated superblock")?,
            store_id: r.u64().ok_or("truncated superblock")?,
            version,
        };
        r.verify_seal().ok_or("superblock checksum mismatch (the file is corrupt)")?;
        Ok(sb)
    }
}

impl RegionHeader {
    pub(super) fn encode(&self, page: &mut [u8]) {
        writer(page)
            .bytes(REGION_MAGIC)
            .u64(self.store_id)
            .u32(self.region)
            .u64(self.class_size)
            .u64(self.epoch)
            .seal();
    }

    /// `None` for a page that is not a valid region header (never written, torn, zeroed).
    pub(super) fn decode(page: &[u8]) -> Option<Self> {
        let mut r = Reader { buf: page, at: 0 };
        (r.bytes(8)? == REGION_MAGIC).then_some(())?;
        let h = RegionHeader { store_id: r.u64()?, region: r.u32()?, class_size: r.u64()?, epoch: r.u64()? };
        r.verify_seal()?;
        Some(h)
    }
}

impl SlotHeader {
    pub(super) fn encode(&self, page: &mut [u8]) {
        let ns = self.key.namespace.as_str().as_bytes();
        let key = self.key.key.as_bytes();
        writer(page)
            .bytes(SLOT_MAGIC)
            .u64(self.store_id)
            .u64(self.epoch)
            .u32(self.region)
            .u32(self.slot)
            .u64(self.generation)
            .u64(self.len)
            .u32(self.crc32c)
            .u16(ns.len() as u16)
            .bytes(ns)
            .u16(key.len() as u16)
            .bytes(key)
            .u8(if self.durable { FLAG_DURABLE } else { 0 } | if self.deleted { FLAG_DELETED } else { 0 })
            .seal();
    }

    /// `None` for a page that is not a valid slot header (free, torn, corrupt, or naming an
    /// invalid key).
    pub(super) fn decode(page: &[u8]) -> Option<Self> {
        let mut r = Reader { buf: page, at: 0 };
        let v1 = match r.bytes(8)? {
            m if m == SLOT_MAGIC => false,
            m if m == SLOT_MAGIC_V1 => true,
            _ => return None,
        };
        let (store_id, epoch, region, slot, generation, len, crc32c) =
            (r.u64()?, r.u64()?, r.u32()?, r.u32()?, r.u64()?, r.u64()?, r.u32()?);
        let ns_len = r.u16()? as usize;
        let ns = std::str::from_utf8(r.bytes(ns_len)?).ok()?;
        let key_len = r.u16()? as usize;
        let key = r.bytes(key_len)?;
        let flags = if v1 { 0 } else { r.u8()? };
        r.verify_seal()?;
        let key = BlockKey::new(Namespace::new(ns).ok()?, Key::new(key).ok()?);
        let (durable, deleted) = (flags & FLAG_DURABLE != 0, flags & FLAG_DELETED != 0);
        Some(SlotHeader { store_id, epoch, region, slot, generation, len, crc32c, durable, deleted, key })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page() -> Vec<u8> {
        vec![0xAA; HEADER as usize]
    }

    #[test]
    fn headers_round_trip_and_reject_any_flipped_bit() {
        let h = SlotHeader {
            store_id: 9,
            epoch: 3,
            region: 4,
            slot: 5,
            generation: 77,
            len: 123_456,
            crc32c: 0xdead_beef,
            durable: true,
            deleted: false,
            key: BlockKey::parse("acme/m", &[1; 64]).unwrap(),
        };
        let mut p = page();
        h.encode(&mut p);
        assert_eq!(SlotHeader::decode(&p), Some(h.clone()));
        let used = 8 + 8 + 8 + 4 + 4 + 8 + 8 + 4 + 2 + 6 + 2 + 64 + 1 + 4;
        for bit in 0..used * 8 {
            let mut q = p.clone();
            q[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(SlotHeader::decode(&q), None, "bit {bit} flipped went unnoticed");
        }
        assert_eq!(SlotHeader::decode(&vec![0; HEADER as usize]), None, "a tombstone is not a slot");

        // A version 1 header (no flags byte) still reads, as not durable.
        let mut v1 = page();
        let ns = h.key.namespace.as_str().as_bytes();
        let mut w = writer(&mut v1);
        w.bytes(SLOT_MAGIC_V1).u64(9).u64(3).u32(4).u32(5).u64(77).u64(123_456).u32(0xdead_beef);
        w.u16(ns.len() as u16).bytes(ns).u16(64).bytes(h.key.key.as_bytes()).seal();
        assert_eq!(SlotHeader::decode(&v1), Some(SlotHeader { durable: false, ..h }));

        let r = RegionHeader { store_id: 9, region: 2, class_size: 1 << 21, epoch: 8 };
        let mut p = page();
        r.encode(&mut p);
        assert_eq!(RegionHeader::decode(&p), Some(r));
        p[20] ^= 4;
        assert_eq!(RegionHeader::decode(&p), None);
    }

    #[test]
    fn superblock_errors_say_what_is_wrong() {
        let sb = Superblock { region_size: 1 << 28, regions: 32, store_id: 5, version: VERSION };
        let mut p = page();
        sb.encode(&mut p);
        assert_eq!(Superblock::decode(&p), Ok(sb));
        p[13] ^= 1;
        assert!(Superblock::decode(&p).unwrap_err().contains("checksum"));
        assert!(Superblock::decode(&page()).unwrap_err().contains("magic"));
    }
}
