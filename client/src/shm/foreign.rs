//! Memory the client does not own and another party may use at the same time: a Python
//! buffer while the GIL is released (any Python thread may write it), a pinned page a GPU
//! copies into. kvtier only ever copies in and out of it by pointer, never through a Rust
//! reference, which would promise the compiler that nobody else writes (`&[u8]`) or reads
//! (`&mut [u8]`) those bytes meanwhile. A concurrent writer can tear the copy (the caller's
//! contract is not to), but cannot make the compiler's assumptions false.

use super::{ShmClient, ShmError, ShmGet};

/// A run of foreign memory: its address and length.
#[derive(Debug, Clone, Copy)]
pub struct ForeignBytes {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: an address and a length; every access is a copy by pointer (see the module).
unsafe impl Send for ForeignBytes {}
// SAFETY: as above.
unsafe impl Sync for ForeignBytes {}

impl ForeignBytes {
    /// The `len` bytes at `ptr`.
    ///
    /// # Safety
    /// They stay mapped, and writable where written to, for as long as this value (or a
    /// copy) is used.
    pub unsafe fn new(ptr: *mut u8, len: usize) -> Self {
        ForeignBytes { ptr, len }
    }

    /// Bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies `src` in at offset `at` (which, with `src`, must fit).
    pub fn copy_in(&self, at: usize, src: &[u8]) {
        assert!(at.checked_add(src.len()).is_some_and(|end| end <= self.len), "a copy past the end");
        // SAFETY: in bounds (checked), valid per `new`'s contract; `src` is ours and cannot
        // overlap memory we only reach by pointer.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add(at), src.len()) }
    }

    /// Copies the bytes out into `dst` (exactly as long).
    pub fn copy_out(&self, dst: &mut [u8]) {
        assert_eq!(dst.len(), self.len, "a copy of another length");
        // SAFETY: valid per `new`'s contract; `dst` is ours.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr, dst.as_mut_ptr(), self.len) }
    }

    /// The bytes, copied out of `parts` one after the other.
    pub fn concat(parts: &[ForeignBytes]) -> Vec<u8> {
        let mut out = vec![0u8; parts.iter().map(ForeignBytes::len).sum()];
        let mut at = 0;
        for part in parts {
            part.copy_out(&mut out[at..at + part.len]);
            at += part.len;
        }
        out
    }
}

/// Where a put's pieces come from: slices, or foreign memory copied by pointer.
pub trait PutSource {
    /// The first byte and the length.
    fn raw(&self) -> (*const u8, usize);
}

impl PutSource for &[u8] {
    fn raw(&self) -> (*const u8, usize) {
        (self.as_ptr(), self.len())
    }
}

impl PutSource for ForeignBytes {
    fn raw(&self) -> (*const u8, usize) {
        (self.ptr, self.len)
    }
}

/// Copies `data` into `parts` in order; `Err` when they hold less than all of it.
pub fn scatter(data: &[u8], parts: &mut [&mut [u8]]) -> Result<(), String> {
    // SAFETY: each part is borrowed exclusively for the whole call.
    let parts: Vec<ForeignBytes> =
        parts.iter_mut().map(|p| unsafe { ForeignBytes::new(p.as_mut_ptr(), p.len()) }).collect();
    scatter_foreign(data, &parts)
}

/// [`scatter`] into foreign memory: `data` across `parts` in order.
pub fn scatter_foreign(data: &[u8], parts: &[ForeignBytes]) -> Result<(), String> {
    let room: usize = parts.iter().map(ForeignBytes::len).sum();
    if room < data.len() {
        return Err(format!("the block is {} bytes; the buffers hold {room}", data.len()));
    }
    let mut rest = data;
    for part in parts {
        let n = part.len.min(rest.len());
        part.copy_in(0, &rest[..n]);
        rest = &rest[n..];
    }
    Ok(())
}

impl ShmClient {
    /// [`ShmClient::get_into_parts`] into foreign memory: each key's block is copied by
    /// pointer across its parts, in order.
    pub fn get_into_foreign(
        &mut self,
        namespace: &str,
        keys: &[&[u8]],
        outs: &[Vec<ForeignBytes>],
    ) -> Result<Vec<ShmGet>, ShmError> {
        assert_eq!(keys.len(), outs.len(), "one output per key");
        self.read(namespace, keys, |i, src, len| {
            // SAFETY: `src` holds `len` pinned bytes of the arena until the release after
            // this call (the arena is shared memory too, but the pin keeps its writer away).
            scatter_foreign(unsafe { std::slice::from_raw_parts(src, len) }, &outs[i])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scatter_and_concat_copy_across_parts_and_refuse_too_little_room() {
        let (mut a, mut b) = (vec![0u8; 3], vec![0u8; 5]);
        // SAFETY: both vectors outlive the parts.
        let parts = unsafe { [ForeignBytes::new(a.as_mut_ptr(), 3), ForeignBytes::new(b.as_mut_ptr(), 5)] };
        scatter_foreign(b"abcdefg", &parts).unwrap();
        assert_eq!(ForeignBytes::concat(&parts), b"abcdefg\0");
        assert!(scatter_foreign(b"abcdefghi", &parts).unwrap_err().contains("the buffers hold 8"));
        assert_eq!((&a[..], &b[..]), (&b"abc"[..], &b"defg\0"[..]));
    }
}
