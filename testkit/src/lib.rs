//! kvtier's fixtures for tests and benchmarks (never a dependency of the product): hosts in
//! network namespaces that can be cut off, a one-member etcd, and `kvtier serve` as a
//! process, the object-store emulators (Azurite, moto) and a fault proxy in front of them.

mod emulators;
mod etcd;
mod fault_proxy;
mod hosts;
pub mod serve;

pub use emulators::{AZURITE_KEY, Azurite, S3Server};
pub use etcd::Etcd;
pub use fault_proxy::FaultProxy;
pub use hosts::Hosts;

/// Whether every test must run in full (`KVTIER_REQUIRE_ALL=1`, which scripts/test.sh and
/// so CI set): a test whose dependency is missing then fails instead of skipping or
/// falling back to a weaker leg.
pub fn require_all() -> bool {
    std::env::var("KVTIER_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

/// A TCP port free at the moment (for configs that must name theirs), below Linux's
/// ephemeral range (32768 and up, where the OS puts every `:0` listener and outgoing
/// connection): a port the OS handed out could be taken by another test's node before
/// ours binds it (CI saw it); one picked here only by another pick (1 in 12,000).
pub fn free_port() -> u16 {
    use std::hash::BuildHasher;
    loop {
        let random = std::hash::RandomState::new().hash_one(std::time::Instant::now());
        let port = 20_000 + (random % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Deterministic bytes for block `i` of length `len`.
pub fn pattern(i: u64, len: usize) -> bytes::Bytes {
    let mut state = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect::<Vec<u8>>()
        .into()
}
