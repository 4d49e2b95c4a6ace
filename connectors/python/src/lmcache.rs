//! LMCache support in the native module.
//!
//! - The key mapping and value header of `kvtier_lmcache::keys`, for the
//!   `kvtier.lmcache` remote connector (so it stores what `lm://` serves, and the reverse).
//! - [`LMCacheL2Client`]: the native client LMCache's multiprocess mode wraps in its
//!   `NativeConnectorL2Adapter` (`native_plugin` L2 adapter). Each submit returns a future
//!   id at once; the transfer runs on a Rust thread with the GIL released, through the
//!   shared-memory data plane when the server is on this host; its completion is queued and
//!   the client's eventfd signalled, and `drain_completions` hands the queue to LMCache.

use std::{
    collections::BTreeMap,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use kvtier_blockmgr::Durability;
use kvtier_lmcache::keys::{ValueHeader, engine_key, object_key};
use pyo3::{prelude::*, types::PyBytes, types::PyList};

use kvtier_client::shm::ForeignBytes;

use crate::{Client, InvalidArgumentError, Raw, runtime};

/// `(namespace, key bytes)` of a `CacheEngineKey` string under `prefix`.
#[pyfunction]
fn lmcache_engine_key<'py>(py: Python<'py>, prefix: &str, key: &str) -> PyResult<(String, Bound<'py, PyBytes>)> {
    let k = engine_key(prefix, key).map_err(|e| InvalidArgumentError::new_err(e.to_string()))?;
    Ok((k.namespace.to_string(), PyBytes::new(py, k.key.as_bytes())))
}

/// `(namespace, key bytes)` of a multiprocess-mode object key string under `prefix`.
#[pyfunction]
fn lmcache_object_key<'py>(py: Python<'py>, prefix: &str, key: &str) -> PyResult<(String, Bound<'py, PyBytes>)> {
    let k = object_key(prefix, key).map_err(|e| InvalidArgumentError::new_err(e.to_string()))?;
    Ok((k.namespace.to_string(), PyBytes::new(py, k.key.as_bytes())))
}

/// The header kvtier stores before an LMCache chunk: `fmt` (a `MemoryFormat` value),
/// `groups` as `(dtype code, shape)` pairs (`lmcache.v1.protocol.DTYPE_TO_INT`), the
/// payload's `length`.
#[pyfunction]
fn lmcache_header<'py>(
    py: Python<'py>,
    fmt: i32,
    groups: Vec<(i32, Vec<i32>)>,
    length: u64,
) -> PyResult<Bound<'py, PyBytes>> {
    if groups.is_empty() || groups.len() > kvtier_lmcache::keys::MAX_GROUPS {
        return Err(InvalidArgumentError::new_err(format!("{} groups: 1 to 64 are allowed", groups.len())));
    }
    let groups = groups
        .into_iter()
        .map(|(dtype, shape)| {
            if shape.len() > 4 {
                return Err(InvalidArgumentError::new_err(format!("shape {shape:?} has more than 4 dimensions")));
            }
            let mut dims = [0i32; 4];
            dims[..shape.len()].copy_from_slice(&shape);
            Ok((dtype, dims))
        })
        .collect::<PyResult<_>>()?;
    Ok(PyBytes::new(py, &ValueHeader { fmt, length, groups }.encode()))
}

/// `(fmt, [(dtype code, [4 dims])...], payload length)` of a header; `InvalidArgumentError`
/// when the bytes are not one.
#[pyfunction]
#[expect(clippy::type_complexity, reason = "a plain tuple is what Python wants")]
fn lmcache_parse_header(data: &[u8]) -> PyResult<(i32, Vec<(i32, Vec<i32>)>, u64)> {
    let h = ValueHeader::decode(data).map_err(InvalidArgumentError::new_err)?;
    Ok((h.fmt, h.groups.into_iter().map(|(d, s)| (d, s.to_vec())).collect(), h.length))
}

/// Bytes of a header describing `groups` groups.
#[pyfunction]
fn lmcache_header_len(groups: usize) -> usize {
    ValueHeader::len_for(groups)
}

/// One finished submit, as `NativeConnectorL2Adapter` reads it:
/// `(future_id, ok, error, per-key results or None)`.
type Completion = (u64, bool, String, Option<Vec<bool>>);

/// What the client's threads share.
struct Shared {
    address: String,
    shm_socket: Option<String>,
    prefix: String,
    durability: Durability,
    /// Chunks expected to load slower than this (microseconds) are reported absent, and so
    /// is the rest of their prefix: the engine recomputes them (issue 20).
    max_load_us: Option<u32>,
    /// How long an exists keeps the chunks it reports from eviction, waiting for their load.
    pin: std::time::Duration,
    /// Connected on first use, and again after a failed connect (at most once a second).
    client: Mutex<(Option<Arc<Client>>, Option<Instant>)>,
    done: Mutex<Vec<Completion>>,
    /// Submits not yet completed; `close` waits for them (they write into LMCache's memory).
    running: Mutex<usize>,
    idle: Condvar,
    efd: OwnedFd,
}

impl Shared {
    fn client(&self) -> Result<Arc<Client>, String> {
        let mut slot = self.client.lock().expect("client lock");
        if let Some(c) = &slot.0 {
            return Ok(c.clone());
        }
        if slot.1.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return Err(format!("kvtier at {} was unreachable less than a second ago", self.address));
        }
        let connected = Python::attach(|py| {
            Client::new(py, self.address.clone(), self.shm_socket.clone(), Vec::new(), None, None, None)
                .map_err(|e| e.to_string())
        });
        match connected {
            Ok(c) => {
                let c = Arc::new(c);
                *slot = (Some(c.clone()), None);
                Ok(c)
            }
            Err(e) => {
                slot.1 = Some(Instant::now());
                Err(e)
            }
        }
    }

    fn complete(&self, c: Completion) {
        // A panic elsewhere must not stop completions (LMCache waits for every one).
        self.done.lock().unwrap_or_else(|p| p.into_inner()).push(c);
        let one = 1u64.to_ne_bytes();
        // SAFETY: writing 8 bytes to our own eventfd; it fails only when the counter is
        // saturated, and then the reader is signalled already.
        unsafe { libc::write(self.efd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        *running -= 1;
        if *running == 0 {
            self.idle.notify_all();
        }
    }

    /// Keys grouped by namespace: `(namespace, [(position, key bytes)])`. A key that is not
    /// an object key is in no group: its result stays false (not found, not stored).
    fn group(&self, keys: &[String]) -> BTreeMap<String, Vec<(usize, Vec<u8>)>> {
        let mut groups: BTreeMap<String, Vec<(usize, Vec<u8>)>> = BTreeMap::new();
        for (i, k) in keys.iter().enumerate() {
            if let Ok(bk) = object_key(&self.prefix, k) {
                groups.entry(bk.namespace.to_string()).or_default().push((i, bk.key.as_bytes().to_vec()));
            }
        }
        groups
    }
}

/// The native L2 client of LMCache's multiprocess mode (`native_plugin` adapter).
#[pyclass(module = "kvtier._native")]
pub(crate) struct LMCacheL2Client {
    shared: Arc<Shared>,
    next: AtomicU64,
    closed: std::sync::atomic::AtomicBool,
}

enum Op {
    Get(Vec<Vec<Raw>>),
    Set(Vec<Vec<Raw>>),
    Exists,
    Delete,
}

#[pymethods]
impl LMCacheL2Client {
    /// A client of the kvtier server at `address` (gRPC), through its shared-memory data
    /// plane when `shm_socket` is given (same host). Keys map under `namespace_prefix`;
    /// stores are acknowledged per `durability` ("cache", "local_disk", "write_back").
    /// Nothing is connected until the first submit: a server that is down makes misses.
    /// `max_load_us`: a chunk kvtier expects to load slower than this many microseconds
    /// (the engine's time to recompute one), and the rest of its prefix, is reported absent
    /// (unset: every stored chunk). An exists pins what it reports for `pin_ms` or until
    /// loaded.
    #[new]
    #[pyo3(signature = (
        address, shm_socket=None, namespace_prefix="lmcache".to_string(), durability="cache",
        max_load_us=None, pin_ms=10_000,
    ))]
    fn new(
        address: String,
        shm_socket: Option<String>,
        namespace_prefix: String,
        durability: &str,
        max_load_us: Option<u32>,
        pin_ms: u64,
    ) -> PyResult<Self> {
        let durability = crate::durability(durability)?;
        kvtier_lmcache::keys::object_key(&namespace_prefix, "m@0@0@0")
            .map_err(|e| InvalidArgumentError::new_err(format!("namespace_prefix {namespace_prefix:?}: {e}")))?;
        // SAFETY: eventfd has no memory preconditions; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(pyo3::exceptions::PyOSError::new_err(format!("eventfd: {}", std::io::Error::last_os_error())));
        }
        let shared = Shared {
            address,
            shm_socket,
            prefix: namespace_prefix,
            durability,
            max_load_us,
            pin: std::time::Duration::from_millis(pin_ms),
            client: Mutex::new((None, None)),
            done: Mutex::new(Vec::new()),
            running: Mutex::new(0),
            idle: Condvar::new(),
            // SAFETY: `fd` is a fresh descriptor we own.
            efd: unsafe { OwnedFd::from_raw_fd(fd) },
        };
        Ok(LMCacheL2Client { shared: Arc::new(shared), next: AtomicU64::new(1), closed: false.into() })
    }

    /// The eventfd signalled when completions are ready.
    fn event_fd(&self) -> i32 {
        self.shared.efd.as_raw_fd()
    }

    /// Reads `keys` into `buffers` (one writable buffer per key, e.g. a `memoryview` of an
    /// L1 memory object). A key counts as loaded only when its block fills its buffer.
    fn submit_batch_get(&self, keys: Vec<String>, buffers: &Bound<'_, PyList>) -> PyResult<u64> {
        let bufs = crate::buffers(buffers, keys.len(), true, "buffer")?;
        Ok(self.submit(keys, Op::Get(bufs)))
    }

    /// Stores `buffers[i]` under `keys[i]`.
    fn submit_batch_set(&self, keys: Vec<String>, buffers: &Bound<'_, PyList>) -> PyResult<u64> {
        let bufs = crate::buffers(buffers, keys.len(), false, "buffer")?;
        Ok(self.submit(keys, Op::Set(bufs)))
    }

    /// Which keys are stored. Prefix semantics, as LMCache's lookups count hits: keys
    /// after the first absent one in a namespace are reported absent.
    fn submit_batch_exists(&self, keys: Vec<String>) -> u64 {
        self.submit(keys, Op::Exists)
    }

    /// Deletes `keys` (L2 eviction).
    fn submit_batch_delete(&self, keys: Vec<String>) -> u64 {
        self.submit(keys, Op::Delete)
    }

    /// Completions since the last call: `(future_id, ok, error, per-key results)`.
    fn drain_completions(&self) -> Vec<Completion> {
        let mut counter = [0u8; 8];
        // SAFETY: reading our own non-blocking eventfd into 8 bytes; EAGAIN when unsignalled.
        unsafe { libc::read(self.shared.efd.as_raw_fd(), counter.as_mut_ptr().cast(), counter.len()) };
        std::mem::take(&mut *self.shared.done.lock().expect("completions lock"))
    }

    /// Refuses new submits and waits for those running: they write into LMCache's buffers,
    /// which LMCache frees once this returns. (Each transfer ends: gRPC calls and shm
    /// sockets fail when the server is gone.)
    fn close(&self, py: Python<'_>) {
        self.closed.store(true, Ordering::SeqCst);
        py.detach(|| {
            let running = self.shared.running.lock().unwrap_or_else(|p| p.into_inner());
            drop(self.shared.idle.wait_while(running, |n| *n > 0));
        });
    }

    fn __repr__(&self) -> String {
        format!("kvtier.LMCacheL2Client({:?}, shm={})", self.shared.address, self.shared.shm_socket.is_some())
    }
}

impl LMCacheL2Client {
    fn submit(&self, keys: Vec<String>, op: Op) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        *self.shared.running.lock().expect("running lock") += 1;
        let shared = self.shared.clone();
        if self.closed.load(Ordering::SeqCst) {
            shared.complete((id, false, "the client is closed".into(), Some(vec![false; keys.len()])));
            return id;
        }
        // `ok` is whether the batch ran: LMCache reads per-key results of lookups and loads
        // only from a batch that did; a store is one result, every key stored.
        let is_store = matches!(op, Op::Set(_));
        runtime().spawn_blocking(move || {
            // Completes even if `run` panics: LMCache holds locks until every submit completes.
            let guard = Completes { shared: &shared, id, keys: keys.len(), done: false };
            let (ok, error, results) = match run(guard.shared, &keys, op) {
                Ok(results) if is_store && !results.iter().all(|&r| r) => {
                    (false, "some chunks were not stored".to_string(), results)
                }
                Ok(results) => (true, String::new(), results),
                Err(e) => (false, e, vec![false; keys.len()]),
            };
            guard.finish((id, ok, error, Some(results)));
        });
        id
    }
}

/// Reports a submit's completion exactly once: its result, or a failure when dropped
/// without one (the work panicked).
struct Completes<'a> {
    shared: &'a Shared,
    id: u64,
    keys: usize,
    done: bool,
}

impl Completes<'_> {
    fn finish(mut self, c: Completion) {
        self.done = true;
        self.shared.complete(c);
    }
}

impl Drop for Completes<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.shared.complete((
                self.id,
                false,
                "the transfer failed (panicked)".into(),
                Some(vec![false; self.keys]),
            ));
        }
    }
}

/// One submit's work on a blocking thread: per-key results, or why the batch failed.
fn run(shared: &Shared, keys: &[String], op: Op) -> Result<Vec<bool>, String> {
    let groups = shared.group(keys);
    let client = shared.client()?;
    let mut results = vec![false; keys.len()];
    for (ns, members) in groups {
        let names: Vec<Vec<u8>> = members.iter().map(|(_, k)| k.clone()).collect();
        let err = |e: PyErr| e.to_string();
        match &op {
            Op::Get(bufs) => {
                // `bufs` holds the buffers, and LMCache does not touch a load's buffers before
                // its completion.
                let outs: Vec<Vec<ForeignBytes>> =
                    members.iter().map(|(i, _)| bufs[*i].iter().map(Raw::foreign).collect()).collect();
                let room: Vec<usize> = outs.iter().map(|o| o.iter().map(ForeignBytes::len).sum()).collect();
                let got = client.get_into_bytes(&ns, &names, &outs).map_err(err)?;
                for (((i, _), n), room) in members.iter().zip(got).zip(room) {
                    results[*i] = n == Some(room);
                }
            }
            Op::Set(bufs) => {
                let data: Vec<Vec<ForeignBytes>> =
                    members.iter().map(|(i, _)| bufs[*i].iter().map(Raw::foreign).collect()).collect();
                let put = client.put_bytes(&ns, &names, &data, shared.durability).map_err(err)?;
                for ((i, _), r) in members.iter().zip(put) {
                    results[*i] = r.ok;
                }
            }
            Op::Exists => {
                let present = client.lookup_looked(&ns, &names, shared.pin).map_err(err)?.loadable(shared.max_load_us);
                for (i, _) in &members[..present.min(members.len())] {
                    results[*i] = true;
                }
            }
            Op::Delete => {
                let deleted = client.delete_keys(&ns, &names).map_err(err)?;
                for ((i, _), d) in members.iter().zip(deleted) {
                    results[*i] = d;
                }
            }
        }
    }
    Ok(results)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<LMCacheL2Client>()?;
    m.add_function(wrap_pyfunction!(lmcache_engine_key, m)?)?;
    m.add_function(wrap_pyfunction!(lmcache_object_key, m)?)?;
    m.add_function(wrap_pyfunction!(lmcache_header, m)?)?;
    m.add_function(wrap_pyfunction!(lmcache_parse_header, m)?)?;
    m.add_function(wrap_pyfunction!(lmcache_header_len, m)?)?;
    Ok(())
}
