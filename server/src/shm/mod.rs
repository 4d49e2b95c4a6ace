//! The server side of the shared-memory data plane (the protocol and its client are in
//! `kvtier_client::shm`).
//!
//! Isolation: a client that maps the arena can read and write every byte of it, whatever
//! namespace it opened. So only uids that may open every namespace map the arena
//! ([`kvtier_blockmgr::config::ShmConfig::shares_arena`]); every other session gets a private window
//! (`window.rs`): a memfd of its own, into which the server copies what it pins and out of
//! which it copies what it commits. The protocol is the same, and such a client never sees
//! a byte of a namespace it may not read. Uids without a grant get no mapping at all.

mod server;
mod window;

use kvtier_proto::v1;

pub(crate) use self::server::serve;

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

/// Makes the socket connectable by every local uid: who may map the arena is decided by
/// the peer's credentials ([`kvtier_blockmgr::config::ShmConfig::admits`]), not by file permissions.
pub(crate) fn open_socket_permissions(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)) {
        tracing::warn!(path = %path.display(), error = %e, "cannot open the shm socket to other users");
    }
}
