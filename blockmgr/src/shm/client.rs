//! Client side of the shm data plane: a blocking client (the Python package calls it with
//! the GIL released) that maps the server's arena and moves block bytes by memcpy.

use std::{
    io::{self, Write},
    os::{fd::AsRawFd, unix::net::UnixStream},
    path::Path,
    ptr::NonNull,
};

use kvtier_proto::v1::{self, shm_request::Msg as Req, shm_response::Msg as Resp};
use kvtier_tiers::TierKind;
use tonic::Code;

use super::{decode, frame, frame_len, read_frame, recv_with_fd};
use crate::{
    Durability, MissReason,
    wire::{durability_to_wire, miss_from_wire, tier_from_wire},
};

/// Bytes of blocks committed together: the server checksums one group while the client
/// copies the next.
const COMMIT_GROUP: usize = 8 << 20;

/// What went wrong talking to the shm data plane.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    /// The socket failed or the server closed it.
    #[error("shm socket {path}: {source}")]
    Io {
        /// The socket path.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The server refused the request; the message is the server's.
    #[error("kvtier refused the shm request ({code:?}): {message}")]
    Refused {
        /// The gRPC-style code.
        code: Code,
        /// The server's message.
        message: String,
    },
    /// The server answered something this client does not understand.
    #[error("shm protocol: {0}")]
    Protocol(String),
}

/// Outcome of one block of a put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShmPut {
    /// Stored; the fastest tier now holding it.
    Stored(TierKind),
    /// The key was already stored: a no-op.
    Existed,
    /// Not stored, and why. `ResourceExhausted` means no shared memory was free: send the
    /// block over gRPC instead.
    Failed {
        /// The code.
        code: Code,
        /// The server's message.
        message: String,
    },
}

/// Outcome of one key of a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShmGet {
    /// Copied into the caller's buffer: its length, and the tier it came from.
    Hit {
        /// Bytes copied.
        len: usize,
        /// Where the block was.
        tier: TierKind,
    },
    /// Not read, and why.
    Miss {
        /// Why.
        reason: MissReason,
        /// Details.
        message: String,
    },
    /// The block exists, but the server had no shared memory free to hold a copy of it
    /// (it is on SSD): read it over gRPC instead.
    NoRoom {
        /// The server's message.
        message: String,
    },
}

struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: plain shared memory; the protocol decides who writes which bytes when.
unsafe impl Send for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what connect mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A session of the shm data plane. One request at a time; open one per thread.
pub struct ShmClient {
    stream: UnixStream,
    path: String,
    map: Mapping,
    session_limit: u64,
    poisoned: bool,
}

impl std::fmt::Debug for ShmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ShmClient({}, {} byte arena)", self.path, self.map.len)
    }
}

impl ShmClient {
    /// Connects to the shm socket at `path`, opens `namespaces` and maps the arena.
    pub fn connect(path: impl AsRef<Path>, namespaces: &[&str]) -> Result<Self, ShmError> {
        let path = path.as_ref().display().to_string();
        let io_err = |source| ShmError::Io { path: path.clone(), source };
        let mut stream = UnixStream::connect(&path).map_err(io_err)?;
        let hello = v1::ShmRequest {
            msg: Some(Req::Hello(v1::ShmHello { namespaces: namespaces.iter().map(|s| s.to_string()).collect() })),
        };
        stream.write_all(&frame(&hello)).map_err(io_err)?;
        // The reply's first bytes carry the memfd; read the frame header with them.
        let mut head = [0u8; 4];
        let (mut got, mut fd) = (0, None);
        while got < 4 {
            let (n, f) = recv_with_fd(&mut stream, &mut head[got..]).map_err(io_err)?;
            if n == 0 {
                return Err(io_err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection")));
            }
            got += n;
            fd = fd.or(f);
        }
        let mut body = vec![0u8; frame_len(head).map_err(io_err)?];
        io::Read::read_exact(&mut stream, &mut body).map_err(io_err)?;
        let welcome = match decode::<v1::ShmResponse>(&body).map_err(io_err)?.msg {
            Some(Resp::Welcome(w)) => w,
            other => return Err(unexpected(other)),
        };
        let fd = fd.ok_or_else(|| ShmError::Protocol("the welcome came without the arena's file descriptor".into()))?;
        let len =
            usize::try_from(welcome.arena_size).map_err(|_| ShmError::Protocol("arena larger than memory".into()))?;
        // SAFETY: mapping a memfd the server sealed at exactly `len` bytes.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io_err(io::Error::last_os_error()));
        }
        let map = Mapping { ptr: NonNull::new(ptr.cast()).expect("mmap returned null"), len };
        Ok(ShmClient { stream, path, map, session_limit: welcome.session_limit, poisoned: false })
    }

    /// Most bytes this session may hold in slots at once (the server's `shm.session_limit`).
    pub fn session_limit(&self) -> u64 {
        self.session_limit
    }

    /// Bytes of the mapped arena.
    pub fn arena_size(&self) -> u64 {
        self.map.len as u64
    }

    fn call(&mut self, msg: Req) -> Result<Resp, ShmError> {
        self.send(msg)?;
        self.receive()
    }

    fn send(&mut self, msg: Req) -> Result<(), ShmError> {
        if self.poisoned {
            return Err(ShmError::Protocol("an earlier error left this session out of step; open a new one".into()));
        }
        let frame = frame(&v1::ShmRequest { msg: Some(msg) });
        self.stream.write_all(&frame).map_err(|source| self.io_error(source))
    }

    fn receive(&mut self) -> Result<Resp, ShmError> {
        let response: v1::ShmResponse = read_frame(&mut self.stream).map_err(|source| self.io_error(source))?;
        match response.msg {
            Some(Resp::Error(s)) => Err(ShmError::Refused { code: Code::from(s.code as i32), message: s.message }),
            Some(r) => Ok(r),
            None => Err(self.poison("an empty response".into())),
        }
    }

    fn io_error(&mut self, source: io::Error) -> ShmError {
        self.poisoned = true;
        ShmError::Io { path: self.path.clone(), source }
    }

    /// A protocol error: the session can no longer tell which answer belongs to which request.
    fn poison(&mut self, message: String) -> ShmError {
        self.poisoned = true;
        ShmError::Protocol(message)
    }

    /// The mapping's bytes at a slot the server gave, checked against the mapping's size.
    fn slot(&self, slot: &v1::ShmSlot) -> Result<*mut u8, ShmError> {
        let end = slot.offset.checked_add(slot.length).filter(|&e| e <= self.map.len as u64);
        end.ok_or_else(|| ShmError::Protocol(format!("slot {slot:?} lies outside the {}-byte arena", self.map.len)))?;
        // SAFETY: inside the mapping (checked above).
        Ok(unsafe { self.map.ptr.as_ptr().add(slot.offset as usize) })
    }

    /// Stores `blocks` (key, bytes) in `namespace`: one alloc, a copy of each block into its
    /// slot (checksummed while copying), one commit. Per-block outcomes, in order.
    pub fn put(
        &mut self,
        namespace: &str,
        blocks: &[(&[u8], &[u8])],
        durability: Durability,
    ) -> Result<Vec<ShmPut>, ShmError> {
        let headers = blocks
            .iter()
            .map(|(k, v)| v1::BlockHeader {
                key: bytes::Bytes::copy_from_slice(k),
                length: v.len() as u64,
                crc32c: None,
            })
            .collect();
        let alloc = v1::ShmAlloc {
            namespace: namespace.into(),
            blocks: headers,
            durability: durability_to_wire(durability) as i32,
        };
        let Resp::Allocated(allocated) = self.call(Req::Alloc(alloc))? else {
            return Err(ShmError::Protocol("alloc answered with something else".into()));
        };
        if allocated.results.len() != blocks.len() {
            return Err(ShmError::Protocol(format!(
                "{} alloc results for {} blocks",
                allocated.results.len(),
                blocks.len()
            )));
        }
        // Copy and commit overlap: each group of blocks is committed (the server checksums
        // it) while the next group is being copied; the answers are read at the end.
        let mut outcomes = Vec::with_capacity(blocks.len());
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let (mut handles, mut positions, mut group_bytes) = (Vec::new(), Vec::new(), 0usize);
        for (i, result) in allocated.results.iter().enumerate() {
            let status = result.status.clone().unwrap_or_default();
            outcomes.push(if status.code != 0 {
                ShmPut::Failed { code: Code::from(status.code as i32), message: status.message }
            } else if result.existed {
                ShmPut::Existed
            } else {
                let slot = result.slot.as_ref().ok_or_else(|| self.poison("an allocation without a slot".into()))?;
                let data = blocks[i].1;
                if slot.length != data.len() as u64 {
                    return Err(self.poison(format!("slot of {} bytes for a {}-byte block", slot.length, data.len())));
                }
                let dst = self.slot(slot)?;
                // SAFETY: the slot is ours alone until committed, and inside the mapping.
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
                handles.push(slot.handle);
                positions.push(i);
                group_bytes += data.len();
                ShmPut::Stored(TierKind::Cpu)
            });
            if group_bytes >= COMMIT_GROUP || (i + 1 == blocks.len() && !handles.is_empty()) {
                let commit = v1::ShmCommit { handles: std::mem::take(&mut handles), crc32c: Vec::new() };
                self.send(Req::Commit(commit))?;
                groups.push(std::mem::take(&mut positions));
                group_bytes = 0;
            }
        }
        for positions in groups {
            let Resp::Committed(committed) = self.receive()? else {
                return Err(self.poison("commit answered with something else".into()));
            };
            if committed.results.len() != positions.len() {
                return Err(self.poison("commit results do not match the handles".into()));
            }
            for (result, i) in committed.results.into_iter().zip(positions) {
                let status = result.status.unwrap_or_default();
                outcomes[i] = if status.code != 0 {
                    ShmPut::Failed { code: Code::from(status.code as i32), message: status.message }
                } else if result.existed {
                    ShmPut::Existed
                } else {
                    ShmPut::Stored(tier_from_wire(result.tier).unwrap_or(TierKind::Cpu))
                };
            }
        }
        Ok(outcomes)
    }

    /// Reads `keys` of `namespace` into `outs` (one buffer per key, at least as long as the
    /// block): one pin, a copy out of each slot, one release. Per-key outcomes, in order; a
    /// buffer too small for its block is a miss with reason `Error`.
    pub fn get_into(
        &mut self,
        namespace: &str,
        keys: &[&[u8]],
        outs: &mut [&mut [u8]],
    ) -> Result<Vec<ShmGet>, ShmError> {
        assert_eq!(keys.len(), outs.len(), "one output buffer per key");
        self.read(namespace, keys, |i, src, len| {
            let out = &mut outs[i];
            if out.len() < len {
                return Err(format!("the block is {len} bytes; the buffer holds {}", out.len()));
            }
            // SAFETY: `src` holds `len` pinned bytes; `out` has room for them.
            unsafe { std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), len) };
            Ok(())
        })
    }

    /// The tier of each key in the longest present prefix of `keys` (the gRPC `Lookup`, on
    /// this socket: no HTTP/2 between a scheduler and its answer).
    pub fn lookup(&mut self, namespace: &str, keys: &[&[u8]]) -> Result<Vec<TierKind>, ShmError> {
        let req = v1::LookupRequest {
            namespace: namespace.into(),
            keys: keys.iter().map(|k| bytes::Bytes::copy_from_slice(k)).collect(),
        };
        let Resp::LookedUp(found) = self.call(Req::Lookup(req))? else {
            return Err(self.poison("lookup answered with something else".into()));
        };
        found
            .tiers
            .iter()
            .map(|&t| {
                tier_from_wire(t).ok_or_else(|| ShmError::Protocol(format!("unknown tier {t} in a lookup answer")))
            })
            .collect()
    }

    /// Reads `keys` into fresh buffers: `Ok(bytes)` for a hit, else the key's outcome (a
    /// [`ShmGet::Miss`], or [`ShmGet::NoRoom`] for a block to read over gRPC instead).
    pub fn get(&mut self, namespace: &str, keys: &[&[u8]]) -> Result<Vec<Result<Vec<u8>, ShmGet>>, ShmError> {
        let mut bufs: Vec<Vec<u8>> = vec![Vec::new(); keys.len()];
        let outcomes = self.read(namespace, keys, |i, src, len| {
            // SAFETY: `src` holds `len` pinned bytes.
            bufs[i] = unsafe { std::slice::from_raw_parts(src, len) }.to_vec();
            Ok(())
        })?;
        Ok(outcomes
            .into_iter()
            .zip(bufs)
            .map(|(o, data)| if matches!(o, ShmGet::Hit { .. }) { Ok(data) } else { Err(o) })
            .collect())
    }

    /// Pins `keys`, hands each pinned block to `copy` (index, bytes, length), releases the
    /// pins. `copy` returning `Err` turns that key into a miss with its message. Keys the
    /// server deferred (the session's limit reached, or no room while others were pinned)
    /// are asked for again once the pins are released.
    fn read(
        &mut self,
        namespace: &str,
        keys: &[&[u8]],
        mut copy: impl FnMut(usize, *const u8, usize) -> Result<(), String>,
    ) -> Result<Vec<ShmGet>, ShmError> {
        let not_found = || ShmGet::Miss { reason: MissReason::NotFound, message: "not found".into() };
        let mut outcomes: Vec<ShmGet> = keys.iter().map(|_| not_found()).collect();
        let mut pending: Vec<usize> = (0..keys.len()).collect();
        while !pending.is_empty() {
            let pin = v1::ShmPin {
                namespace: namespace.into(),
                keys: pending.iter().map(|&i| bytes::Bytes::copy_from_slice(keys[i])).collect(),
            };
            let Resp::Pinned(pinned) = self.call(Req::Pin(pin))? else {
                return Err(ShmError::Protocol("pin answered with something else".into()));
            };
            if pinned.results.len() != pending.len() {
                return Err(ShmError::Protocol(format!(
                    "{} pin results for {} keys",
                    pinned.results.len(),
                    pending.len()
                )));
            }
            let handles: Vec<u64> = pinned.results.iter().filter_map(|r| r.slot.as_ref().map(|s| s.handle)).collect();
            let mut again = Vec::new();
            let mut failure = None;
            for (&i, result) in pending.iter().zip(&pinned.results) {
                let Some(slot) = &result.slot else {
                    let miss = result.miss.clone().unwrap_or_default();
                    match v1::ShmDeferred::try_from(result.deferred) {
                        Ok(v1::ShmDeferred::Again) => again.push(i),
                        Ok(v1::ShmDeferred::NoRoom) => outcomes[i] = ShmGet::NoRoom { message: miss.message },
                        _ => outcomes[i] = ShmGet::Miss { reason: miss_from_wire(miss.reason), message: miss.message },
                    }
                    continue;
                };
                let src = match self.slot(slot) {
                    Ok(src) => src,
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                };
                let len = slot.length as usize;
                outcomes[i] = match copy(i, src, len) {
                    Ok(()) => ShmGet::Hit { len, tier: tier_from_wire(result.tier).unwrap_or(TierKind::Cpu) },
                    Err(message) => ShmGet::Miss { reason: MissReason::Error, message },
                };
            }
            if !handles.is_empty() {
                self.call(Req::Release(v1::ShmRelease { handles }))?;
            }
            if let Some(e) = failure {
                return Err(e);
            }
            if again.len() == pending.len() {
                return Err(ShmError::Protocol("the server pinned nothing though the session holds nothing".into()));
            }
            pending = again;
        }
        Ok(outcomes)
    }
}

fn unexpected(msg: Option<Resp>) -> ShmError {
    match msg {
        Some(Resp::Error(s)) => ShmError::Refused { code: Code::from(s.code as i32), message: s.message },
        other => ShmError::Protocol(format!("expected a welcome, got {other:?}")),
    }
}
