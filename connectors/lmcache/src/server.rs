//! The `lm://` listener: LMCache's `lmcache.v1.server` protocol over kvtier's block store.
//!
//! Each connection is served in order, one request at a time (LMCache's client sends PUTs
//! without waiting and expects the answers to GETs in order). A PUT's chunk is stored as a
//! kvtier block: the value header of [`super::keys`] (format, dtype, shape) then the payload,
//! in the namespace its key maps to, so the Python connectors read what `lm://` wrote.
//!
//! A request kvtier can answer without losing its place in the stream is refused alone: a
//! key that is not LMCache's (a GET or EXIST answered with a failure, a PUT's payload read
//! and dropped) or a PUT larger than a block (read and dropped): LMCache's client never
//! reconnects, so closing would end that worker's remote cache. What leaves the stream out of
//! step (an unknown command, a negative length, a header or payload cut short) or a client too
//! slow (no bytes for `server.stream_idle_timeout`, on a read or a write) closes that
//! connection. Each is logged and counted in `kvtier_lmcache_protocol_errors_total{reason}`;
//! nothing is stored from a refused or cut-short PUT. At most [`MAX_CONNECTIONS`] clients are
//! served at once; more wait to be accepted.
//!
//! The protocol has no authentication or encryption (neither has LMCache's server): listen on
//! loopback or a private network (the config refuses other addresses when `server.tls`
//! requires client certificates).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use kvtier_tiers::{BlockKey, PutStatus};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
};

use super::{
    keys::{ValueHeader, engine_key},
    wire::{self, Command, REQUEST_LEN, Request},
};
use kvtier_blockmgr::{Durability, GetOutcome, Manager};

/// Clients served at once.
pub(crate) const MAX_CONNECTIONS: usize = 1024;

/// How the listener stores and reads chunks.
#[derive(Debug, Clone)]
pub struct LmSettings {
    /// Prepended to the namespace each chunk key maps to (`[lmcache] namespace_prefix`).
    pub namespace_prefix: String,
    /// How chunks are stored (`[lmcache] durability`).
    pub durability: Durability,
    /// A payload read that waits longer ends the connection (slow or dead client).
    pub idle_timeout: Duration,
}

/// Why a connection was closed.
#[derive(Debug, thiserror::Error)]
enum Closed {
    #[error("malformed header: {0}")]
    Header(#[from] wire::WireError),

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
            Closed::Truncated(_) => "truncated",
            Closed::Stalled(_) => "stalled",
            Closed::Io(_) => "io",
        }
    }
}

/// Accepts `lm://` clients on `listener` until `stopped` turns true, then returns once
/// every connection has ended (each ends at the signal; a put under way finishes in the
/// manager).
pub async fn serve(
    listener: TcpListener,
    manager: Manager,
    settings: LmSettings,
    stopped: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut stop = stopped.clone();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            // (Awaited in a block: the guard `wait_for` yields is not held while draining.)
            () = async { let _ = stop.wait_for(|&s| s).await; } => {
                connections.close();
                connections.wait().await;
                return Ok(());
            }
            accepted = async {
                let slot = slots.clone().acquire_owned().await.expect("never closed");
                listener.accept().await.map(|a| (a, slot))
            } => accepted,
        };
        match accepted {
            Ok(((stream, peer), slot)) => {
                let _ = stream.set_nodelay(true);
                let (manager, settings, mut stop) = (manager.clone(), settings.clone(), stopped.clone());
                connections.spawn(async move {
                    let _slot = slot;
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
        let key =
            || engine_key(&s.namespace_prefix, &req.key).inspect_err(|e| refused(manager, "key", &e.to_string())).ok();
        match req.command {
            Command::Put => {
                metrics.requests.with_label_values(&["lm_put"]).inc();
                put(read, manager, s, &req, key()).await?;
            }
            Command::Get => {
                metrics.requests.with_label_values(&["lm_get"]).inc();
                match key() {
                    Some(key) => get(write, manager, &key, s.idle_timeout).await?,
                    None => send(write, &wire::failure(), s.idle_timeout).await?,
                }
            }
            Command::Exist => {
                metrics.requests.with_label_values(&["lm_exist"]).inc();
                let found = key().is_some_and(|k| !manager.lookup(std::slice::from_ref(&k)).is_empty());
                let reply = if found { wire::reply(true, 0, 1, 2, [0; 4]) } else { wire::failure() };
                send(write, &reply, s.idle_timeout).await?;
            }
            Command::Health => send(write, &wire::reply(true, 0, 1, 2, [0; 4]), s.idle_timeout).await?,
            // The reference server has no LIST either; its client never sends one.
            Command::List => send(write, &wire::failure(), s.idle_timeout).await?,
        }
    }
}

/// A request refused alone (the connection goes on): logged and counted.
fn refused(m: &Manager, reason: &str, why: &str) {
    m.metrics().lmcache_protocol_errors.with_label_values(&[reason]).inc();
    tracing::warn!(reason, why, "refused an lm:// request");
}

/// Writes `bytes`, giving up on a client that takes none for `idle`.
async fn send<W: AsyncWriteExt + Unpin>(write: &mut W, bytes: &[u8], idle: Duration) -> Result<(), Closed> {
    for piece in bytes.chunks(1 << 20) {
        match tokio::time::timeout(idle, write.write_all(piece)).await {
            Err(_) => return Err(Closed::Stalled(idle)),
            Ok(r) => r?,
        }
    }
    Ok(())
}

/// Receives a PUT's payload straight into the block being stored.
/// A PUT whose key is refused (`None`), too large or finds no room has its payload read and
/// dropped, so the stream stays in step.
async fn put<R: AsyncReadExt + Unpin>(
    read: &mut R,
    m: &Manager,
    s: &LmSettings,
    req: &Request,
    key: Option<BlockKey>,
) -> Result<(), Closed> {
    let header = ValueHeader { fmt: req.fmt, length: req.length, groups: vec![(req.dtype, req.shape)] }.encode();
    let total = req.length + header.len() as u64;
    let mut writer = match key {
        None => None,
        Some(_) if total > m.max_block_size() => {
            let why = format!(
                "{} bytes; the largest chunk accepted is {}",
                req.length,
                m.max_block_size() - header.len() as u64
            );
            refused(m, "oversize", &why);
            None
        }
        // Budget for the block is waited for no longer than the client may idle.
        Some(key) => {
            match tokio::time::timeout(s.idle_timeout, m.begin_put(key.clone(), total, None, s.durability)).await {
                Ok(Ok(w)) => Some(w),
                Ok(Err(e)) => {
                    tracing::warn!(%key, error = %e, "an lm:// PUT was not stored");
                    None
                }
                Err(_) => {
                    tracing::warn!(%key, "an lm:// PUT was not stored: no room within the idle timeout");
                    None
                }
            }
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
        let key = w.key().clone();
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
async fn get<W: AsyncWriteExt + Unpin>(
    write: &mut W,
    m: &Manager,
    key: &BlockKey,
    idle: Duration,
) -> Result<(), Closed> {
    let GetOutcome::Hit { block, .. } = m.get(key).await else {
        return send(write, &wire::failure(), idle).await;
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
            send(write, &reply, idle).await?;
            send(write, &data[at..], idle).await
        }
        Err(why) => {
            tracing::warn!(%key, why, "answering an lm:// GET with a miss");
            send(write, &wire::failure(), idle).await
        }
    }
}
