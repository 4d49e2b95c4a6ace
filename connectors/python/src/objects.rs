//! Named objects from Python: `Client.put_object`, `open_object` (a streamed upload),
//! `read_object`, `stat_object`, `list_objects`, `delete_object` (remote or embedded), with
//! metadata as dicts.

use std::sync::Mutex;

use bytes::Bytes;
use futures::StreamExt;
use kvtier_blockmgr::{ClientError, Durability, ObjectRange, objects::ObjectWriter};
use kvtier_client::shm::ForeignBytes;
use kvtier_tiers::Namespace;
use pyo3::{prelude::*, types::PyBytes};
use serde::Serialize;
use tokio::{sync::mpsc, task::JoinHandle};
use tonic::Code;

use super::{Backend, Client, KvtierError, client_error, raw, runtime, tier_error, write_error};

/// An object's metadata, as Python sees it (a dict).
#[derive(Serialize)]
struct Meta {
    path: String,
    size: u64,
    generation: u64,
    chunk_size: u64,
    crc32c: u32,
    created_unix: u64,
}

impl From<kvtier_blockmgr::objects::ObjectInfo> for Meta {
    fn from(o: kvtier_blockmgr::objects::ObjectInfo) -> Self {
        kvtier_blockmgr::ObjectInfo::from(&o).into()
    }
}

impl From<kvtier_blockmgr::ObjectInfo> for Meta {
    fn from(o: kvtier_blockmgr::ObjectInfo) -> Self {
        let (path, size, generation, chunk_size, crc32c, created_unix) =
            (o.path, o.size, o.generation, o.chunk_size, o.crc32c, o.created_unix);
        Meta { path, size, generation, chunk_size, crc32c, created_unix }
    }
}

fn to_py<'py, T: Serialize>(py: Python<'py>, value: &T) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(value).map_err(|e| KvtierError::new_err(e.to_string()))?;
    py.import("json")?.call_method1("loads", (text,))
}

#[pymethods]
impl Client {
    /// Stores `data` (bytes-like) as a new version of `path`; returns its metadata. The
    /// version commits only once every byte is stored: readers never see part of it.
    #[pyo3(signature = (namespace, path, data, durability = "cache"))]
    fn put_object<'py>(
        &self,
        py: Python<'py>,
        namespace: &str,
        path: &str,
        data: &Bound<'py, PyAny>,
        durability: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let upload = self.open_object(py, namespace, path, durability, None)?;
        upload.write(py, data)?;
        upload.commit(py)
    }

    /// Starts a new version of `path`, written piece by piece with `write` and made visible
    /// by `commit` (or dropped by `abort`). As a context manager it commits on a clean exit
    /// and aborts on an exception. With `size`, the server refuses a different length.
    #[pyo3(signature = (namespace, path, durability = "cache", size = None))]
    fn open_object(
        &self,
        py: Python<'_>,
        namespace: &str,
        path: &str,
        durability: &str,
        size: Option<u64>,
    ) -> PyResult<ObjectUpload> {
        let durability = super::durability(durability)?;
        let upload = py.detach(|| match &self.backend {
            Backend::Remote(c) => Ok(Upload::Remote(RemoteUpload::start(c, namespace, path, durability, size))),
            Backend::Embedded(m) => m
                .write_object(namespace, path, durability)
                .map(|w| Upload::Embedded(Box::new(w)))
                .map_err(|e| tier_error(&e)),
        })?;
        Ok(ObjectUpload { path: path.to_string(), size, upload: Mutex::new(Some(upload)) })
    }

    /// `length` bytes of `path` from `offset` (to the end by default), or None if there is
    /// no such object. With `generation`, only that version: if another is current, the
    /// read fails (a reader of several ranges never mixes two versions).
    #[pyo3(signature = (namespace, path, offset = 0, length = None, generation = None))]
    fn read_object<'py>(
        &self,
        py: Python<'py>,
        namespace: &str,
        path: &str,
        offset: u64,
        length: Option<u64>,
        generation: Option<u64>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let range = ObjectRange { offset, length, generation };
        let data: Option<Bytes> = py.detach(|| match &self.backend {
            Backend::Remote(c) => match runtime().block_on(c.read_object(namespace, path, range)) {
                Ok(b) => Ok(Some(b)),
                Err(ClientError::Status(s)) if s.code() == Code::NotFound => Ok(None),
                Err(e) => Err(client_error(e)),
            },
            Backend::Embedded(m) => {
                let stat = runtime().block_on(m.stat_object(namespace, path));
                let Some(info) = stat.map_err(|e| tier_error(&e))? else { return Ok(None) };
                if let Some(wanted) = generation.filter(|&g| g != info.generation) {
                    return Err(super::error(
                        Code::FailedPrecondition,
                        format!(
                            "{namespace}/{path}: generation {wanted} was replaced by generation {}",
                            info.generation
                        ),
                    ));
                }
                let ns = Namespace::new(namespace).map_err(|e| tier_error(&e))?;
                runtime().block_on(async {
                    let mut pieces = std::pin::pin!(m.read_object(&ns, &info, offset, length.unwrap_or(u64::MAX)));
                    let mut out = Vec::new();
                    while let Some(piece) = pieces.next().await {
                        out.extend_from_slice(&piece.map_err(|e| tier_error(&e))?);
                    }
                    Ok(Some(Bytes::from(out)))
                })
            }
        })?;
        Ok(data.map(|b| PyBytes::new(py, &b)))
    }

    /// Metadata of the current version of `path`, or None.
    fn stat_object<'py>(&self, py: Python<'py>, namespace: &str, path: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
        let meta: Option<Meta> = py.detach(|| match &self.backend {
            Backend::Remote(c) => {
                runtime().block_on(c.stat_object(namespace, path)).map(|o| o.map(Meta::from)).map_err(client_error)
            }
            Backend::Embedded(m) => runtime()
                .block_on(m.stat_object(namespace, path))
                .map(|o| o.map(Meta::from))
                .map_err(|e| tier_error(&e)),
        })?;
        meta.map(|m| to_py(py, &m)).transpose()
    }

    /// Metadata of the objects of `namespace` whose path starts with `prefix`, by path.
    #[pyo3(signature = (namespace, prefix = ""))]
    fn list_objects<'py>(&self, py: Python<'py>, namespace: &str, prefix: &str) -> PyResult<Bound<'py, PyAny>> {
        let found: Vec<Meta> = py.detach(|| match &self.backend {
            Backend::Remote(c) => runtime()
                .block_on(c.list_objects(namespace, prefix))
                .map(|v| v.into_iter().map(Meta::from).collect())
                .map_err(client_error),
            Backend::Embedded(m) => runtime()
                .block_on(m.list_objects(namespace, prefix))
                .map(|v| v.into_iter().map(Meta::from).collect())
                .map_err(|e| tier_error(&e)),
        })?;
        to_py(py, &found)
    }

    /// Removes `path`; whether it existed.
    fn delete_object(&self, py: Python<'_>, namespace: &str, path: &str) -> PyResult<bool> {
        py.detach(|| match &self.backend {
            Backend::Remote(c) => runtime().block_on(c.delete_object(namespace, path)).map_err(client_error),
            Backend::Embedded(m) => runtime().block_on(m.delete_object(namespace, path)).map_err(|e| tier_error(&e)),
        })
    }
}

/// A streamed upload of one object version (`Client.open_object`).
#[pyclass(module = "kvtier._native")]
pub(crate) struct ObjectUpload {
    path: String,
    size: Option<u64>,
    /// `None` once committed or aborted. Dropped open, either kind cleans up: a remote
    /// one cancels its call, an embedded `ObjectWriter` deletes its chunks.
    upload: Mutex<Option<Upload>>,
}

enum Upload {
    Remote(RemoteUpload),
    Embedded(Box<ObjectWriter>),
}

/// A `PutObject` stream fed from Python: pieces go through a small channel to the call
/// running on the client's runtime. The pieces end only on `commit`'s end marker (`None`),
/// after which the client sends the protocol's `commit` message; a sender dropped without
/// it (abort, a dropped upload) leaves the stream pending until the call is aborted, and
/// the server, seeing no `commit`, deletes what it stored.
struct RemoteUpload {
    pieces: Option<mpsc::Sender<Option<Bytes>>>,
    call: JoinHandle<Result<kvtier_blockmgr::ObjectInfo, ClientError>>,
}

impl RemoteUpload {
    fn start(
        client: &kvtier_blockmgr::Client,
        namespace: &str,
        path: &str,
        durability: Durability,
        size: Option<u64>,
    ) -> Self {
        let (tx, rx) = mpsc::channel::<Option<Bytes>>(4);
        let pieces = futures::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Some(Some(piece)) => Some((piece, rx)),
                Some(None) => None, // commit
                None => std::future::pending().await,
            }
        });
        let (client, namespace, path) = (client.clone(), namespace.to_string(), path.to_string());
        let call =
            runtime().spawn(async move { client.put_object(&namespace, &path, pieces, durability, size, None).await });
        RemoteUpload { pieces: Some(tx), call }
    }

    /// Ends the stream (the server commits) and waits for the call's answer.
    fn commit(mut self) -> PyResult<kvtier_blockmgr::ObjectInfo> {
        if let Some(tx) = self.pieces.take() {
            // Fails only when the call already ended (refused): its answer says why.
            let _ = tx.blocking_send(None);
        }
        self.outcome()
    }

    /// The call's answer once it ended (committed, refused or aborted).
    fn outcome(mut self) -> PyResult<kvtier_blockmgr::ObjectInfo> {
        self.pieces = None;
        let call = &mut self.call;
        match runtime().block_on(call) {
            Ok(result) => result.map_err(write_error),
            Err(e) => Err(KvtierError::new_err(format!("the object upload task failed: {e}"))),
        }
    }
}

impl Drop for RemoteUpload {
    fn drop(&mut self) {
        // Not committed: the stream is left pending (no end marker), and the call is
        // cancelled, which the server takes as an abandoned put.
        self.call.abort();
    }
}

#[pymethods]
impl ObjectUpload {
    /// Appends bytes (any bytes-like object).
    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let data = raw(data, false, "data", 0)?;
        let mut guard = self.upload.lock().expect("upload lock");
        let Some(upload) = guard.as_mut() else {
            return Err(KvtierError::new_err(format!("{}: the upload is already committed or aborted", self.path)));
        };
        // `data` holds the buffer while its bytes are copied out (by pointer: with the GIL
        // released, another Python thread may write it).
        let bytes = data.foreign();
        let sent = py.detach(|| {
            let piece = Bytes::from(ForeignBytes::concat(&[bytes]));
            match upload {
                Upload::Remote(r) => {
                    let tx = r.pieces.as_ref().expect("the sender lives until the upload ends");
                    Ok(tx.blocking_send(Some(piece)).is_ok())
                }
                Upload::Embedded(w) => runtime().block_on(w.write(&piece)).map(|()| true).map_err(|e| tier_error(&e)),
            }
        });
        match sent {
            Ok(true) => Ok(()),
            // The call ended early: the server refused the upload. Its answer says why.
            Ok(false) => match guard.take() {
                Some(Upload::Remote(r)) => match py.detach(|| r.outcome()) {
                    Err(e) => Err(e),
                    Ok(_) => Err(KvtierError::new_err(format!("{}: the upload ended before its last byte", self.path))),
                },
                _ => unreachable!("only a remote upload has a channel"),
            },
            Err(e) => {
                if let Some(Upload::Embedded(w)) = guard.take() {
                    py.detach(|| runtime().block_on(w.abort()));
                }
                Err(e)
            }
        }
    }

    /// Stores what is left and makes this version the object's current one; its metadata.
    fn commit<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let Some(upload) = self.upload.lock().expect("upload lock").take() else {
            return Err(KvtierError::new_err(format!("{}: the upload is already committed or aborted", self.path)));
        };
        let meta: Meta = py.detach(|| match upload {
            Upload::Remote(r) => r.commit().map(Meta::from),
            Upload::Embedded(w) => {
                if let Some(size) = self.size.filter(|&s| s != w.received().0) {
                    let got = w.received().0;
                    runtime().block_on(w.abort());
                    let message = format!("{}: {got} bytes arrived of the {size} announced; not committed", self.path);
                    return Err(super::error(Code::DataLoss, message));
                }
                runtime().block_on(w.commit()).map(Meta::from).map_err(|e| tier_error(&e))
            }
        })?;
        to_py(py, &meta)
    }

    /// Gives up: nothing written is kept and the object stays as it was. Idempotent.
    fn abort(&self, py: Python<'_>) {
        let upload = self.upload.lock().expect("upload lock").take();
        py.detach(|| match upload {
            Some(Upload::Remote(r)) => {
                r.call.abort();
                let _ = r.outcome();
            }
            Some(Upload::Embedded(w)) => runtime().block_on(w.abort()),
            None => {}
        });
    }

    /// The object's path.
    #[getter]
    fn path(&self) -> &str {
        &self.path
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (exc_type, _exc = None, _tb = None))]
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<&Bound<'_, PyAny>>,
        _exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        match exc_type {
            Some(t) if !t.is_none() => self.abort(py),
            _ => {
                if self.upload.lock().expect("upload lock").is_some() {
                    self.commit(py)?;
                }
            }
        }
        Ok(false)
    }

    fn __repr__(&self) -> String {
        let state = if self.upload.lock().expect("upload lock").is_some() { "open" } else { "closed" };
        format!("ObjectUpload({:?}, {state})", self.path)
    }
}
