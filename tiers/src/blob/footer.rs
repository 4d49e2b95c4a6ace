//! Segments that carry their index in a footer (format.rs): what a load and the orphan sweep
//! read of them. A footer is found from the segment's size alone: one ranged GET of its tail
//! (the index of a segment of 2 MiB blocks is a few KiB), a second only for an index longer
//! than that tail.

use std::ops::Range;

use bytes::Bytes;
use object_store::path::Path;

use super::{
    BlobTier, Counters,
    format::{self, Entry, TRAILER_LEN},
};
use crate::Result;

/// How much of a segment's end a load reads first: room for the index of ~4000 blocks.
const TAIL: u64 = 256 << 10;

impl BlobTier {
    /// The index in the footer of the segment at `path` (`size` bytes long), or `None` when it
    /// has none (a segment of the earlier format, whose index is an `idx` object, or a torn
    /// or foreign object) or the footer is damaged (said in the log).
    pub(super) async fn read_footer(&self, path: &Path, size: u64) -> Result<Option<Vec<Entry>>> {
        let trailer = TRAILER_LEN as u64;
        if size < trailer {
            return Ok(None);
        }
        let first = size.min(TAIL);
        let tail = self.fetch_range(path, size - first..size).await?;
        let Some(len) = format::trailer(&tail) else { return Ok(None) };
        let Some(need) = len.checked_add(trailer).filter(|&n| n <= size) else {
            tracing::warn!(object = %path, len, size, "blob: a segment footer names more bytes than the segment has");
            return Ok(None);
        };
        let record = if need <= first {
            tail.slice((first - need) as usize..(first - trailer) as usize)
        } else {
            self.fetch_range(path, size - need..size - trailer).await?
        };
        match format::decode_index(&record) {
            Ok(entries) => Ok(Some(entries)),
            Err(why) => {
                tracing::warn!(object = %path, why, "blob: skipping a segment whose footer is damaged");
                Ok(None)
            }
        }
    }

    async fn fetch_range(&self, path: &Path, range: Range<u64>) -> Result<Bytes> {
        Counters::count(&self.counters.gets, 1);
        let bytes = self.store.get_range(path, range).await.map_err(|e| self.store_error("get", path.as_ref(), e))?;
        Counters::count(&self.counters.get_bytes, bytes.len() as u64);
        Ok(bytes)
    }
}
