//! A session's private window: what a session maps instead of the arena when its uid may not
//! read every namespace (or `shm.private_windows` is on). It is a memfd of
//! `shm.session_limit` bytes of its own; allocated slots are copied into the block's real
//! home at commit, pinned blocks are copied into it. The client cannot tell the difference
//! (offsets into "the mapping" either way), but it can never see a byte it did not write or
//! pin: the isolation the arena cannot give.

use std::{
    collections::BTreeMap,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
};

/// Slots start on pages, as arena slots do (engines copying by DMA address them by page).
const PAGE: u64 = 4096;

pub(super) struct Window {
    fd: OwnedFd,
    map: memmap2::MmapRaw,
    len: u64,
    /// Free extents: offset -> length, never adjacent (freeing merges neighbours).
    free: BTreeMap<u64, u64>,
}

impl Window {
    /// A fresh window of `len` bytes (rounded up to pages); memory is taken only as touched.
    pub(super) fn new(len: u64) -> io::Result<Self> {
        let len = len.div_ceil(PAGE) * PAGE;
        let fd = kvtier_tiers::sealed_memfd(c"kvtier-shm-window", len as usize)?;
        let map = memmap2::MmapOptions::new().len(len as usize).map_raw(fd.as_raw_fd())?;
        Ok(Window { fd, map, len, free: BTreeMap::from([(0, len)]) })
    }

    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// The first free extent that fits `len` bytes (rounded up to pages), or `None`.
    pub(super) fn alloc(&mut self, len: u64) -> Option<u64> {
        let need = len.max(1).div_ceil(PAGE) * PAGE;
        let (&offset, &size) = self.free.iter().find(|&(_, &size)| size >= need)?;
        self.free.remove(&offset);
        if size > need {
            self.free.insert(offset + need, size - need);
        }
        Some(offset)
    }

    /// Returns `len` bytes at `offset` (as given by `alloc`) to the free extents.
    pub(super) fn free(&mut self, offset: u64, len: u64) {
        let (mut start, mut size) = (offset, len.max(1).div_ceil(PAGE) * PAGE);
        if let Some((&before, &before_len)) = self.free.range(..start).next_back()
            && before + before_len == start
        {
            self.free.remove(&before);
            (start, size) = (before, size + before_len);
        }
        if let Some(after_len) = self.free.remove(&(start + size)) {
            size += after_len;
        }
        self.free.insert(start, size);
    }

    /// The bytes at `offset`. The client may write them concurrently: callers copy them out
    /// (a commit checksums what it copied, so a torn write is caught there).
    pub(super) fn bytes(&self, offset: u64, len: u64) -> &[u8] {
        assert!(offset + len <= self.len, "a window slot inside the window");
        // SAFETY: inside the mapping (asserted); plain bytes.
        unsafe { std::slice::from_raw_parts(self.map.as_mut_ptr().add(offset as usize), len as usize) }
    }

    pub(super) fn bytes_mut(&mut self, offset: u64, len: u64) -> &mut [u8] {
        assert!(offset + len <= self.len, "a window slot inside the window");
        // SAFETY: inside the mapping (asserted); the slot is this session's alone.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr().add(offset as usize), len as usize) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_are_reused_and_merged() {
        let mut w = Window::new(16 * PAGE).unwrap();
        let a = w.alloc(PAGE + 1).unwrap();
        let b = w.alloc(3 * PAGE).unwrap();
        let c = w.alloc(11 * PAGE).unwrap();
        assert_eq!((a, b, c), (0, 2 * PAGE, 5 * PAGE));
        assert_eq!(w.alloc(1), None, "full");
        w.bytes_mut(b, 5).copy_from_slice(b"hello");
        assert_eq!(w.bytes(b, 5), b"hello");
        w.free(a, PAGE + 1);
        w.free(c, 11 * PAGE);
        assert_eq!(w.alloc(12 * PAGE), None, "two holes, neither big enough");
        w.free(b, 3 * PAGE);
        assert_eq!(w.alloc(16 * PAGE), Some(0), "all merged back into one extent");
    }
}
