//! `[shm]`: the shared-memory data plane and who may use it.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::{ByteSize, humantime_serde, matches};

/// `[shm]`: the shared-memory data plane (served by `kvtier-server`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShmConfig {
    /// Unix socket local clients map the CPU arena through; relative to `data_dir` unless
    /// absolute; empty disables the data plane. Default `kvtier-shm.sock`.
    pub socket: PathBuf,
    /// Who may use the data plane besides the server's own uid and root (who may open every
    /// namespace), and which namespaces each may open. Only a uid granted every namespace
    /// (`"*"`) maps the arena itself; the others get private windows. Default none.
    pub grants: Vec<ShmGrant>,
    /// Most bytes one session may hold in allocated and pinned slots at once. Default 512 MiB.
    pub session_limit: ByteSize,
    /// How long an allocation, or the in-memory copy that pins a block read from SSD, waits
    /// for memory to be freed (blocks demoted to SSD) when the arena is full, before the
    /// client is told to send the block over gRPC (or the pin is a miss). Default 200ms.
    #[serde(with = "humantime_serde")]
    pub alloc_wait: Duration,
    /// Recompute the CRC-32C of blocks committed through shared memory and refuse those that
    /// disagree with the client's. Off, the client's checksum is trusted (faster puts; a
    /// wrong one shows as a checksum miss on a later read from SSD). Default true.
    pub verify_commits: bool,
    /// Give every session a private window (a memfd of `session_limit` bytes of its own,
    /// blocks copied in and out by the server) instead of the arena. Sessions of uids that
    /// may not open every namespace always get one, so they never map another tenant's
    /// blocks. Default false.
    pub private_windows: bool,
}

impl Default for ShmConfig {
    fn default() -> Self {
        ShmConfig {
            socket: PathBuf::from("kvtier-shm.sock"),
            grants: Vec::new(),
            session_limit: ByteSize(512 << 20),
            alloc_wait: Duration::from_millis(200),
            verify_commits: true,
            private_windows: false,
        }
    }
}

/// One `[[shm.grants]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShmGrant {
    /// The peer's uid (from the socket's credentials, not from anything the client says).
    pub uid: u32,
    /// Namespaces it may open: exact names, or prefixes ending in `*` (`"tenant-a/*"`, `"*"`).
    pub namespaces: Vec<String>,
}

impl ShmConfig {
    /// Whether a peer with `uid` maps the arena itself (it may read every namespace, and
    /// private windows are not forced); otherwise it gets a private window.
    pub fn shares_arena(&self, uid: u32) -> bool {
        // SAFETY: geteuid cannot fail.
        let all = uid == 0
            || uid == unsafe { libc::geteuid() }
            || self.grants.iter().any(|g| g.uid == uid && g.namespaces.iter().any(|n| n == "*"));
        all && !self.private_windows
    }

    /// Whether a peer with `uid` may open `namespace`.
    pub fn allows(&self, uid: u32, namespace: &str) -> bool {
        // SAFETY: geteuid cannot fail.
        if uid == 0 || uid == unsafe { libc::geteuid() } {
            return true;
        }
        self.grants.iter().filter(|g| g.uid == uid).flat_map(|g| &g.namespaces).any(|p| matches(p, namespace))
    }

    /// Whether a peer with `uid` may map the arena at all.
    pub fn admits(&self, uid: u32) -> bool {
        // SAFETY: geteuid cannot fail.
        uid == 0 || uid == unsafe { libc::geteuid() } || self.grants.iter().any(|g| g.uid == uid)
    }
}
