//! The objects the Blob tier writes under its prefix, and their names.
//!
//! ```text
//! <prefix>/seg/<seq>-<writer>.seg   block bytes, back to back (ranged GETs read one block),
//!                                   then the segment's index record and a trailer: the
//!                                   record's length (u64 LE) and `KVTSEGF1`. One PUT writes
//!                                   both, and a PUT is atomic: a segment is whole or absent.
//! <prefix>/idx/<seq>-<writer>.idx   the index of a segment without a footer (written by
//!                                   versions before it, after the segment); still read
//! <prefix>/del/<seq>-<writer>.del   keys deleted at <seq> (entries older than it are gone)
//! ```
//!
//! `seq` (16 hex digits) orders every segment and deletion: replaying them in order rebuilds
//! the tier. `writer` (8 hex digits, random per open) keeps two writers from ever writing the
//! same name. Index and deletion records: `KVTBLOB1`, kind, count, entries, CRC-32C of all
//! that precedes it; anything else under the prefix is skipped with a warning.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::BlockKey;

const MAGIC: &[u8; 8] = b"KVTBLOB1";
/// The last 8 bytes of a segment that carries its index.
const FOOTER_MAGIC: &[u8; 8] = b"KVTSEGF1";
/// A footer's trailer: the index record's length and [`FOOTER_MAGIC`].
pub(super) const TRAILER_LEN: usize = 16;
const KIND_INDEX: u8 = 1;
const KIND_DELETES: u8 = 2;

/// Where a record sits in the order of writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Stamp {
    pub(super) seq: u64,
    pub(super) writer: u32,
}

impl Stamp {
    pub(super) fn name(&self, prefix: &str, dir: &str, ext: &str) -> String {
        let sep = if prefix.is_empty() { "" } else { "/" };
        format!("{prefix}{sep}{dir}/{:016x}-{:08x}.{ext}", self.seq, self.writer)
    }

    /// The stamp of an object's file name (`<seq>-<writer>.<ext>`), if it is one of ours.
    pub(super) fn parse(file_name: &str, ext: &str) -> Option<Stamp> {
        let stem = file_name.strip_suffix(ext)?.strip_suffix('.')?;
        let (seq, writer) = stem.split_once('-')?;
        (seq.len() == 16 && writer.len() == 8).then_some(())?;
        Some(Stamp { seq: u64::from_str_radix(seq, 16).ok()?, writer: u32::from_str_radix(writer, 16).ok()? })
    }
}

/// One block in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) key: BlockKey,
    pub(super) offset: u64,
    pub(super) len: u64,
    pub(super) crc32c: u32,
}

pub(super) fn encode_index(entries: &[Entry]) -> Bytes {
    let mut buf = header(KIND_INDEX, entries.len());
    for e in entries {
        put_key(&mut buf, &e.key);
        buf.put_u64_le(e.offset);
        buf.put_u64_le(e.len);
        buf.put_u32_le(e.crc32c);
    }
    seal(buf)
}

/// What follows a segment's blocks: its index record, the record's length and the footer magic.
pub(super) fn encode_footer(entries: &[Entry]) -> Bytes {
    let index = encode_index(entries);
    let mut buf = BytesMut::with_capacity(index.len() + TRAILER_LEN);
    buf.put_slice(&index);
    buf.put_u64_le(index.len() as u64);
    buf.put_slice(FOOTER_MAGIC);
    buf.freeze()
}

/// The length of the index record before a segment's last [`TRAILER_LEN`] bytes, when they
/// are a footer's trailer (else the segment has no footer: its index, if any, is an `idx`
/// object).
pub(super) fn trailer(tail: &[u8]) -> Option<u64> {
    let tail = tail.get(tail.len().checked_sub(TRAILER_LEN)?..)?;
    (&tail[8..] == FOOTER_MAGIC).then(|| u64::from_le_bytes(tail[..8].try_into().expect("8 bytes")))
}

pub(super) fn encode_deletes(keys: &[BlockKey]) -> Bytes {
    let mut buf = header(KIND_DELETES, keys.len());
    for k in keys {
        put_key(&mut buf, k);
    }
    seal(buf)
}

pub(super) fn decode_index(bytes: &[u8]) -> Result<Vec<Entry>, String> {
    let (mut body, count) = open(bytes, KIND_INDEX)?;
    (0..count)
        .map(|_| {
            let key = get_key(&mut body)?;
            need(body, 20)?;
            Ok(Entry { key, offset: body.get_u64_le(), len: body.get_u64_le(), crc32c: body.get_u32_le() })
        })
        .collect()
}

pub(super) fn decode_deletes(bytes: &[u8]) -> Result<Vec<BlockKey>, String> {
    let (mut body, count) = open(bytes, KIND_DELETES)?;
    (0..count).map(|_| get_key(&mut body)).collect()
}

fn header(kind: u8, count: usize) -> BytesMut {
    let mut buf = BytesMut::with_capacity(64 + count * 64);
    buf.put_slice(MAGIC);
    buf.put_u8(kind);
    buf.put_u32_le(count as u32);
    buf
}

fn seal(mut buf: BytesMut) -> Bytes {
    let crc = crate::crc32c(&buf);
    buf.put_u32_le(crc);
    buf.freeze()
}

/// Checks magic, kind and checksum; returns the entries' bytes and their count.
fn open(bytes: &[u8], kind: u8) -> Result<(&[u8], u32), String> {
    if bytes.len() < MAGIC.len() + 9 || &bytes[..8] != MAGIC {
        return Err("not a kvtier record (bad magic or too short)".into());
    }
    let (body, tail) = bytes.split_at(bytes.len() - 4);
    let (stored, actual) = (u32::from_le_bytes(tail.try_into().expect("4 bytes")), crate::crc32c(body));
    if stored != actual {
        return Err(format!("checksum {actual:08x} where the record says {stored:08x} (torn or damaged)"));
    }
    if body[8] != kind {
        return Err(format!("record kind {} where {kind} was expected", body[8]));
    }
    let count = u32::from_le_bytes(body[9..13].try_into().expect("4 bytes"));
    Ok((&body[13..], count))
}

fn put_key(buf: &mut BytesMut, key: &BlockKey) {
    let (ns, k) = (key.namespace.as_str().as_bytes(), key.key.as_bytes());
    buf.put_u8(ns.len() as u8);
    buf.put_slice(ns);
    buf.put_u8(k.len() as u8);
    buf.put_slice(k);
}

fn get_key(body: &mut &[u8]) -> Result<BlockKey, String> {
    let mut part = |what: &str| -> Result<Vec<u8>, String> {
        need(body, 1)?;
        let len = body.get_u8() as usize;
        need(body, len).map_err(|e| format!("{what}: {e}"))?;
        let v = body[..len].to_vec();
        body.advance(len);
        Ok(v)
    };
    let ns = String::from_utf8(part("namespace")?).map_err(|_| "a namespace that is not UTF-8".to_string())?;
    let key = part("key")?;
    BlockKey::parse(&ns, &key).map_err(|e| e.to_string())
}

fn need(body: &[u8], n: usize) -> Result<(), String> {
    if body.len() < n { Err("the record ends early".into()) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Key, Namespace};

    fn key(i: u8) -> BlockKey {
        BlockKey::new(Namespace::new("t/m").unwrap(), Key::new(&[i; 5]).unwrap())
    }

    #[test]
    fn records_round_trip_and_damage_is_refused() {
        let entries: Vec<Entry> =
            (0..3).map(|i| Entry { key: key(i), offset: i as u64 * 100, len: 100, crc32c: i as u32 }).collect();
        let bytes = encode_index(&entries);
        assert_eq!(decode_index(&bytes).unwrap(), entries);
        assert!(decode_deletes(&bytes).unwrap_err().contains("kind"));
        let mut torn = bytes.to_vec();
        torn.truncate(torn.len() - 7);
        assert!(decode_index(&torn).unwrap_err().contains("checksum"));
        assert!(decode_index(b"PK\x03\x04 a zip file, not ours").unwrap_err().contains("magic"));
        assert_eq!(decode_deletes(&encode_deletes(&[key(9)])).unwrap(), vec![key(9)]);
    }

    #[test]
    fn a_footer_carries_the_index_and_names_its_length() {
        let entries: Vec<Entry> =
            (0..3).map(|i| Entry { key: key(i), offset: i as u64 * 100, len: 100, crc32c: i as u32 }).collect();
        let footer = encode_footer(&entries);
        let len = trailer(&footer).expect("a trailer") as usize;
        assert_eq!(len + TRAILER_LEN, footer.len());
        assert_eq!(decode_index(&footer[..len]).unwrap(), entries);
        // A segment without one: block bytes end it.
        assert_eq!(trailer(&[7u8; 64]), None);
        assert_eq!(trailer(b"short"), None);
    }

    #[test]
    fn names_sort_by_stamp_and_parse_back() {
        let s = Stamp { seq: 42, writer: 0xdead_beef };
        let name = s.name("kv/cache", "idx", "idx");
        assert_eq!(name, "kv/cache/idx/000000000000002a-deadbeef.idx");
        assert_eq!(Stamp::parse(name.rsplit('/').next().unwrap(), "idx"), Some(s));
        assert_eq!(Stamp::parse("2a-deadbeef.idx", "idx"), None);
        assert_eq!(Stamp::parse("000000000000002a-deadbeef.seg", "idx"), None);
    }
}
