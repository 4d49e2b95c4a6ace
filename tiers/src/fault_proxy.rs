//! A TCP proxy in front of a real object store (Azurite) that answers the next requests
//! with an HTTP error instead of forwarding them: the failures a real service gives on a
//! bad day (403 after credentials are revoked, 409, 500, 503) that an emulator does not
//! produce on demand. Everything else passes through untouched.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU16, AtomicUsize, Ordering},
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// See the module documentation. Stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    /// Where clients connect instead of the upstream.
    pub addr: SocketAddr,
    status: Arc<AtomicU16>,
    remaining: Arc<AtomicUsize>,
    /// Bumped to close every connection passing through (so the next requests reconnect).
    cut: watch::Sender<u64>,
    _thread: std::thread::JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl FaultProxy {
    /// A proxy to `upstream` (host:port), passing everything through until told to fail.
    pub fn start(upstream: &str) -> FaultProxy {
        let upstream = upstream.to_string();
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a proxy port");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("an address");
        let (status, remaining) = (Arc::new(AtomicU16::new(0)), Arc::new(AtomicUsize::new(0)));
        let (cut, cut_rx) = watch::channel(0u64);
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let (s, r) = (status.clone(), remaining.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("a tokio listener");
                tokio::select! {
                    _ = accept_loop(listener, upstream, s, r, cut_rx) => {}
                    _ = stop_rx => {}
                }
            });
        });
        FaultProxy { addr, status, remaining, cut, _thread: thread, stop: Some(stop) }
    }

    /// Answers the next `count` requests with HTTP `status`; connections open now are cut,
    /// so the client's next requests come on new ones.
    pub fn fail(&self, status: u16, count: usize) {
        self.status.store(status, Ordering::SeqCst);
        self.remaining.store(count, Ordering::SeqCst);
        self.cut.send_modify(|g| *g += 1);
    }

    /// Requests still to be failed.
    pub fn pending_failures(&self) -> usize {
        self.remaining.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: String,
    status: Arc<AtomicU16>,
    remaining: Arc<AtomicUsize>,
    cut: watch::Receiver<u64>,
) {
    while let Ok((conn, _)) = listener.accept().await {
        let (upstream, status, remaining, mut cut) = (upstream.clone(), status.clone(), remaining.clone(), cut.clone());
        tokio::spawn(async move {
            let fail = remaining.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
            if fail {
                let _ = answer(conn, status.load(Ordering::SeqCst)).await;
                return;
            }
            let Ok(mut up) = TcpStream::connect(&upstream).await else { return };
            let mut conn = conn;
            cut.mark_unchanged();
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut conn, &mut up) => {}
                _ = cut.changed() => {}
            }
        });
    }
}

/// Reads one request (head and body) and answers it with `status`, then closes.
async fn answer(mut conn: TcpStream, status: u16) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let body_len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0);
    let mut have = buf.len() - head_end;
    while have < body_len {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        have += n;
    }
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>InjectedFault</Code><Message>injected {status}</Message></Error>"
    );
    let response = format!(
        "HTTP/1.1 {status} Injected\r\nContent-Type: application/xml\r\nx-ms-error-code: InjectedFault\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(response.as_bytes()).await?;
    conn.shutdown().await
}
