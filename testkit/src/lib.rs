//! kvtier's fixtures for tests and benchmarks (never a dependency of the product): hosts in
//! network namespaces that can be cut off, and a one-member etcd. (Azurite, moto and the
//! fault proxy are in `kvtier_tiers::conformance`.)

mod etcd;
mod hosts;

pub use etcd::Etcd;
pub use hosts::Hosts;
