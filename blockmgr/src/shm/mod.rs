//! The shared-memory data plane for clients on the server's host.
//!
//! The CPU tier's arena is one sealed memfd. A local client connects to the shm Unix socket,
//! says which namespaces it will use ([`kvtier_proto::v1::ShmHello`]), and receives the memfd as
//! SCM_RIGHTS ancillary data on the reply; it maps the whole arena shared. From then on:
//! - **put**: `alloc` gives a slot (offset, length) per block; the client copies the bytes
//!   in; `commit` publishes them (the manager admits them exactly like a gRPC put).
//! - **get**: `pin` holds each block in the arena (copying it there first if it is on SSD)
//!   and gives its offset; the client copies it out and `release`s the pin.
//!
//! Only this metadata crosses the socket: length-prefixed `kvtier.v1` protobuf messages
//! (gRPC cannot pass file descriptors, hence a socket of its own). A session's allocations
//! and pins die with its connection, so a client killed mid-transfer leaks nothing.
//!
//! Isolation: a client that maps the arena can read and write every byte of it, whatever
//! namespace it opened. So only uids that may open every namespace map the arena
//! ([`crate::config::ShmConfig::shares_arena`]); every other session gets a private window
//! (`window.rs`): a memfd of its own, into which the server copies what it pins and out of
//! which it copies what it commits. The protocol is the same, and such a client never sees
//! a byte of a namespace it may not read. Uids without a grant get no mapping at all.

mod client;
mod server;
mod types;
mod window;

use std::{
    io::{self, IoSlice, IoSliceMut, Read},
    os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd},
};

use kvtier_proto::v1;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use prost::Message;

pub(crate) use self::server::{open_socket_permissions, serve};
pub use self::{
    client::{ShmArena, ShmClient, scatter},
    types::{ShmAlloc, ShmError, ShmGet, ShmPin, ShmPut, ShmSlot},
};

/// Largest control message either side accepts (a batch of 4096 keys is ~300 KiB).
const MAX_MESSAGE: usize = 16 << 20;

/// Encodes `msg` as one frame: little-endian u32 length, then the message.
fn frame(msg: &impl Message) -> Vec<u8> {
    let len = msg.encoded_len();
    let mut buf = Vec::with_capacity(4 + len);
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    msg.encode(&mut buf).expect("a Vec grows as needed");
    buf
}

/// The length in a frame header, refusing oversized frames before reading them.
fn frame_len(header: [u8; 4]) -> io::Result<usize> {
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("shm frame of {len} bytes exceeds the {MAX_MESSAGE}-byte limit"),
        ));
    }
    Ok(len)
}

fn decode<M: Message + Default>(body: &[u8]) -> io::Result<M> {
    M::decode(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("malformed shm message: {e}")))
}

/// Reads one frame from a blocking stream (the client side).
fn read_frame<M: Message + Default>(stream: &mut impl Read) -> io::Result<M> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header)?;
    let mut body = vec![0u8; frame_len(header)?];
    stream.read_exact(&mut body)?;
    decode(&body)
}

/// Writes `bytes` with `fd` attached as SCM_RIGHTS. Returns how many bytes went out (the
/// fd travels with the first byte; the caller writes any rest normally).
fn send_with_fd(socket: RawFd, bytes: &[u8], fd: BorrowedFd<'_>) -> io::Result<usize> {
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(socket, &[IoSlice::new(bytes)], &cmsg, MsgFlags::MSG_NOSIGNAL, None).map_err(io::Error::from)
}

/// Reads the first bytes of a frame and the fd sent with them. Blocking socket.
fn recv_with_fd(socket: &mut (impl Read + AsRawFd), buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(io::Error::from)?;
    let mut fd = None;
    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for raw in fds {
                // SAFETY: the kernel just installed `raw` in our table; nobody else owns it.
                let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
                fd.get_or_insert(owned);
            }
        }
    }
    Ok((msg.bytes, fd))
}

/// The request's kind, for metrics and logs.
fn op_name(req: &v1::ShmRequest) -> &'static str {
    use v1::shm_request::Msg;
    match &req.msg {
        Some(Msg::Hello(_)) => "shm_hello",
        Some(Msg::Alloc(_)) => "shm_alloc",
        Some(Msg::Commit(_)) => "shm_commit",
        Some(Msg::Pin(_)) => "shm_pin",
        Some(Msg::Release(_)) => "shm_release",
        Some(Msg::Lookup(_)) => "shm_lookup",
        None => "shm_unknown",
    }
}
