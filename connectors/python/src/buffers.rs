//! Python buffers (anything with the buffer protocol) as kvtier reads and writes them: with
//! the GIL released, so any Python thread may touch the same memory meanwhile. They are
//! therefore never seen through a Rust reference (`&[u8]` would promise that nobody writes
//! them, `&mut [u8]` that nobody reads them): only as [`ForeignBytes`], copied by pointer.

use kvtier_client::shm::ForeignBytes;
use pyo3::{buffer::PyUntypedBuffer, prelude::*, types::PyList};

use crate::errors::InvalidArgumentError;

/// A buffer checked contiguous (and writable when asked), kept alive (and its export held,
/// so Python cannot resize or free it) while this lives.
pub(crate) struct Raw {
    bytes: ForeignBytes,
    _hold: PyUntypedBuffer,
}

impl Raw {
    /// Its bytes, to copy in or out by pointer while this lives.
    pub(crate) fn foreign(&self) -> ForeignBytes {
        self.bytes
    }
}

pub(crate) fn raw(obj: &Bound<'_, PyAny>, writable: bool, what: &str, i: usize) -> PyResult<Raw> {
    let buf = PyUntypedBuffer::get(obj)
        .map_err(|e| InvalidArgumentError::new_err(format!("{what} {i}: not a buffer ({e})")))?;
    if !buf.is_c_contiguous() {
        return Err(InvalidArgumentError::new_err(format!("{what} {i}: the buffer is not C-contiguous")));
    }
    if writable && buf.readonly() {
        return Err(InvalidArgumentError::new_err(format!("{what} {i}: the buffer is read-only")));
    }
    // SAFETY: the export `_hold` keeps the memory alive and its size fixed while the `Raw`
    // lives, and every user copies through the pointer only while it holds the `Raw`.
    let bytes = unsafe { ForeignBytes::new(buf.buf_ptr().cast::<u8>(), buf.len_bytes()) };
    Ok(Raw { bytes, _hold: buf })
}

/// One buffer per key from a Python list, each checked by [`raw`]. An item may also be a
/// tuple (or list) of buffers: the block is those buffers one after the other (a header
/// and a payload that live apart, with no copy to join them).
pub(crate) fn buffers(list: &Bound<'_, PyList>, keys: usize, writable: bool, what: &str) -> PyResult<Vec<Vec<Raw>>> {
    if keys != list.len() {
        return Err(InvalidArgumentError::new_err(format!("{keys} keys for {} {what}s", list.len())));
    }
    list.iter()
        .enumerate()
        .map(|(i, b)| {
            if b.is_instance_of::<pyo3::types::PyTuple>() || b.is_instance_of::<PyList>() {
                b.try_iter()?.map(|part| raw(&part?, writable, what, i)).collect()
            } else {
                Ok(vec![raw(&b, writable, what, i)?])
            }
        })
        .collect()
}

/// Each key's parts as foreign bytes, for the copies (the `Raw`s must outlive them).
pub(crate) fn foreign(bufs: &[Vec<Raw>]) -> Vec<Vec<ForeignBytes>> {
    bufs.iter().map(|parts| parts.iter().map(Raw::foreign).collect()).collect()
}
