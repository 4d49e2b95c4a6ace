//! Client side of the shm data plane: a blocking client (the Python package calls it with
//! the GIL released) that maps the server's arena and moves block bytes by memcpy.

use std::{
    io::{self, Write},
    os::unix::net::UnixStream,
    path::Path,
    sync::Arc,
};

use kvtier_proto::v1::{self, shm_request::Msg as Req, shm_response::Msg as Resp};
use kvtier_tiers::TierKind;
use tonic::Code;

use kvtier_types::{
    Durability, Looked, MissReason,
    wire::{durability_to_wire, looked_from_wire, miss_from_wire, tier_from_wire},
};

use super::{
    PutSource, ShmAlloc, ShmArena, ShmError, ShmGet, ShmPin, ShmPut, ShmSlot,
    frame::{decode, frame, frame_len, read_frame, recv_with_fd},
    scatter,
};

/// Bytes of blocks committed together: the server checksums one group while the client
/// copies the next.
const COMMIT_GROUP: usize = 8 << 20;

/// A session of the shm data plane. One request at a time; open one per thread.
pub struct ShmClient {
    stream: UnixStream,
    path: String,
    arena: ShmArena,
    session_limit: u64,
    poisoned: bool,
}

impl std::fmt::Debug for ShmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ShmClient({}, {} byte arena {})", self.path, self.arena.len(), self.arena.id)
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
        let fd = std::fs::File::from(fd);
        let id = std::os::unix::fs::MetadataExt::ino(&fd.metadata().map_err(io_err)?);
        let len =
            usize::try_from(welcome.arena_size).map_err(|_| ShmError::Protocol("arena larger than memory".into()))?;
        // A memfd the server sealed at exactly `len` bytes: it cannot shrink under the mapping.
        let map = memmap2::MmapOptions::new().len(len).map_raw(&fd).map_err(io_err)?;
        let map = Arc::new(map);
        let arena = ShmArena { map, id, private: welcome.private_window };
        Ok(ShmClient { stream, path, arena, session_limit: welcome.session_limit, poisoned: false })
    }

    /// Most bytes this session may hold in slots at once (the server's `shm.session_limit`).
    pub fn session_limit(&self) -> u64 {
        self.session_limit
    }

    /// Bytes of the mapped arena.
    pub fn arena_size(&self) -> u64 {
        self.arena.len() as u64
    }

    /// The mapped arena, for callers that copy into and out of slots themselves.
    pub fn arena(&self) -> ShmArena {
        self.arena.clone()
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
    fn slot(&self, slot: &ShmSlot) -> *mut u8 {
        // SAFETY: `checked_slot` kept every slot inside the mapping.
        unsafe { self.arena.as_ptr().add(slot.offset as usize) }
    }

    /// A slot of the server's answer, refused (and the session poisoned) if it does not lie
    /// inside the mapping: nothing is ever copied outside it.
    fn checked_slot(&mut self, slot: Option<&v1::ShmSlot>) -> Result<ShmSlot, ShmError> {
        let slot = slot.ok_or_else(|| self.poison("a result without its slot".into()))?;
        let len = self.arena.len() as u64;
        if slot.offset.checked_add(slot.length).is_none_or(|end| end > len) {
            return Err(self.poison(format!("slot {slot:?} lies outside the {len}-byte arena")));
        }
        Ok(ShmSlot { handle: slot.handle, offset: slot.offset, len: slot.length })
    }

    /// Takes a slot for each block (key, length) of `namespace`. The caller writes each
    /// block's bytes at its slot's offset, then [`commit`](Self::commit)s the handles, or
    /// releases them to abandon the blocks. `wait` bounds the wait for room in a full arena
    /// (`None`: the server's `shm.alloc_wait`). Per-block outcomes, in order.
    pub fn alloc(
        &mut self,
        namespace: &str,
        blocks: &[(&[u8], u64)],
        durability: Durability,
        wait: Option<std::time::Duration>,
    ) -> Result<Vec<ShmAlloc>, ShmError> {
        let headers = blocks
            .iter()
            .map(|(k, len)| v1::BlockHeader { key: bytes::Bytes::copy_from_slice(k), length: *len, crc32c: None })
            .collect();
        let alloc = v1::ShmAlloc {
            namespace: namespace.into(),
            blocks: headers,
            durability: durability_to_wire(durability) as i32,
            wait_ms: wait.map(|w| w.as_millis() as u64),
        };
        let Resp::Allocated(allocated) = self.call(Req::Alloc(alloc))? else {
            return Err(self.poison("alloc answered with something else".into()));
        };
        if allocated.results.len() != blocks.len() {
            let (r, b) = (allocated.results.len(), blocks.len());
            return Err(self.poison(format!("{r} alloc results for {b} blocks")));
        }
        let mut outcomes = Vec::with_capacity(blocks.len());
        for (result, (_, len)) in allocated.results.iter().zip(blocks) {
            let status = result.status.clone().unwrap_or_default();
            outcomes.push(if status.code != 0 {
                ShmAlloc::Failed { code: Code::from(status.code as i32), message: status.message }
            } else if result.existed {
                ShmAlloc::Existed
            } else {
                let slot = self.checked_slot(result.slot.as_ref())?;
                if slot.len != *len {
                    return Err(self.poison(format!("slot of {} bytes for a {len}-byte block", slot.len)));
                }
                ShmAlloc::Slot(slot)
            });
        }
        Ok(outcomes)
    }

    /// Publishes allocated slots whose bytes are written; the server checksums them. One
    /// outcome per handle, in order.
    pub fn commit(&mut self, handles: &[u64]) -> Result<Vec<ShmPut>, ShmError> {
        self.send(Req::Commit(v1::ShmCommit { handles: handles.to_vec(), crc32c: Vec::new() }))?;
        self.committed(handles.len())
    }

    /// Reads the answer to one commit of `count` handles.
    fn committed(&mut self, count: usize) -> Result<Vec<ShmPut>, ShmError> {
        let Resp::Committed(committed) = self.receive()? else {
            return Err(self.poison("commit answered with something else".into()));
        };
        if committed.results.len() != count {
            return Err(self.poison(format!("{} commit results for {count} handles", committed.results.len())));
        }
        Ok(committed
            .results
            .into_iter()
            .map(|result| {
                let status = result.status.unwrap_or_default();
                if status.code != 0 {
                    ShmPut::Failed { code: Code::from(status.code as i32), message: status.message }
                } else if result.existed {
                    ShmPut::Existed
                } else {
                    ShmPut::Stored(tier_from_wire(result.tier).unwrap_or(TierKind::Cpu))
                }
            })
            .collect())
    }

    /// Pins `keys` of `namespace` in the arena (reading blocks on SSD into it first): the
    /// caller may read each pinned slot until it releases the handle.
    pub fn pin(&mut self, namespace: &str, keys: &[&[u8]]) -> Result<Vec<ShmPin>, ShmError> {
        let pin = v1::ShmPin {
            namespace: namespace.into(),
            keys: keys.iter().map(|k| bytes::Bytes::copy_from_slice(k)).collect(),
        };
        let Resp::Pinned(pinned) = self.call(Req::Pin(pin))? else {
            return Err(self.poison("pin answered with something else".into()));
        };
        if pinned.results.len() != keys.len() {
            return Err(self.poison(format!("{} pin results for {} keys", pinned.results.len(), keys.len())));
        }
        let mut outcomes = Vec::with_capacity(keys.len());
        for result in pinned.results {
            outcomes.push(if result.slot.is_some() {
                let slot = self.checked_slot(result.slot.as_ref())?;
                ShmPin::Pinned { slot, tier: tier_from_wire(result.tier).unwrap_or(TierKind::Cpu) }
            } else {
                let miss = result.miss.unwrap_or_default();
                match v1::ShmDeferred::try_from(result.deferred) {
                    Ok(v1::ShmDeferred::Again) => ShmPin::Again,
                    Ok(v1::ShmDeferred::NoRoom) => ShmPin::Not(ShmGet::NoRoom { message: miss.message }),
                    _ => ShmPin::Not(ShmGet::Miss { reason: miss_from_wire(miss.reason), message: miss.message }),
                }
            });
        }
        Ok(outcomes)
    }

    /// Releases pins and abandons uncommitted allocations; how many handles the session held.
    pub fn release(&mut self, handles: &[u64]) -> Result<u32, ShmError> {
        let Resp::Released(released) = self.call(Req::Release(v1::ShmRelease { handles: handles.to_vec() }))? else {
            return Err(self.poison("release answered with something else".into()));
        };
        Ok(released.released)
    }

    /// Stores `blocks` (key, bytes) in `namespace`: one alloc, a copy of each block into its
    /// slot, one commit per group. Per-block outcomes, in order.
    pub fn put(
        &mut self,
        namespace: &str,
        blocks: &[(&[u8], &[u8])],
        durability: Durability,
    ) -> Result<Vec<ShmPut>, ShmError> {
        let parts: Vec<[&[u8]; 1]> = blocks.iter().map(|(_, v)| [*v]).collect();
        let blocks: Vec<(&[u8], &[&[u8]])> = blocks.iter().zip(&parts).map(|((k, _), p)| (*k, &p[..])).collect();
        self.put_parts(namespace, &blocks, durability)
    }

    /// [`ShmClient::put`] of blocks given in parts (key, pieces): each block is its pieces
    /// one after the other, copied straight into its slot (a header and a payload that
    /// live apart need no copy to join them).
    ///
    /// Blocks go in batches the session's limit can hold at once (a batch of one block
    /// larger than the limit is refused by the server, and the caller sends it otherwise).
    pub fn put_parts<P: PutSource>(
        &mut self,
        namespace: &str,
        blocks: &[(&[u8], &[P])],
        durability: Durability,
    ) -> Result<Vec<ShmPut>, ShmError> {
        let mut outcomes = Vec::with_capacity(blocks.len());
        let (mut start, mut bytes) = (0, 0u64);
        for (i, (_, parts)) in blocks.iter().enumerate() {
            let len: u64 = parts.iter().map(|p| p.raw().1 as u64).sum();
            if i > start && bytes + len > self.session_limit {
                outcomes.extend(self.put_batch(namespace, &blocks[start..i], durability)?);
                (start, bytes) = (i, 0);
            }
            bytes += len;
        }
        if start < blocks.len() {
            outcomes.extend(self.put_batch(namespace, &blocks[start..], durability)?);
        }
        Ok(outcomes)
    }

    /// One alloc, the copies, the commits: [`ShmClient::put_parts`] of blocks that fit the
    /// session's limit together.
    fn put_batch<P: PutSource>(
        &mut self,
        namespace: &str,
        blocks: &[(&[u8], &[P])],
        durability: Durability,
    ) -> Result<Vec<ShmPut>, ShmError> {
        let sizes: Vec<(&[u8], u64)> =
            blocks.iter().map(|(k, parts)| (*k, parts.iter().map(|p| p.raw().1 as u64).sum())).collect();
        let allocated = self.alloc(namespace, &sizes, durability, None)?;
        // Copy and commit overlap: each group of blocks is committed (the server checksums
        // it) while the next group is being copied; the answers are read at the end.
        let mut outcomes = Vec::with_capacity(blocks.len());
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let (mut handles, mut positions, mut group_bytes) = (Vec::new(), Vec::new(), 0usize);
        for (i, result) in allocated.into_iter().enumerate() {
            outcomes.push(match result {
                ShmAlloc::Failed { code, message } => ShmPut::Failed { code, message },
                ShmAlloc::Existed => ShmPut::Existed,
                ShmAlloc::Slot(slot) => {
                    let (dst, mut at) = (self.slot(&slot), 0);
                    for part in blocks[i].1 {
                        let (src, len) = part.raw();
                        // SAFETY: the slot is ours alone until committed, inside the mapping,
                        // and exactly as long as the parts together (checked by `alloc`); a
                        // part is readable per its type (a slice, or `ForeignBytes::new`).
                        unsafe { std::ptr::copy_nonoverlapping(src, dst.add(at), len) };
                        at += len;
                    }
                    handles.push(slot.handle);
                    positions.push(i);
                    group_bytes += at;
                    ShmPut::Stored(TierKind::Cpu)
                }
            });
            if group_bytes >= COMMIT_GROUP || (i + 1 == blocks.len() && !handles.is_empty()) {
                let commit = v1::ShmCommit { handles: std::mem::take(&mut handles), crc32c: Vec::new() };
                self.send(Req::Commit(commit))?;
                groups.push(std::mem::take(&mut positions));
                group_bytes = 0;
            }
        }
        for positions in groups {
            for (result, i) in self.committed(positions.len())?.into_iter().zip(positions) {
                outcomes[i] = result;
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
        let mut parts: Vec<[&mut [u8]; 1]> = outs.iter_mut().map(|o| [&mut **o]).collect();
        let mut outs: Vec<&mut [&mut [u8]]> = parts.iter_mut().map(|p| &mut p[..]).collect();
        self.get_into_parts(namespace, keys, &mut outs)
    }

    /// [`ShmClient::get_into`] with each key's output in parts, filled in order (a header
    /// buffer, then the payload's): the parts together must hold the block.
    pub fn get_into_parts(
        &mut self,
        namespace: &str,
        keys: &[&[u8]],
        outs: &mut [&mut [&mut [u8]]],
    ) -> Result<Vec<ShmGet>, ShmError> {
        assert_eq!(keys.len(), outs.len(), "one output per key");
        self.read(namespace, keys, |i, src, len| {
            // SAFETY: `src` holds `len` pinned bytes until the release after this call.
            scatter(unsafe { std::slice::from_raw_parts(src, len) }, outs[i])
        })
    }

    /// The tier of each key in the longest present prefix of `keys` (the gRPC `Lookup`, on
    /// this socket: no HTTP/2 between a scheduler and its answer).
    pub fn lookup(&mut self, namespace: &str, keys: &[&[u8]]) -> Result<Vec<TierKind>, ShmError> {
        Ok(self.lookup_pinned(namespace, keys, std::time::Duration::ZERO)?.tiers)
    }

    /// [`ShmClient::lookup`] with each block's expected load time, pinning the blocks it
    /// reports for `pin` (up to the node's `server.max_lookup_pin`) or until a get reads each.
    pub fn lookup_pinned(
        &mut self,
        namespace: &str,
        keys: &[&[u8]],
        pin: std::time::Duration,
    ) -> Result<Looked, ShmError> {
        let req = v1::LookupRequest {
            namespace: namespace.into(),
            keys: keys.iter().map(|k| bytes::Bytes::copy_from_slice(k)).collect(),
            pin_ms: pin.as_millis().min(u32::MAX as u128) as u32,
        };
        let Resp::LookedUp(found) = self.call(Req::Lookup(req))? else {
            return Err(self.poison("lookup answered with something else".into()));
        };
        looked_from_wire(found).map_err(ShmError::Protocol)
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
    pub(super) fn read(
        &mut self,
        namespace: &str,
        keys: &[&[u8]],
        mut copy: impl FnMut(usize, *const u8, usize) -> Result<(), String>,
    ) -> Result<Vec<ShmGet>, ShmError> {
        let not_found = || ShmGet::Miss { reason: MissReason::NotFound, message: "not found".into() };
        let mut outcomes: Vec<ShmGet> = keys.iter().map(|_| not_found()).collect();
        let mut pending: Vec<usize> = (0..keys.len()).collect();
        while !pending.is_empty() {
            let wanted: Vec<&[u8]> = pending.iter().map(|&i| keys[i]).collect();
            let pinned = self.pin(namespace, &wanted)?;
            let (mut handles, mut again) = (Vec::new(), Vec::new());
            for (&i, result) in pending.iter().zip(pinned) {
                match result {
                    ShmPin::Again => again.push(i),
                    ShmPin::Not(outcome) => outcomes[i] = outcome,
                    ShmPin::Pinned { slot, tier } => {
                        handles.push(slot.handle);
                        let len = slot.len as usize;
                        outcomes[i] = match copy(i, self.slot(&slot), len) {
                            Ok(()) => ShmGet::Hit { len, tier },
                            Err(message) => ShmGet::Miss { reason: MissReason::Error, message },
                        };
                    }
                }
            }
            if !handles.is_empty() {
                self.release(&handles)?;
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
