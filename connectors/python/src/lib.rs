//! `kvtier._native`: the Rust half of the `kvtier` Python package.
//!
//! One class, [`Client`], with three ways to reach blocks:
//! - a `kvtier serve` over gRPC (TCP or its Unix socket);
//! - the same server's shared-memory data plane, when `shm_socket` is given: block bytes are
//!   copied straight between Python buffers and the server's arena, and blocks the arena has
//!   no room for go over gRPC instead;
//! - an embedded manager running in this process (`Client.embedded`), for single-process use.
//!
//! Every call releases the GIL while it waits or copies. Buffers are anything exposing the
//! buffer protocol, C-contiguous (bytes, bytearray, memoryview, numpy arrays).

mod buffers;
mod errors;
mod lmcache;
mod objects;
mod put_result;
mod session;
mod sessions;

use std::sync::OnceLock;

pub(crate) use self::errors::{
    InvalidArgumentError, KvtierError, OutcomeUnknownError, PermissionDeniedError, ResourceExhaustedError,
    UnavailableError, client_error, error, shm_error, tier_error, write_error,
};

use bytes::Bytes;
use kvtier_blockmgr::{
    Client as RpcClient, ClientTls, Config, Durability, GetItem, GetOutcome, Manager, Metrics, Objects, PutItem,
};
use kvtier_client::shm::{ForeignBytes, ShmError, ShmGet, ShmPut};
use kvtier_tiers::{BlockKey, Error as TierError, Key, Namespace, PutStatus, TierKind};
use pyo3::{
    prelude::*,
    types::{PyBytes, PyList},
};

pub(crate) use self::buffers::{Raw, buffers, foreign, raw};
use self::put_result::PutResult;
use tonic::Code;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kvtier-py")
            .enable_all()
            .build()
            .expect("a tokio runtime for the kvtier client")
    })
}

/// The client's TLS from its arguments (PEM file paths), else from the environment as the
/// CLI reads it; `None` for plaintext.
fn client_tls(ca: Option<String>, cert: Option<String>, key: Option<String>) -> PyResult<Option<ClientTls>> {
    let read = |what: &str, path: &str| {
        std::fs::read(path).map_err(|e| InvalidArgumentError::new_err(format!("{what} {path}: {e}")))
    };
    let identity = match (&cert, &key) {
        (Some(cert), Some(key)) => Some((read("tls_cert", cert)?, read("tls_key", key)?)),
        (None, None) => None,
        _ => {
            return Err(InvalidArgumentError::new_err(
                "tls_cert and tls_key go together: the client's certificate and its private key",
            ));
        }
    };
    match ca {
        Some(ca) => Ok(Some(ClientTls { ca: read("tls_ca", &ca)?, identity, domain: None })),
        None if identity.is_some() => {
            Err(InvalidArgumentError::new_err("tls_cert and tls_key need tls_ca (the CA that signed the node)"))
        }
        None => ClientTls::from_env().map_err(client_error),
    }
}

fn durability(name: &str) -> PyResult<Durability> {
    name.parse().map_err(InvalidArgumentError::new_err)
}

/// Where requests go.
enum Backend {
    Remote(Box<RpcClient>),
    Embedded(Objects),
}

/// A client of one kvtier node (remote, or embedded in this process).
#[pyclass(module = "kvtier._native")]
struct Client {
    backend: Backend,
    /// The shared-memory session, when the node is on this host and one was asked for.
    shm: Option<sessions::ShmSessions>,
    address: String,
}

fn block_keys(namespace: &str, keys: &[Vec<u8>]) -> PyResult<Vec<BlockKey>> {
    let ns = Namespace::new(namespace).map_err(|e| tier_error(&e))?;
    keys.iter()
        .enumerate()
        .map(|(i, k)| {
            Key::new(k)
                .map(|k| BlockKey::new(ns.clone(), k))
                .map_err(|e| InvalidArgumentError::new_err(format!("key {i}: {e}")))
        })
        .collect()
}

#[pymethods]
impl Client {
    /// Connects to a `kvtier serve` at `address` (`host:port`, `http://host:port` or
    /// `unix:///path/kvtier.sock`). With `shm_socket` (the server's `kvtier-shm.sock`),
    /// block bytes move through shared memory: one session for the `namespaces` given (and
    /// only those), or, given none, a session per namespace on its first use.
    /// Over TLS with `tls_ca` (the PEM file of the CA that signed the node), plus
    /// `tls_cert` and `tls_key` where the node requires client certificates; without them,
    /// from `$KVTIER_TLS_CA`, `$KVTIER_TLS_CERT` and `$KVTIER_TLS_KEY`, as the CLI.
    #[new]
    #[pyo3(signature = (address, shm_socket=None, namespaces=Vec::new(), tls_ca=None, tls_cert=None, tls_key=None))]
    fn new(
        py: Python<'_>,
        address: String,
        shm_socket: Option<String>,
        namespaces: Vec<String>,
        tls_ca: Option<String>,
        tls_cert: Option<String>,
        tls_key: Option<String>,
    ) -> PyResult<Self> {
        let tls = client_tls(tls_ca, tls_cert, tls_key)?;
        let client =
            py.detach(|| runtime().block_on(RpcClient::connect_with(&address, tls.as_ref()))).map_err(client_error)?;
        let shm = match shm_socket {
            None => None,
            Some(path) => Some(py.detach(|| sessions::ShmSessions::connect(path, &namespaces)).map_err(shm_error)?),
        };
        Ok(Client { backend: Backend::Remote(Box::new(client)), shm, address })
    }

    /// A manager running inside this process (no server), configured by `config` (the text
    /// of a kvtier.toml; empty for the defaults: 1 GiB of memory, 8 GiB of SSD under
    /// ./kvtier-data).
    #[staticmethod]
    #[pyo3(signature = (config=String::new()))]
    fn embedded(py: Python<'_>, config: String) -> PyResult<Self> {
        let config = Config::parse(&config).map_err(|e| InvalidArgumentError::new_err(e.to_string()))?;
        let manager = py
            .detach(|| {
                runtime().block_on(async {
                    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
                        kvtier_blockmgr::Error::Config(format!("data_dir {}: {e}", config.data_dir.display()))
                    })?;
                    Objects::open(&config, Metrics::new()).await
                })
            })
            .map_err(|e| match &e {
                kvtier_blockmgr::Error::Config(_) => InvalidArgumentError::new_err(e.to_string()),
                kvtier_blockmgr::Error::Tier(t @ TierError::Config { .. }) => {
                    InvalidArgumentError::new_err(t.to_string())
                }
                kvtier_blockmgr::Error::Tier(t) => tier_error(t),
                kvtier_blockmgr::Error::Node(n) => tier_error(n),
                _ => KvtierError::new_err(e.to_string()),
            })?;
        Ok(Client { backend: Backend::Embedded(manager), shm: None, address: "embedded".into() })
    }

    /// True when block bytes move through shared memory.
    #[getter]
    fn uses_shm(&self) -> bool {
        self.shm.is_some()
    }

    fn __repr__(&self) -> String {
        format!("kvtier.Client({:?}, shm={})", self.address, self.shm.is_some())
    }

    /// Stores blocks: `keys[i]` (bytes, 1..=64) gets the bytes of buffer `values[i]` (or of
    /// a tuple of buffers, joined in order).
    /// `durability` is "cache" (acknowledged once in memory), "local_disk" (once on SSD) or
    /// "write_back" (once on SSD, then flushed to Blob in the background).
    /// One result per block, in order; request-level failures raise.
    #[pyo3(signature = (namespace, keys, values, durability="cache"))]
    fn put(
        &self,
        py: Python<'_>,
        namespace: &str,
        keys: Vec<Vec<u8>>,
        values: &Bound<'_, PyList>,
        durability: &str,
    ) -> PyResult<Vec<PutResult>> {
        let durability = self::durability(durability)?;
        let bufs = buffers(values, keys.len(), false, "value")?;
        // `bufs` holds the buffers until the copies are done.
        py.detach(|| self.put_bytes(namespace, &keys, &foreign(&bufs), durability))
    }

    /// Reads blocks; `None` for each key not found.
    fn get<'py>(
        &self,
        py: Python<'py>,
        namespace: &str,
        keys: Vec<Vec<u8>>,
    ) -> PyResult<Vec<Option<Bound<'py, PyBytes>>>> {
        let got = py.detach(|| self.get_bytes(namespace, &keys))?;
        Ok(got.into_iter().map(|g| g.map(|b| PyBytes::new(py, &b))).collect())
    }

    /// Reads blocks into caller buffers (one writable buffer per key, at least the block's
    /// size; or a tuple of buffers filled in order). Returns the bytes read per key, `None`
    /// for a miss.
    fn get_into(
        &self,
        py: Python<'_>,
        namespace: &str,
        keys: Vec<Vec<u8>>,
        buffers: &Bound<'_, PyList>,
    ) -> PyResult<Vec<Option<usize>>> {
        let bufs = self::buffers(buffers, keys.len(), true, "buffer")?;
        // `bufs` holds the buffers until the copies are done.
        py.detach(|| self.get_into_bytes(namespace, &keys, &foreign(&bufs)))
    }

    /// The tiers ("cpu", "ssd", ...) of the longest present prefix of `keys`: its length is
    /// the number of leading keys stored. Reads only the index.
    fn lookup(&self, py: Python<'_>, namespace: &str, keys: Vec<Vec<u8>>) -> PyResult<Vec<String>> {
        let tiers = py.detach(|| self.lookup_tiers(namespace, &keys))?;
        Ok(tiers.into_iter().map(|t| t.as_str().to_string()).collect())
    }

    /// `lookup` with what each block would cost: `(tiers, load_us, pinned)`, where `load_us`
    /// is the expected microseconds to load each block (its length over the speed the node
    /// measured for its tier) and `pinned` whether the blocks are kept from eviction for
    /// `pin_ms` or until a get reads each (`server.max_lookup_pin` at most).
    #[pyo3(signature = (namespace, keys, pin_ms = 0))]
    fn lookup_pinned(
        &self,
        py: Python<'_>,
        namespace: &str,
        keys: Vec<Vec<u8>>,
        pin_ms: u64,
    ) -> PyResult<(Vec<String>, Vec<u32>, bool)> {
        let looked = py.detach(|| self.lookup_looked(namespace, &keys, std::time::Duration::from_millis(pin_ms)))?;
        Ok((looked.tiers.iter().map(|t| t.as_str().to_string()).collect(), looked.load_us, looked.pinned))
    }

    /// Deletes blocks from every tier; whether each was present.
    fn delete(&self, py: Python<'_>, namespace: &str, keys: Vec<Vec<u8>>) -> PyResult<Vec<bool>> {
        py.detach(|| self.delete_keys(namespace, &keys))
    }

    /// Capacity, usage and counters of the node and each tier, as a dict (the fields of
    /// `kvtier stat --json`).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let stats = py.detach(|| match &self.backend {
            Backend::Remote(c) => runtime().block_on(c.stats()).map_err(client_error),
            Backend::Embedded(m) => Ok(runtime().block_on(m.node().stats())),
        })?;
        let text = serde_json::to_string(&stats).map_err(|e| KvtierError::new_err(e.to_string()))?;
        py.import("json")?.call_method1("loads", (text,))
    }

    /// (serving, version) of the node.
    fn health(&self, py: Python<'_>) -> PyResult<(bool, String)> {
        py.detach(|| match &self.backend {
            Backend::Remote(c) => runtime().block_on(c.health()).map_err(client_error),
            Backend::Embedded(_) => Ok((true, env!("CARGO_PKG_VERSION").to_string())),
        })
    }
}

impl Client {
    fn delete_keys(&self, namespace: &str, keys: &[Vec<u8>]) -> PyResult<Vec<bool>> {
        match &self.backend {
            Backend::Remote(c) => runtime().block_on(c.delete(namespace, keys)).map_err(client_error),
            Backend::Embedded(m) => {
                let keys = block_keys(namespace, keys)?;
                Ok(runtime()
                    .block_on(async { futures::future::join_all(keys.iter().map(|k| m.node().delete(k))).await }))
            }
        }
    }

    /// `op` on the shared-memory session of `namespace`; `None` where there is none (no
    /// `shm_socket`, or the server gives this namespace none): the caller uses gRPC.
    fn shm_call<T>(
        &self,
        namespace: &str,
        op: impl FnOnce(&mut kvtier_client::shm::ShmClient) -> Result<T, ShmError>,
    ) -> PyResult<Option<T>> {
        self.shm.as_ref().and_then(|s| s.call(namespace, op)).transpose().map_err(shm_error)
    }

    fn lookup_tiers(&self, namespace: &str, keys: &[Vec<u8>]) -> PyResult<Vec<TierKind>> {
        Ok(self.lookup_looked(namespace, keys, std::time::Duration::ZERO)?.tiers)
    }

    fn lookup_looked(
        &self,
        namespace: &str,
        keys: &[Vec<u8>],
        pin: std::time::Duration,
    ) -> PyResult<kvtier_blockmgr::Looked> {
        // The shm socket answers in tens of microseconds, without HTTP/2 and a runtime hop.
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        if let Some(looked) = self.shm_call(namespace, |c| c.lookup_pinned(namespace, &refs, pin))? {
            return Ok(looked);
        }
        match &self.backend {
            Backend::Remote(c) => runtime().block_on(c.lookup_pinned(namespace, keys, pin)).map_err(client_error),
            Backend::Embedded(m) => Ok(m.node().lookup_pinned(&block_keys(namespace, keys)?, pin)),
        }
    }

    fn put_bytes(
        &self,
        namespace: &str,
        keys: &[Vec<u8>],
        data: &[Vec<ForeignBytes>],
        durability: Durability,
    ) -> PyResult<Vec<PutResult>> {
        let mut results: Vec<Option<PutResult>> = vec![None; keys.len()];
        let blocks: Vec<(&[u8], &[ForeignBytes])> =
            keys.iter().map(Vec::as_slice).zip(data.iter().map(Vec::as_slice)).collect();
        if let Some(outcomes) = self.shm_call(namespace, |c| c.put_parts(namespace, &blocks, durability))? {
            for (slot, outcome) in results.iter_mut().zip(outcomes) {
                *slot = match outcome {
                    ShmPut::Stored(tier) => Some(PutResult::stored(false, Some(tier))),
                    ShmPut::Existed => Some(PutResult::stored(true, None)),
                    // No shared memory free: these go over gRPC below.
                    ShmPut::Failed { code: Code::ResourceExhausted, .. } => None,
                    ShmPut::Failed { message, .. } => Some(PutResult::failed(message)),
                };
            }
        }
        let rest: Vec<usize> = (0..keys.len()).filter(|&i| results[i].is_none()).collect();
        if rest.is_empty() {
            return Ok(results.into_iter().map(|r| r.expect("filled")).collect());
        }
        match &self.backend {
            Backend::Remote(c) => {
                let items: Vec<PutItem> = rest
                    .iter()
                    .map(|&i| PutItem::new(keys[i].clone(), Bytes::from(ForeignBytes::concat(&data[i]))))
                    .collect();
                let reports = runtime().block_on(c.put(namespace, &items, durability)).map_err(client_error)?;
                for (&i, r) in rest.iter().zip(reports) {
                    results[i] = Some(match r.result {
                        Ok(()) => PutResult::stored(r.existed, r.tier),
                        Err((_, message)) => PutResult::failed(message),
                    });
                }
            }
            Backend::Embedded(m) => {
                let bkeys = block_keys(namespace, keys)?;
                runtime().block_on(async {
                    for &i in &rest {
                        results[i] = Some(embedded_put(m.node(), bkeys[i].clone(), &data[i], durability).await);
                    }
                });
            }
        }
        Ok(results.into_iter().map(|r| r.expect("filled")).collect())
    }

    /// Reads through shared memory where there is a session; blocks the server had no
    /// shared memory to hold (and every block without a session) are read over gRPC.
    fn get_bytes(&self, namespace: &str, keys: &[Vec<u8>]) -> PyResult<Vec<Option<Bytes>>> {
        let mut results: Vec<Option<Bytes>> = vec![None; keys.len()];
        let mut rest: Vec<usize> = (0..keys.len()).collect();
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        if let Some(got) = self.shm_call(namespace, |c| c.get(namespace, &refs))? {
            rest.clear();
            for (i, g) in got.into_iter().enumerate() {
                match g {
                    Ok(data) => results[i] = Some(Bytes::from(data)),
                    Err(ShmGet::NoRoom { .. }) => rest.push(i),
                    Err(_) => {}
                }
            }
        }
        if !rest.is_empty() {
            let wanted: Vec<Vec<u8>> = rest.iter().map(|&i| keys[i].clone()).collect();
            for (i, data) in rest.into_iter().zip(self.get_unshared(namespace, &wanted)?) {
                results[i] = data;
            }
        }
        Ok(results)
    }

    /// Reads over gRPC (or from the embedded manager).
    fn get_unshared(&self, namespace: &str, keys: &[Vec<u8>]) -> PyResult<Vec<Option<Bytes>>> {
        match &self.backend {
            Backend::Remote(c) => {
                let items = runtime().block_on(c.get(namespace, keys)).map_err(client_error)?;
                Ok(items
                    .into_iter()
                    .map(|i| if let GetItem::Hit { data, .. } = i { Some(data) } else { None })
                    .collect())
            }
            Backend::Embedded(m) => {
                let keys = block_keys(namespace, keys)?;
                let outcomes = runtime().block_on(futures::future::join_all(keys.iter().map(|k| m.node().get(k))));
                Ok(outcomes
                    .into_iter()
                    .map(|o| if let GetOutcome::Hit { block, .. } = o { Some(block.data) } else { None })
                    .collect())
            }
        }
    }

    fn get_into_bytes(
        &self,
        namespace: &str,
        keys: &[Vec<u8>],
        outs: &[Vec<ForeignBytes>],
    ) -> PyResult<Vec<Option<usize>>> {
        let mut results: Vec<Option<usize>> = vec![None; keys.len()];
        let mut rest: Vec<usize> = (0..keys.len()).collect();
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let got = self.shm_call(namespace, |c| c.get_into_foreign(namespace, &refs, outs))?;
        if let Some(got) = got {
            rest.clear();
            for (i, g) in got.into_iter().enumerate() {
                match g {
                    ShmGet::Hit { len, .. } => results[i] = Some(len),
                    ShmGet::NoRoom { .. } => rest.push(i),
                    ShmGet::Miss { .. } => {}
                }
            }
        }
        if !rest.is_empty() {
            let wanted: Vec<Vec<u8>> = rest.iter().map(|&i| keys[i].clone()).collect();
            for (i, data) in rest.into_iter().zip(self.get_unshared(namespace, &wanted)?) {
                results[i] = data.filter(|d| kvtier_client::shm::scatter_foreign(d, &outs[i]).is_ok()).map(|d| d.len());
            }
        }
        Ok(results)
    }
}

/// One block (in parts) into an embedded manager. Its bytes are copied out of the foreign
/// parts first (once: the checksum and the slot then read our copy, so bytes changed
/// meanwhile cannot make them disagree), then into a CPU slot.
async fn embedded_put(m: &Manager, key: BlockKey, parts: &[ForeignBytes], durability: Durability) -> PutResult {
    let data = ForeignBytes::concat(parts);
    let crc = kvtier_tiers::crc32c_append(0, &data);
    let started = async {
        let mut writer = m.begin_put(key, data.len() as u64, Some(crc), durability).await?;
        writer.write(&data)?;
        m.finish_put(writer).await
    };
    match started.await {
        Ok(o) => PutResult::stored(o.status == PutStatus::Existed, Some(o.tier)),
        Err(e) => PutResult::failed(e.to_string()),
    }
}

/// The native module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Client>()?;
    m.add_class::<PutResult>()?;
    m.add_class::<objects::ObjectUpload>()?;
    m.add_class::<session::ShmSession>()?;
    m.add_class::<session::Arena>()?;
    m.add_class::<session::Slot>()?;
    m.add_class::<session::Miss>()?;
    lmcache::register(m)?;
    m.add("KvtierError", py.get_type::<KvtierError>())?;
    m.add("UnavailableError", py.get_type::<UnavailableError>())?;
    m.add("InvalidArgumentError", py.get_type::<InvalidArgumentError>())?;
    m.add("PermissionDeniedError", py.get_type::<PermissionDeniedError>())?;
    m.add("ResourceExhaustedError", py.get_type::<ResourceExhaustedError>())?;
    m.add("OutcomeUnknownError", py.get_type::<OutcomeUnknownError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
