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
//! (the server's `shm.grants`); every other session gets a private window
//! (`window.rs`): a memfd of its own, into which the server copies what it pins and out of
//! which it copies what it commits. The protocol is the same, and such a client never sees
//! a byte of a namespace it may not read. Uids without a grant get no mapping at all.

mod arena;
mod client;
mod foreign;
pub mod frame;
mod types;

pub use self::{
    arena::ShmArena,
    client::ShmClient,
    foreign::{ForeignBytes, PutSource, scatter, scatter_foreign},
    types::{ShmAlloc, ShmError, ShmGet, ShmPin, ShmPut, ShmSlot},
};
