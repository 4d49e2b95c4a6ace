//! `ShmSession`: the shared-memory data plane's slot operations, for engines that copy block
//! bytes themselves. vLLM's scheduler allocates and pins slots through a session; its GPU
//! workers map the same arena (`ShmSession.arena`, a writable buffer) and copy straight
//! between GPU memory and the slots, so no byte passes through a Python or socket buffer.

use std::{ffi::c_int, sync::Mutex};

use kvtier_client::shm::{ShmAlloc, ShmArena, ShmClient, ShmGet, ShmPin, ShmPut};
use kvtier_tiers::TierKind;
use pyo3::{IntoPyObjectExt, exceptions::PyBufferError, ffi, prelude::*};

use crate::{PutResult, shm_error};

/// The server's arena as this process mapped it: a writable buffer (use it with
/// `memoryview`, `numpy.frombuffer` or `torch.frombuffer`). It stays mapped as long as this
/// object or a buffer over it lives, also after the session closed or the server died.
#[pyclass(frozen, module = "kvtier._native")]
#[derive(Debug)]
pub(crate) struct Arena {
    arena: ShmArena,
}

#[pymethods]
impl Arena {
    /// Which arena this is: equal ids mean the same memory (a restarted server has a new one).
    #[getter]
    fn id(&self) -> u64 {
        self.arena.id()
    }

    /// True for a window of this session's own instead of the server's arena (the server
    /// gives one to uids that may not read every namespace): no other session sees it.
    #[getter]
    fn private(&self) -> bool {
        self.arena.is_private()
    }

    fn __len__(&self) -> usize {
        self.arena.len()
    }

    fn __repr__(&self) -> String {
        format!("kvtier.Arena(id={}, {} bytes)", self.arena.id(), self.arena.len())
    }

    /// # Safety
    /// Called by Python with a valid `view`; the buffer holds a reference to this object, which
    /// keeps the mapping alive.
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("a NULL Py_buffer"));
        }
        let (ptr, len) = (slf.get().arena.as_ptr(), slf.get().arena.len());
        // SAFETY: `view` is valid (checked above); the memory is `len` mapped, writable bytes.
        let filled =
            unsafe { ffi::PyBuffer_FillInfo(view, slf.as_ptr(), ptr.cast(), len as ffi::Py_ssize_t, 0, flags) };
        if filled == 0 { Ok(()) } else { Err(PyErr::fetch(slf.py())) }
    }
}

/// A slot of the arena this session holds: an allocation to fill then commit, or a pinned
/// block to read then release.
#[pyclass(frozen, get_all, module = "kvtier._native")]
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    /// The session's handle (for commit and release).
    handle: u64,
    /// Byte offset of the block in the arena.
    offset: u64,
    /// Bytes of the block.
    length: u64,
    /// For a pin, the tier the block was found in ("cpu", "ssd"); None for an allocation.
    tier: Option<String>,
}

#[pymethods]
impl Slot {
    fn __repr__(&self) -> String {
        format!("Slot(handle={}, offset={}, length={}, tier={:?})", self.handle, self.offset, self.length, self.tier)
    }
}

/// Why a key was not pinned.
#[pyclass(frozen, get_all, module = "kvtier._native")]
#[derive(Debug, Clone)]
pub(crate) struct Miss {
    /// "not_found", "corrupt" (its only copy failed its checksum), "error" (a tier failed),
    /// "no_room" (stored, but the arena had no room to bring it in from SSD: read it over
    /// gRPC), or "again" (this session holds too much: release pins and ask again).
    reason: &'static str,
    /// The server's message.
    message: String,
}

#[pymethods]
impl Miss {
    fn __repr__(&self) -> String {
        format!("Miss({:?}, {:?})", self.reason, self.message)
    }
}

/// A session of a local kvtier server's shared-memory data plane (see the module doc).
/// One request at a time: open one per thread that issues requests.
#[pyclass(module = "kvtier._native")]
#[derive(Debug)]
pub(crate) struct ShmSession {
    client: Mutex<Option<ShmClient>>,
    arena: ShmArena,
    session_limit: u64,
}

impl ShmSession {
    fn with<T>(&self, py: Python<'_>, f: impl FnOnce(&mut ShmClient) -> T + Send) -> PyResult<T>
    where
        T: Send,
    {
        py.detach(|| {
            let mut client = self.client.lock().expect("shm session lock");
            match client.as_mut() {
                Some(c) => Ok(f(c)),
                None => Err(crate::UnavailableError::new_err("the shm session was closed")),
            }
        })
    }
}

#[pymethods]
impl ShmSession {
    /// Connects to the server's shm socket (`kvtier-shm.sock`) and opens `namespaces`.
    #[new]
    fn new(py: Python<'_>, shm_socket: String, namespaces: Vec<String>) -> PyResult<Self> {
        let names: Vec<&str> = namespaces.iter().map(String::as_str).collect();
        let client = py.detach(|| ShmClient::connect(&shm_socket, &names)).map_err(shm_error)?;
        Ok(ShmSession {
            arena: client.arena(),
            session_limit: client.session_limit(),
            client: Mutex::new(Some(client)),
        })
    }

    /// The mapped arena (a writable buffer).
    #[getter]
    fn arena(&self) -> Arena {
        Arena { arena: self.arena.clone() }
    }

    /// Most bytes this session may hold in slots at once.
    #[getter]
    fn session_limit(&self) -> u64 {
        self.session_limit
    }

    /// A slot for each block (`keys[i]`, `lengths[i]` bytes) of `namespace`: a [`Slot`] to
    /// write the bytes into and commit, or, for a block that gets none, its final
    /// `PutResult` (already stored: `existed`; refused: `error`, e.g. no room). `wait_ms`
    /// bounds the wait for room in a full arena (None: the server's `shm.alloc_wait`).
    #[pyo3(signature = (namespace, keys, lengths, durability="cache", wait_ms=None))]
    fn alloc(
        &self,
        py: Python<'_>,
        namespace: &str,
        keys: Vec<Vec<u8>>,
        lengths: Vec<u64>,
        durability: &str,
        wait_ms: Option<u64>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        if keys.len() != lengths.len() {
            let (k, l) = (keys.len(), lengths.len());
            return Err(crate::InvalidArgumentError::new_err(format!("{k} keys but {l} lengths")));
        }
        let durability = crate::durability(durability)?;
        let blocks: Vec<(&[u8], u64)> = keys.iter().map(Vec::as_slice).zip(lengths).collect();
        let got = self
            .with(py, |c| c.alloc(namespace, &blocks, durability, wait_ms.map(std::time::Duration::from_millis)))?
            .map_err(shm_error)?;
        got.into_iter()
            .map(|a| match a {
                ShmAlloc::Slot(s) => slot(s, None).into_py_any(py),
                ShmAlloc::Existed => PutResult::stored(true, None).into_py_any(py),
                ShmAlloc::Failed { message, .. } => PutResult::failed(message).into_py_any(py),
            })
            .collect()
    }

    /// Publishes allocated slots whose bytes are written (the server checksums them); a
    /// `PutResult` per handle, in order.
    fn commit(&self, py: Python<'_>, handles: Vec<u64>) -> PyResult<Vec<PutResult>> {
        let got = self.with(py, |c| c.commit(&handles))?.map_err(shm_error)?;
        Ok(got
            .into_iter()
            .map(|p| match p {
                ShmPut::Stored(tier) => PutResult::stored(false, Some(tier)),
                ShmPut::Existed => PutResult::stored(true, None),
                ShmPut::Failed { message, .. } => PutResult::failed(message),
            })
            .collect())
    }

    /// What a prefix lookup of `keys` in `namespace` finds, pinning nothing: the tier of each
    /// key of the longest present prefix, and the microseconds each is expected to take to
    /// load (as `Client.lookup_pinned` reports them).
    fn lookup(&self, py: Python<'_>, namespace: &str, keys: Vec<Vec<u8>>) -> PyResult<(Vec<String>, Vec<u32>)> {
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let looked =
            self.with(py, |c| c.lookup_pinned(namespace, &refs, std::time::Duration::ZERO))?.map_err(shm_error)?;
        Ok((looked.tiers.iter().map(|t| t.as_str().to_string()).collect(), looked.load_us))
    }

    /// Pins `keys` of `namespace` in the arena (blocks on SSD are read into it first): a
    /// [`Slot`] to read until released, or a [`Miss`] saying why not.
    fn pin(&self, py: Python<'_>, namespace: &str, keys: Vec<Vec<u8>>) -> PyResult<Vec<Py<PyAny>>> {
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let got = self.with(py, |c| c.pin(namespace, &refs))?.map_err(shm_error)?;
        got.into_iter()
            .map(|p| match p {
                ShmPin::Pinned { slot: s, tier } => slot(s, Some(tier)).into_py_any(py),
                ShmPin::Again => {
                    Miss { reason: "again", message: "this session holds too much".into() }.into_py_any(py)
                }
                ShmPin::Not(ShmGet::NoRoom { message }) => Miss { reason: "no_room", message }.into_py_any(py),
                ShmPin::Not(ShmGet::Miss { reason, message }) => {
                    Miss { reason: miss_reason(reason), message }.into_py_any(py)
                }
                ShmPin::Not(ShmGet::Hit { .. }) => unreachable!("a pin is never a copy"),
            })
            .collect()
    }

    /// Releases pins and abandons uncommitted allocations; how many handles were held.
    fn release(&self, py: Python<'_>, handles: Vec<u64>) -> PyResult<u32> {
        self.with(py, |c| c.release(&handles))?.map_err(shm_error)
    }

    /// Closes the session: the server releases everything it still holds. The arena stays
    /// mapped while `arena` objects or buffers over it live.
    fn close(&self, py: Python<'_>) {
        py.detach(|| self.client.lock().expect("shm session lock").take());
    }

    fn __repr__(&self) -> String {
        format!("kvtier.ShmSession(arena id {}, {} bytes)", self.arena.id(), self.arena.len())
    }
}

fn slot(s: kvtier_client::shm::ShmSlot, tier: Option<TierKind>) -> Slot {
    Slot { handle: s.handle, offset: s.offset, length: s.len, tier: tier.map(|t| t.as_str().to_string()) }
}

fn miss_reason(reason: kvtier_blockmgr::MissReason) -> &'static str {
    match reason {
        kvtier_blockmgr::MissReason::NotFound => "not_found",
        kvtier_blockmgr::MissReason::ChecksumMismatch => "corrupt",
        kvtier_blockmgr::MissReason::Error => "error",
    }
}
