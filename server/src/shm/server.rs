//! Server side of the shm data plane: one task per connected client, requests answered in
//! order, everything the session holds released when the connection closes.

use std::{collections::HashMap, os::fd::AsRawFd, time::Instant};

use kvtier_blockmgr::NodeError;
use kvtier_proto::v1::{self, shm_request::Msg as Req, shm_response::Msg as Resp};
use kvtier_tiers::{BlockKey, Error as TierError, Key, Namespace};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, Interest},
    net::{UnixListener, UnixStream},
    sync::watch,
};
use tonic::Code;

mod private;

use kvtier_client::shm::frame::{decode, frame, frame_len, send_with_fd};

use super::{op_name, window::Window};
use kvtier_blockmgr::{
    ArenaPin, GetOutcome, Manager, PinOutcome, PutWriter,
    config::ShmConfig,
    wire::{block_status, durability_from_wire, miss_to_wire, tier_to_wire},
};

/// Accepts shm clients on `listener` until `stopped` turns true, then returns once every
/// session has ended.
pub(crate) async fn serve(
    listener: UnixListener,
    manager: Manager,
    config: ShmConfig,
    max_batch_keys: usize,
    stopped: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut stop = stopped.clone();
    let sessions = tokio_util::task::TaskTracker::new();
    loop {
        tokio::select! {
            // (Awaited in a block: the guard `wait_for` yields is not held while draining.)
            () = async { let _ = stop.wait_for(|&s| s).await; } => {
                sessions.close();
                sessions.wait().await;
                return Ok(());
            }
            accepted = listener.accept() => {
                let (stream, _) = accepted.map_err(|e| format!("shm accept: {e}"))?;
                let session = Session::new(manager.clone(), config.clone(), max_batch_keys);
                let stopped = stopped.clone();
                sessions.spawn(async move { session.run(stream, stopped).await });
            }
        }
    }
}

/// What a session holds under a handle.
enum Held {
    Alloc(PutWriter),
    Pin(ArenaPin),
    /// An allocation in the session's private window (at this offset), copied into the
    /// writer at commit.
    WindowAlloc(PutWriter, u64),
    /// A block copied into the private window.
    WindowPin {
        offset: u64,
        len: u64,
    },
}

impl Held {
    fn len(&self) -> u64 {
        match self {
            Held::Alloc(w) | Held::WindowAlloc(w, _) => w.len(),
            Held::Pin(p) => p.len,
            Held::WindowPin { len, .. } => *len,
        }
    }
}

struct Session {
    manager: Manager,
    config: ShmConfig,
    max_batch_keys: usize,
    uid: u32,
    namespaces: Vec<Namespace>,
    held: HashMap<u64, Held>,
    held_bytes: u64,
    next_handle: u64,
    /// The session's private window, when it does not map the arena.
    window: Option<Window>,
}

impl Session {
    fn new(manager: Manager, config: ShmConfig, max_batch_keys: usize) -> Self {
        Session {
            manager,
            config,
            max_batch_keys,
            uid: u32::MAX,
            namespaces: Vec::new(),
            held: HashMap::new(),
            held_bytes: 0,
            next_handle: 1,
            window: None,
        }
    }

    async fn run(mut self, mut stream: UnixStream, mut stopped: watch::Receiver<bool>) {
        let peer = match stream.peer_cred() {
            Ok(cred) => cred,
            Err(e) => return tracing::warn!(error = %e, "shm: cannot read the peer's credentials; closing"),
        };
        self.uid = peer.uid();
        let metrics = self.manager.metrics().clone();
        metrics.shm_sessions.inc();
        let result = loop {
            let request = tokio::select! {
                _ = stopped.wait_for(|&s| s) => break Ok(()),
                r = read_request(&mut stream) => r,
            };
            let request = match request {
                Ok(Some(r)) => r,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            let op = op_name(&request);
            let started = Instant::now();
            metrics.requests.with_label_values(&[op]).inc();
            let sent = match request.msg {
                Some(Req::Hello(hello)) => self.hello(&mut stream, hello).await,
                other => {
                    let response = self.handle(other).await;
                    stream.write_all(&frame(&v1::ShmResponse { msg: Some(response) })).await
                }
            };
            metrics.latency.with_label_values(&[op]).observe(started.elapsed().as_secs_f64());
            if let Err(e) = sent {
                break Err(e);
            }
        };
        metrics.shm_sessions.dec();
        if let Err(e) = result {
            tracing::debug!(pid = ?peer.pid(), error = %e, "shm session ended");
        }
        // Dropping `self` releases every allocation and pin the session still holds.
    }

    /// Checks the peer and the namespaces, then sends the welcome with the arena's memfd.
    async fn hello(&mut self, stream: &mut UnixStream, hello: v1::ShmHello) -> std::io::Result<()> {
        let refused = |message: String| Resp::Error(v1::BlockStatus { code: Code::PermissionDenied as u32, message });
        let reply = if !self.namespaces.is_empty() {
            Err(Resp::Error(v1::BlockStatus {
                code: Code::FailedPrecondition as u32,
                message: "hello was already sent on this connection".into(),
            }))
        } else if !self.config.admits(self.uid) {
            Err(refused(format!("uid {} is not granted the shared-memory data plane (shm.grants)", self.uid)))
        } else if hello.namespaces.is_empty() {
            Err(Resp::Error(v1::BlockStatus {
                code: Code::InvalidArgument as u32,
                message: "hello names no namespace".into(),
            }))
        } else {
            self.open_namespaces(&hello.namespaces).map_err(|m| match m {
                NsRefusal::Invalid(message) => {
                    Resp::Error(v1::BlockStatus { code: Code::InvalidArgument as u32, message })
                }
                NsRefusal::Denied(message) => refused(message),
            })
        };
        let unavailable = |message: String| Resp::Error(v1::BlockStatus { code: Code::Unavailable as u32, message });
        // A uid that may not read every namespace never maps the arena: it gets a window.
        let private = !self.config.shares_arena(self.uid);
        let reply = reply.and_then(|()| {
            if private {
                let window = Window::new(self.config.session_limit.0)
                    .map_err(|e| unavailable(format!("cannot create the session's private window: {e}")))?;
                self.window = Some(window);
            }
            Ok(())
        });
        let cpu = self.manager.cpu_tier();
        let mapping = match (&self.window, cpu.memfd()) {
            (Some(w), _) => Some((w.fd(), w.len())),
            (None, Some(fd)) => Some((fd, cpu.mapping_len())),
            (None, None) => None,
        };
        let (Ok(()), Some((memfd, size))) = (&reply, mapping) else {
            let response = match reply {
                Err(r) => r,
                Ok(()) => unavailable("the CPU arena is not a memfd on this host; use gRPC".into()),
            };
            self.namespaces.clear();
            self.window = None;
            return stream.write_all(&frame(&v1::ShmResponse { msg: Some(response) })).await;
        };
        let welcome = frame(&v1::ShmResponse {
            msg: Some(Resp::Welcome(v1::ShmWelcome {
                arena_size: size,
                session_limit: self.config.session_limit.0,
                version: env!("CARGO_PKG_VERSION").into(),
                private_window: private,
            })),
        });
        let socket = stream.as_raw_fd();
        let sent = stream.async_io(Interest::WRITABLE, || send_with_fd(socket, &welcome, memfd)).await?;
        stream.write_all(&welcome[sent..]).await
    }

    fn open_namespaces(&mut self, names: &[String]) -> Result<(), NsRefusal> {
        for name in names {
            let ns = Namespace::new(name).map_err(|e| NsRefusal::Invalid(e.to_string()))?;
            if !self.config.allows(self.uid, name) {
                return Err(NsRefusal::Denied(format!(
                    "uid {} may not open namespace {name:?} (shm.grants)",
                    self.uid
                )));
            }
            self.namespaces.push(ns);
        }
        Ok(())
    }

    async fn handle(&mut self, request: Option<Req>) -> Resp {
        if self.namespaces.is_empty() {
            return error(Code::FailedPrecondition, "the first message of a session must be hello".into());
        }
        match request {
            Some(Req::Alloc(a)) => self.alloc(a).await.unwrap_or_else(|e| e),
            Some(Req::Commit(c)) => self.commit(c).await,
            Some(Req::Pin(p)) => self.pin(p).await.unwrap_or_else(|e| e),
            Some(Req::Release(r)) => self.release(r),
            Some(Req::Lookup(l)) => self.lookup(l).unwrap_or_else(|e| e),
            Some(Req::Hello(_)) => unreachable!("hello is answered by run"),
            None => error(Code::InvalidArgument, "a message with no field set (an unknown or newer field?)".into()),
        }
    }

    /// The namespace of a request, which must be one the session opened.
    fn namespace(&self, name: &str, count: usize) -> Result<Namespace, Resp> {
        if count > self.max_batch_keys {
            return Err(error(
                Code::InvalidArgument,
                format!("{count} keys in one request; the limit is {}", self.max_batch_keys),
            ));
        }
        self.namespaces.iter().find(|ns| ns.as_str() == name).cloned().ok_or_else(|| {
            error(Code::PermissionDenied, format!("namespace {name:?} was not opened by this session's hello"))
        })
    }

    fn hold(&mut self, held: Held) -> u64 {
        let handle = self.next_handle;
        self.next_handle += 1;
        self.held_bytes += held.len();
        self.held.insert(handle, held);
        handle
    }

    /// Removes a handle. A window slot's pages are free again at once; its bytes stay as
    /// they are until the session's next alloc or pin.
    fn take(&mut self, handle: u64) -> Option<Held> {
        let held = self.held.remove(&handle)?;
        self.held_bytes -= held.len();
        if let (Some(window), Held::WindowAlloc(_, offset) | Held::WindowPin { offset, .. }) = (&mut self.window, &held)
        {
            window.free(*offset, held.len());
        }
        Some(held)
    }

    fn over_limit(&self, len: u64) -> Option<NodeError> {
        (self.held_bytes + len > self.config.session_limit.0).then(|| {
            NodeError::Tier(TierError::NoSpace {
                tier: "shm session (release pins or commit allocations first)".into(),
                capacity: self.config.session_limit.0,
                used: self.held_bytes,
                required: len,
            })
        })
    }

    async fn alloc(&mut self, req: v1::ShmAlloc) -> Result<Resp, Resp> {
        let ns = self.namespace(&req.namespace, req.blocks.len())?;
        let durability = durability_from_wire(req.durability).map_err(|s| error(s.code(), s.message().into()))?;
        let mut results = Vec::with_capacity(req.blocks.len());
        // Whether this request holds slots already (see `Manager::begin_put_in_arena`).
        let mut holding = false;
        for header in req.blocks {
            let outcome = match Key::new(&header.key) {
                Err(e) => Err(e.into()),
                Ok(key) => {
                    let key = BlockKey::new(ns.clone(), key);
                    if !self.manager.lookup(std::slice::from_ref(&key)).is_empty() {
                        results.push(v1::ShmAllocResult {
                            status: Some(block_status(Ok(()))),
                            existed: true,
                            slot: None,
                        });
                        continue;
                    }
                    match self.over_limit(header.length) {
                        Some(e) => Err(e),
                        None if self.window.is_some() => {
                            let (len, crc) = (header.length, header.crc32c);
                            match self.window_alloc(key, len, crc, durability).await {
                                Ok((held, offset)) => {
                                    let handle = self.hold(held);
                                    results.push(v1::ShmAllocResult {
                                        status: Some(block_status(Ok(()))),
                                        existed: false,
                                        slot: Some(v1::ShmSlot { handle, offset, length: len }),
                                    });
                                    continue;
                                }
                                Err(e) => Err(e),
                            }
                        }
                        None => {
                            let asked = req.wait_ms.map(std::time::Duration::from_millis);
                            let wait = asked.map_or(self.config.alloc_wait, |w| w.min(self.config.alloc_wait));
                            let (len, crc) = (header.length, header.crc32c);
                            self.manager.begin_put_in_arena(key, len, crc, durability, wait, holding).await
                        }
                    }
                }
            };
            results.push(match outcome {
                Ok(writer) => {
                    holding = true;
                    let (offset, length) = (writer.arena_offset().expect("an arena put"), writer.len());
                    let handle = self.hold(Held::Alloc(writer));
                    v1::ShmAllocResult {
                        status: Some(block_status(Ok(()))),
                        existed: false,
                        slot: Some(v1::ShmSlot { handle, offset, length }),
                    }
                }
                Err(e) => v1::ShmAllocResult { status: Some(block_status(Err(&e))), existed: false, slot: None },
            });
        }
        Ok(Resp::Allocated(v1::ShmAllocated { results }))
    }

    async fn commit(&mut self, req: v1::ShmCommit) -> Resp {
        if !req.crc32c.is_empty() && req.crc32c.len() != req.handles.len() {
            let (c, h) = (req.crc32c.len(), req.handles.len());
            return error(Code::InvalidArgument, format!("{c} checksums for {h} handles; send one per handle or none"));
        }
        let mut pending = Vec::with_capacity(req.handles.len());
        for (index, handle) in req.handles.iter().enumerate() {
            let declared = req.crc32c.get(index).copied();
            let started = match self.take(*handle) {
                Some(Held::Alloc(mut writer)) => match writer.mark_filled(declared, self.config.verify_commits) {
                    Ok(()) => Ok(self.manager.finish_put(writer)),
                    Err(e) => Err(e),
                },
                Some(Held::WindowAlloc(writer, offset)) => {
                    self.window_fill(writer, offset, declared).map(|w| self.manager.finish_put(w))
                }
                Some(pin @ (Held::Pin(_) | Held::WindowPin { .. })) => {
                    self.held_bytes += pin.len();
                    self.held.insert(*handle, pin);
                    Err(unknown_handle(*handle, "is a pin, not an allocation"))
                }
                None => Err(unknown_handle(*handle, "is not held by this session")),
            };
            pending.push((index, started));
        }
        let mut results = Vec::with_capacity(pending.len());
        for (index, started) in pending {
            let outcome = match started {
                Ok(commit) => commit.await,
                Err(e) => Err(e),
            };
            results.push(match outcome {
                Ok(o) => v1::PutResult {
                    index: index as u32,
                    status: Some(block_status(Ok(()))),
                    existed: o.status == kvtier_tiers::PutStatus::Existed,
                    tier: tier_to_wire(o.tier) as i32,
                },
                Err(e) => v1::PutResult {
                    index: index as u32,
                    status: Some(block_status(Err(&e))),
                    existed: false,
                    tier: v1::Tier::Unspecified as i32,
                },
            });
        }
        Resp::Committed(v1::ShmCommitted { results })
    }

    /// The block keys of a request, in a namespace this session opened.
    fn keys(&self, namespace: &str, keys: &[bytes::Bytes]) -> Result<Vec<BlockKey>, Resp> {
        let ns = self.namespace(namespace, keys.len())?;
        keys.iter()
            .enumerate()
            .map(|(i, k)| Key::new(k).map(|k| BlockKey::new(ns.clone(), k)).map_err(|e| (i, e)))
            .collect::<Result<_, _>>()
            .map_err(|(i, e)| error(Code::InvalidArgument, format!("key {i}: {e}")))
    }

    async fn pin(&mut self, req: v1::ShmPin) -> Result<Resp, Resp> {
        let keys = self.keys(&req.namespace, &req.keys)?;
        if self.window.is_some() {
            return Ok(Resp::Pinned(v1::ShmPinned { results: self.window_pin(keys).await }));
        }
        let budget = self.config.session_limit.0.saturating_sub(self.held_bytes);
        let outcomes = self.manager.pin_batch(&keys, budget, self.config.alloc_wait).await;
        // A key with no room for its copy is worth asking for again once this answer's pins
        // are released; only when nothing could be pinned is the client sent to gRPC.
        let pinned_any = outcomes.iter().any(|o| matches!(o, PinOutcome::Pinned(_)));
        let mut results = Vec::with_capacity(outcomes.len());
        for (index, outcome) in outcomes.into_iter().enumerate() {
            let not_pinned = |reason, message, deferred| not_pinned(index, reason, message, deferred);
            let again = |message: String| not_pinned(v1::MissReason::Unspecified, message, v1::ShmDeferred::Again);
            results.push(match outcome {
                PinOutcome::Pinned(pin) => {
                    let (offset, length, crc32c, tier) = (pin.offset, pin.len, pin.crc32c, tier_to_wire(pin.tier));
                    let handle = self.hold(Held::Pin(pin));
                    let slot = Some(v1::ShmSlot { handle, offset, length });
                    v1::ShmPinResult { slot, crc32c, tier: tier as i32, miss: None, deferred: 0 }
                }
                PinOutcome::Miss(GetOutcome::Miss { reason, message }) => {
                    not_pinned(miss_to_wire(reason), message, v1::ShmDeferred::None)
                }
                PinOutcome::Miss(GetOutcome::Hit { .. }) => unreachable!("pin_batch returns hits as pins"),
                PinOutcome::Later => again(SESSION_FULL.into()),
                PinOutcome::NoRoom(message) if pinned_any => again(message),
                PinOutcome::NoRoom(message) => {
                    not_pinned(v1::MissReason::Unspecified, message, v1::ShmDeferred::NoRoom)
                }
            });
        }
        Ok(Resp::Pinned(v1::ShmPinned { results }))
    }

    fn lookup(&self, req: v1::LookupRequest) -> Result<Resp, Resp> {
        let keys = self.keys(&req.namespace, &req.keys)?;
        let pin = std::time::Duration::from_millis(req.pin_ms.into());
        Ok(Resp::LookedUp(kvtier_blockmgr::wire::looked_to_wire(self.manager.lookup_pinned(&keys, pin))))
    }

    fn release(&mut self, req: v1::ShmRelease) -> Resp {
        let released = req.handles.iter().filter(|h| self.take(**h).is_some()).count();
        Resp::Released(v1::ShmReleased { released: released as u32 })
    }
}

/// The result of a key that was not pinned.
fn not_pinned(index: usize, reason: v1::MissReason, message: String, deferred: v1::ShmDeferred) -> v1::ShmPinResult {
    v1::ShmPinResult {
        slot: None,
        crc32c: 0,
        tier: v1::Tier::Unspecified as i32,
        miss: Some(v1::GetMiss {
            index: index as u32,
            reason: reason as i32,
            message,
            holders: Vec::new(),
            keep: false,
        }),
        deferred: deferred as i32,
    }
}

/// The message of a key not pinned because the session reached its limit.
const SESSION_FULL: &str = "not pinned: the session reached its limit; release pins and ask again";

enum NsRefusal {
    Invalid(String),
    Denied(String),
}

fn error(code: Code, message: String) -> Resp {
    Resp::Error(v1::BlockStatus { code: code as u32, message })
}

fn unknown_handle(handle: u64, why: &str) -> NodeError {
    NodeError::Tier(TierError::Unsupported { tier: "shm".into(), what: format!("handle {handle} {why}") })
}

/// Reads one request; `None` when the client closed the connection between requests.
async fn read_request(stream: &mut UnixStream) -> std::io::Result<Option<v1::ShmRequest>> {
    let mut header = [0u8; 4];
    match stream.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut body = vec![0u8; frame_len(header)?];
    stream.read_exact(&mut body).await?;
    decode(&body).map(Some)
}
