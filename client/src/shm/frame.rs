//! The shm socket's framing: length-prefixed `kvtier.v1` protobuf messages, and the arena's
//! memfd passed as SCM_RIGHTS ancillary data. Client and server share it.

use std::{
    io::{self, IoSlice, IoSliceMut, Read},
    os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd},
};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use prost::Message;

/// Largest control message either side accepts (a batch of 4096 keys is ~300 KiB).
pub const MAX_MESSAGE: usize = 16 << 20;

/// Encodes `msg` as one frame: little-endian u32 length, then the message.
pub fn frame(msg: &impl Message) -> Vec<u8> {
    let len = msg.encoded_len();
    let mut buf = Vec::with_capacity(4 + len);
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    msg.encode(&mut buf).expect("a Vec grows as needed");
    buf
}

/// The length in a frame header, refusing oversized frames before reading them.
pub fn frame_len(header: [u8; 4]) -> io::Result<usize> {
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("shm frame of {len} bytes exceeds the {MAX_MESSAGE}-byte limit"),
        ));
    }
    Ok(len)
}

/// One message from a frame's body; malformed bytes are `InvalidData`.
pub fn decode<M: Message + Default>(body: &[u8]) -> io::Result<M> {
    M::decode(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("malformed shm message: {e}")))
}

/// Reads one frame from a blocking stream (the client side).
pub fn read_frame<M: Message + Default>(stream: &mut impl Read) -> io::Result<M> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header)?;
    let mut body = vec![0u8; frame_len(header)?];
    stream.read_exact(&mut body)?;
    decode(&body)
}

/// Writes `bytes` with `fd` attached as SCM_RIGHTS. Returns how many bytes went out (the
/// fd travels with the first byte; the caller writes any rest normally).
pub fn send_with_fd(socket: RawFd, bytes: &[u8], fd: BorrowedFd<'_>) -> io::Result<usize> {
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(socket, &[IoSlice::new(bytes)], &cmsg, MsgFlags::MSG_NOSIGNAL, None).map_err(io::Error::from)
}

/// Reads the first bytes of a frame and the fd sent with them. Blocking socket.
pub fn recv_with_fd(socket: &mut (impl Read + AsRawFd), buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
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
