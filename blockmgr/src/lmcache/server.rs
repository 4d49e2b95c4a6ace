//! The `lm://` listener: LMCache's `lmcache.v1.server` protocol over kvtier's block store.
//!
//! Each connection is served in order, one request at a time (LMCache's client sends PUTs
//! without waiting and expects the answers to GETs in order). A PUT's chunk is stored as a
//! kvtier block: the value header of [`super::keys`] (format, dtype, shape) then the payload,
//! in the namespace its key maps to, so the Python connectors read what `lm://` wrote.
//!
//! Anything malformed (an unknown command, a negative or oversized length, a key that is not
//! LMCache's, a payload cut short or stalled) closes that connection with a log line and a
//! count in `kvtier_lmcache_protocol_errors_total{reason}`; a PUT cut short stores nothing.

use std::{net::SocketAddr, time::Duration};

use kvtier_tiers::{BlockKey, PutStatus};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::watch,
};

use super::{
    keys::{KeyError, ValueHeader, engine_key},
    wire::{self, Command, REQUEST_LEN, Request},
};
use crate::{Durability, GetOutcome, Manager};

/// How the listener stores and reads chunks.
#[derive(Debug, Clone)]
pub(crate) struct LmSettings {
    pub(crate) namespace_prefix: String,
    pub(crate) durability: Durability,
    /// A payload read that waits longer ends the connection (slow or dead client).
    pub(crate) idle_timeout: Duration,
}

/// Why a connection was closed.
#[derive(Debug, thiserror::Error)]
enum Closed {
    #[error("malformed header: {0}")]
    Header(#[from] wire::WireError),
    #[error("{0}")]
    Key(#[from] KeyError),
    #[error("a PUT of {length} bytes exceeds the largest chunk accepted ({limit} bytes)")]
    Oversize { length: u64, limit: u64 },
    #[error("the connection ended {0}")]
    Truncated(&'static str),
    #[error("no payload bytes for {0:?}")]
    Stalled(Duration),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl Closed {
    fn reason(&self) -> &'static str {
        match self {
            Closed::Header(_) => "header",
            Closed::Key(_) => "key",
            Closed::Oversize { .. } => "oversize",
            Closed::Truncated(_) => "truncated",
            Closed::Stalled(_) => "stalled",
            Closed::Io(_) => "io",
        }
    }
}

/// Accepts `lm://` clients on `listener` until `stopped` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    manager: Manager,
    settings: LmSettings,
    stopped: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut stop = stopped.clone();
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|&s| s) => return Ok(()),
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let (manager, settings, mut stop) = (manager.clone(), settings.clone(), stopped.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = stop.wait_for(|&s| s) => {}
                        () = connection(stream, peer, manager, settings) => {}
                    }
                });
            }
            // Out of descriptors and the like: the listener keeps going.
            Err(e) => {
                tracing::warn!(error = %e, "lm:// accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(stream: TcpStream, peer: SocketAddr, manager: Manager, settings: LmSettings) {
    tracing::debug!(%peer, "lm:// client connected");
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::with_capacity(256 << 10, read);
    match requests(&mut read, &mut write, &manager, &settings).await {
        Ok(()) => tracing::debug!(%peer, "lm:// client disconnected"),
        Err(e) => {
            manager.metrics().lmcache_protocol_errors.with_label_values(&[e.reason()]).inc();
            tracing::warn!(%peer, error = %e, "closing an lm:// connection");
        }
    }
}

/// Serves requests until the client closes between two of them (`Ok`) or errs.
async fn requests<R, W>(read: &mut R, write: &mut W, manager: &Manager, s: &LmSettings) -> Result<(), Closed>
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let mut header = [0u8; REQUEST_LEN];
    loop {
        // The first byte tells a clean close (EOF here) from one mid-header.
        if read.read(&mut header[..1]).await? == 0 {
            return Ok(());
        }
        read.read_exact(&mut header[1..]).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Closed::Truncated("inside a request header"),
            _ => Closed::Io(e),
        })?;
        let req = Request::decode(&header)?;
        let metrics = manager.metrics();
        match req.command {
            Command::Put => {
                metrics.requests.with_label_values(&["lm_put"]).inc();
                put(read, manager, s, &req).await?;
            }
            Command::Get => {
                metrics.requests.with_label_values(&["lm_get"]).inc();
                let key = engine_key(&s.namespace_prefix, &req.key)?;
                get(write, manager, &key).await?;
            }
            Command::Exist => {
                metrics.requests.with_label_values(&["lm_exist"]).inc();
                let key = engine_key(&s.namespace_prefix, &req.key)?;
                let found = !manager.lookup(std::slice::from_ref(&key)).is_empty();
                let reply = if found { wire::reply(true, 0, 1, 2, [0; 4]) } else { wire::failure() };
                write.write_all(&reply).await?;
            }
            Command::Health => write.write_all(&wire::reply(true, 0, 1, 2, [0; 4])).await?,
            // The reference server has no LIST either; its client never sends one.
            Command::List => write.write_all(&wire::failure()).await?,
        }
    }
}

/// Receives a PUT's payload straight into the block being stored.
async fn put<R: AsyncReadExt + Unpin>(read: &mut R, m: &Manager, s: &LmSettings, req: &Request) -> Result<(), Closed> {
    let key = engine_key(&s.namespace_prefix, &req.key)?;
    let header = ValueHeader { fmt: req.fmt, length: req.length, groups: vec![(req.dtype, req.shape)] }.encode();
    let total = req.length + header.len() as u64;
    if total > m.max_block_size() {
        return Err(Closed::Oversize { length: req.length, limit: m.max_block_size() - header.len() as u64 });
    }
    let mut writer = match m.begin_put(key.clone(), total, None, s.durability).await {
        Ok(w) => Some(w),
        Err(e) => {
            // No room and the like: the bytes are read (the stream stays in step) and dropped.
            tracing::warn!(%key, error = %e, "an lm:// PUT was not stored");
            None
        }
    };
    if let Some(w) = writer.as_mut() {
        w.write(&header).expect("the header fits the block it sized");
    }
    let mut buf = vec![0u8; (req.length as usize).min(1 << 20)];
    let mut left = req.length as usize;
    while left > 0 {
        let want = left.min(buf.len());
        let n = match tokio::time::timeout(s.idle_timeout, read.read(&mut buf[..want])).await {
            Err(_) => return Err(Closed::Stalled(s.idle_timeout)),
            Ok(r) => r?,
        };
        if n == 0 {
            return Err(Closed::Truncated("inside a PUT payload; nothing was stored"));
        }
        if let Some(w) = writer.as_mut() {
            w.write(&buf[..n]).expect("no more than the declared length");
        }
        left -= n;
    }
    if let Some(w) = writer {
        match m.finish_put(w).await {
            Ok(o) if o.status == PutStatus::Existed => tracing::trace!(%key, "lm:// PUT of a chunk already stored"),
            Ok(_) => {}
            Err(e) => tracing::warn!(%key, error = %e, "an lm:// PUT was not stored"),
        }
    }
    Ok(())
}

/// Answers a GET: the chunk's header and bytes, or a failure code for a miss and for a
/// block that is not an `lm://`-shaped chunk (no header, or several groups).
async fn get<W: AsyncWriteExt + Unpin>(write: &mut W, m: &Manager, key: &BlockKey) -> Result<(), Closed> {
    let GetOutcome::Hit { block, .. } = m.get(key).await else {
        write.write_all(&wire::failure()).await?;
        return Ok(());
    };
    let data = block.data;
    let parsed = ValueHeader::decode(&data).and_then(|h| {
        let at = ValueHeader::len_for(h.groups.len());
        match (h.groups.as_slice(), u32::try_from(h.length)) {
            ([(dtype, shape)], Ok(len)) if at as u64 + h.length == data.len() as u64 && len <= i32::MAX as u32 => {
                Ok((wire::reply(true, len, h.fmt, *dtype, *shape), at))
            }
            ([_], _) => Err(format!("the header says {} payload bytes; the block holds {}", h.length, data.len() - at)),
            (groups, _) => Err(format!("{} groups; lm:// carries one shape", groups.len())),
        }
    });
    match parsed {
        Ok((reply, at)) => {
            write.write_all(&reply).await?;
            write.write_all(&data[at..]).await?;
        }
        Err(why) => {
            tracing::warn!(%key, why, "answering an lm:// GET with a miss");
            write.write_all(&wire::failure()).await?;
        }
    }
    Ok(())
}
