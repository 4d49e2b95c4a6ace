//! kvtier's fixtures for tests and benchmarks (never a dependency of the product): hosts in
//! network namespaces that can be cut off, a one-member etcd, and `kvtier serve` as a
//! process. (Azurite, moto and the
//! fault proxy are in `kvtier_tiers::conformance`.)

mod etcd;
mod hosts;
pub mod serve;

pub use etcd::Etcd;
pub use hosts::Hosts;

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
