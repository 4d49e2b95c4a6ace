//! The I/O seam of the SSD tier: page-aligned buffers and an engine that reads and writes
//! them at file offsets. Slot, header and checksum logic never touch a syscall; a new engine
//! (io_uring) only has to implement [`IoEngine`].

use std::{
    alloc::{Layout, alloc, dealloc},
    fmt,
    fs::File,
    io,
    os::fd::AsRawFd,
    ptr::NonNull,
    sync::Arc,
};

use bytes::Bytes;
use futures::future::BoxFuture;
use parking_lot::Mutex;

use crate::slab::PAGE;

/// One page-aligned heap allocation; freed on drop.
struct RawBuf {
    ptr: NonNull<u8>,
    cap: usize,
}

// SAFETY: an owned allocation, like Vec<u8>.
unsafe impl Send for RawBuf {}
// SAFETY: shared access is read-only through &self.
unsafe impl Sync for RawBuf {}

impl RawBuf {
    fn layout(cap: usize) -> Layout {
        Layout::from_size_align(cap, PAGE as usize).expect("page-aligned layout")
    }

    fn new(cap: usize) -> Self {
        assert!(cap > 0 && cap.is_multiple_of(PAGE as usize));
        // SAFETY: non-zero size.
        let ptr = unsafe { alloc(Self::layout(cap)) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(Self::layout(cap)));
        RawBuf { ptr, cap }
    }
}

impl Drop for RawBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) };
    }
}

/// A heap buffer aligned to [`PAGE`], as O_DIRECT requires; its length is a multiple of
/// [`PAGE`]. Contents start out unspecified (callers fill what they use). Returns to its
/// [`BufPool`] on drop.
pub(crate) struct AlignedBuf {
    raw: Option<RawBuf>,
    pool: Option<Arc<BufPool>>,
}

impl AlignedBuf {
    fn raw(&self) -> &RawBuf {
        self.raw.as_ref().expect("present until drop")
    }

    pub(crate) fn len(&self) -> usize {
        self.raw().cap
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        let raw = self.raw();
        // SAFETY: we own `cap` bytes; u8 has no invalid values.
        unsafe { std::slice::from_raw_parts_mut(raw.ptr.as_ptr(), raw.cap) }
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        let raw = self.raw();
        // SAFETY: as in `as_mut_slice`.
        unsafe { std::slice::from_raw_parts(raw.ptr.as_ptr(), raw.cap) }
    }
}

impl fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len())
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if let (Some(raw), Some(pool)) = (self.raw.take(), self.pool.take()) {
            pool.give_back(raw);
        }
    }
}

/// Recycles aligned buffers so large reads do not map and fault fresh memory each time.
/// Holds at most `limit` bytes of idle buffers.
pub(crate) struct BufPool {
    idle: Mutex<(Vec<RawBuf>, usize)>,
    limit: usize,
}

impl fmt::Debug for BufPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BufPool(idle {} of {} bytes)", self.idle.lock().1, self.limit)
    }
}

impl BufPool {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(BufPool { idle: Mutex::new((Vec::new(), 0)), limit })
    }

    /// A buffer of at least `len` bytes (rounded up to a page) that returns here on drop.
    pub(crate) fn take(self: &Arc<Self>, len: usize) -> AlignedBuf {
        let cap = len.next_multiple_of(PAGE as usize).max(PAGE as usize);
        let raw = {
            let mut idle = self.idle.lock();
            idle.0.iter().position(|b| b.cap == cap).map(|i| {
                idle.1 -= cap;
                idle.0.swap_remove(i)
            })
        };
        AlignedBuf { raw: Some(raw.unwrap_or_else(|| RawBuf::new(cap))), pool: Some(self.clone()) }
    }

    /// Keeps `raw` if there is room, else frees it.
    fn give_back(&self, raw: RawBuf) {
        let mut idle = self.idle.lock();
        if idle.1 + raw.cap <= self.limit {
            idle.1 += raw.cap;
            idle.0.push(raw);
        }
    }
}

/// What a write puts on disk, in order. Every piece must be page-aligned in memory and a
/// multiple of [`PAGE`] long when the file is opened with O_DIRECT.
#[derive(Debug)]
pub(crate) enum WriteData {
    /// One buffer.
    Buf(AlignedBuf),
    /// A header page, then caller bytes already aligned (e.g. an arena slot).
    HeaderThen(AlignedBuf, Bytes),
}

/// Positional reads and writes on one file, off the async reactor.
pub(crate) trait IoEngine: Send + Sync + fmt::Debug + 'static {
    /// Fills all of `buf` from `offset`. Returns the buffer either way.
    fn read(&self, offset: u64, buf: AlignedBuf) -> BoxFuture<'static, (AlignedBuf, io::Result<()>)>;
    /// Writes all of `data` at `offset`.
    fn write(&self, offset: u64, data: WriteData) -> BoxFuture<'static, io::Result<()>>;
}

/// `pread`/`pwritev` on tokio's blocking pool.
#[derive(Debug)]
pub(crate) struct PsyncEngine {
    file: Arc<File>,
    runtime: tokio::runtime::Handle,
}

impl PsyncEngine {
    pub(crate) fn new(file: File, runtime: tokio::runtime::Handle) -> Self {
        PsyncEngine { file: Arc::new(file), runtime }
    }
}

impl IoEngine for PsyncEngine {
    fn read(&self, offset: u64, mut buf: AlignedBuf) -> BoxFuture<'static, (AlignedBuf, io::Result<()>)> {
        let file = self.file.clone();
        let task = self.runtime.spawn_blocking(move || {
            let res = pread_all(&file, buf.as_mut_slice(), offset);
            (buf, res)
        });
        Box::pin(async move { task.await.expect("pread task panicked") })
    }

    fn write(&self, offset: u64, data: WriteData) -> BoxFuture<'static, io::Result<()>> {
        let file = self.file.clone();
        let task = self.runtime.spawn_blocking(move || match &data {
            WriteData::Buf(buf) => pwritev_all(&file, &[buf.as_ref()], offset),
            WriteData::HeaderThen(header, bytes) => pwritev_all(&file, &[header.as_ref(), bytes], offset),
        });
        Box::pin(async move { task.await.expect("pwrite task panicked") })
    }
}

pub(crate) fn pread_all(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::pread(file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), offset as libc::off_t) };
        match n {
            -1 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("file ends before offset {offset}"))),
            n => {
                buf = &mut buf[n as usize..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

pub(crate) fn pwritev_all(file: &File, pieces: &[&[u8]], mut offset: u64) -> io::Result<()> {
    let mut iov: Vec<libc::iovec> =
        pieces.iter().map(|p| libc::iovec { iov_base: p.as_ptr() as *mut _, iov_len: p.len() }).collect();
    let mut first = 0;
    while first < iov.len() {
        // SAFETY: every iovec points into a live slice for the duration of the call.
        let n = unsafe {
            libc::pwritev(file.as_raw_fd(), iov[first..].as_ptr(), (iov.len() - first) as i32, offset as libc::off_t)
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut n = n as usize;
        offset += n as u64;
        while first < iov.len() && n >= iov[first].iov_len {
            n -= iov[first].iov_len;
            first += 1;
        }
        if first < iov.len() {
            // SAFETY: advancing within the same slice.
            iov[first].iov_base = unsafe { (iov[first].iov_base as *mut u8).add(n) }.cast();
            iov[first].iov_len -= n;
        }
    }
    Ok(())
}
