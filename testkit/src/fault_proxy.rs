//! A TCP proxy in front of a real object store (Azurite) that answers the next requests
//! with an HTTP error instead of forwarding them: the failures a real service gives on a
//! bad day (403 after credentials are revoked, 409, 500, 503) that an emulator does not
//! produce on demand. Everything else passes through untouched. A standing rule fails every
//! request of one method whose path holds a string (one object's uploads, say), until
//! cleared: the proxy then reads each request's head and forwards it with
//! `Connection: close`, one request per connection.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU16, AtomicUsize, Ordering},
    },
};

use parking_lot::Mutex;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// Requests to fail until cleared: `method` (any when `None`) on a path holding `path`.
#[derive(Debug, Clone)]
struct Rule {
    status: u16,
    method: Option<String>,
    path: String,
    /// Matching requests still to fail (`None`: all of them).
    left: Option<Arc<AtomicUsize>>,
}

/// See the module documentation. Stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    /// Where clients connect instead of the upstream.
    pub addr: SocketAddr,
    status: Arc<AtomicU16>,
    remaining: Arc<AtomicUsize>,
    rule: Arc<Mutex<Option<Rule>>>,
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
        let rule = Arc::new(Mutex::new(None));
        let (cut, cut_rx) = watch::channel(0u64);
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let faults = Faults { status: status.clone(), remaining: remaining.clone(), rule: rule.clone() };
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("a tokio listener");
                tokio::select! {
                    _ = accept_loop(listener, upstream, faults, cut_rx) => {}
                    _ = stop_rx => {}
                }
            });
        });
        FaultProxy { addr, status, remaining, rule, cut, _thread: thread, stop: Some(stop) }
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

    /// Answers every request of `method` (any, when `None`) whose path holds `path` with
    /// HTTP `status`, until [`FaultProxy::clear`]; connections open now are cut.
    pub fn fail_matching(&self, status: u16, method: Option<&str>, path: &str) {
        self.set_rule(Rule { status, method: method.map(str::to_string), path: path.to_string(), left: None });
    }

    /// As [`FaultProxy::fail_matching`], for the next `times` matching requests only.
    pub fn fail_matching_times(&self, status: u16, method: Option<&str>, path: &str, times: usize) {
        let left = Some(Arc::new(AtomicUsize::new(times)));
        self.set_rule(Rule { status, method: method.map(str::to_string), path: path.to_string(), left });
    }

    fn set_rule(&self, rule: Rule) {
        *self.rule.lock() = Some(rule);
        self.cut.send_modify(|g| *g += 1);
    }

    /// Ends the rule of [`FaultProxy::fail_matching`].
    pub fn clear(&self) {
        *self.rule.lock() = None;
    }
}

/// What the proxy is told to fail.
#[derive(Clone)]
struct Faults {
    status: Arc<AtomicU16>,
    remaining: Arc<AtomicUsize>,
    rule: Arc<Mutex<Option<Rule>>>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn accept_loop(listener: TcpListener, upstream: String, faults: Faults, cut: watch::Receiver<u64>) {
    while let Ok((conn, _)) = listener.accept().await {
        let (upstream, faults, mut cut) = (upstream.clone(), faults.clone(), cut.clone());
        tokio::spawn(async move {
            let fail = faults.remaining.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
            if fail {
                let _ = answer(conn, Vec::new(), faults.status.load(Ordering::SeqCst)).await;
                return;
            }
            let mut conn = conn;
            let rule = faults.rule.lock().clone();
            // With a rule, one request per connection, its head read to match it.
            let head = match &rule {
                None => Vec::new(),
                Some(rule) => {
                    let Ok(head) = read_head(&mut conn).await else { return };
                    let line = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_string();
                    let mut words = line.split(' ');
                    let (method, path) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
                    let counted = |left: &AtomicUsize| {
                        left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
                    };
                    if rule.method.as_deref().is_none_or(|m| m == method)
                        && path.contains(&rule.path)
                        && rule.left.as_deref().is_none_or(counted)
                    {
                        let _ = answer(conn, head, rule.status).await;
                        return;
                    }
                    close_after(&head)
                }
            };
            let Ok(mut up) = TcpStream::connect(&upstream).await else { return };
            if up.write_all(&head).await.is_err() {
                return;
            }
            cut.mark_unchanged();
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut conn, &mut up) => {}
                _ = cut.changed() => {}
            }
        });
    }
}

/// Reads a request's head (up to its blank line; what follows of the body stays in it).
async fn read_head(conn: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(buf);
        }
    }
}

/// `request` (a head and what came of its body) asking the server to close after answering.
fn close_after(request: &[u8]) -> Vec<u8> {
    let end = request.windows(4).position(|w| w == b"\r\n\r\n").map_or(request.len(), |at| at + 2);
    let mut out = Vec::with_capacity(request.len() + 19);
    let head = String::from_utf8_lossy(&request[..end]);
    for line in head.split("\r\n").filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:")) {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n");
    out.extend_from_slice(&request[end..]); // the blank line, then what came of the body
    out
}

/// Reads one request (head and body; `buf` holds what of it was read already) and answers
/// it with `status`, then closes.
async fn answer(mut conn: TcpStream, mut buf: Vec<u8>, status: u16) -> std::io::Result<()> {
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
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
