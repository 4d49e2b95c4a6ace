//! Named objects from Python: `Client.put_object`, `read_object`, `stat_object`,
//! `list_objects`, `delete_object` (remote or embedded), with metadata as dicts.

use bytes::Bytes;
use futures::StreamExt;
use kvtier_tiers::Namespace;
use pyo3::{prelude::*, types::PyBytes};
use serde::Serialize;
use tonic::Code;

use super::{Backend, Client, KvtierError, client_error, runtime, tier_error};

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
        data: Vec<u8>,
        durability: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let durability = super::durability(durability)?;
        let data = Bytes::from(data);
        let meta: Meta = py.detach(|| match &self.backend {
            Backend::Remote(c) => {
                let len = data.len() as u64;
                let put =
                    c.put_object(namespace, path, futures::stream::once(async { data }), durability, Some(len), None);
                runtime().block_on(put).map(Meta::from).map_err(client_error)
            }
            Backend::Embedded(m) => runtime().block_on(async {
                let mut w = m.write_object(namespace, path, durability).map_err(|e| tier_error(&e))?;
                w.write(&data).await.map_err(|e| tier_error(&e))?;
                w.commit().await.map(Meta::from).map_err(|e| tier_error(&e))
            }),
        })?;
        to_py(py, &meta)
    }

    /// `length` bytes of `path` from `offset` (to the end by default), or None if there is
    /// no such object.
    #[pyo3(signature = (namespace, path, offset = 0, length = None))]
    fn read_object<'py>(
        &self,
        py: Python<'py>,
        namespace: &str,
        path: &str,
        offset: u64,
        length: Option<u64>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let data: Option<Bytes> = py.detach(|| match &self.backend {
            Backend::Remote(c) => match runtime().block_on(c.read_object(namespace, path, offset, length)) {
                Ok(b) => Ok(Some(b)),
                Err(kvtier_blockmgr::ClientError::Status(s)) if s.code() == Code::NotFound => Ok(None),
                Err(e) => Err(client_error(e)),
            },
            Backend::Embedded(m) => {
                let Some(info) = m.stat_object(namespace, path).map_err(|e| tier_error(&e))? else { return Ok(None) };
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
            Backend::Embedded(m) => {
                m.stat_object(namespace, path).map(|o| o.map(Meta::from)).map_err(|e| tier_error(&e))
            }
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
            Backend::Embedded(m) => m
                .list_objects(namespace, prefix)
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
