//! kvtier's block manager: one node's tiers behind a batched API, served over gRPC.
//!
//! - [`Manager`]: tier policy (admission/eviction per namespace, demotion, promotion, single-flight
//!   reads) over a [`kvtier_tiers::CpuTier`] and an optional SSD tier.
//! - [`server`]: the `kvtier.v1.BlockStore` gRPC service on TCP and a Unix socket, plus
//!   `/metrics` and `/healthz` over HTTP.
//! - [`Client`]: the Rust client the CLI, benchmarks and tests use.
//! - [`Config`]: the `kvtier.toml` file.

/// The Rust client of a kvtier node.
pub mod client;
pub mod cluster;
/// `kvtier.toml`.
pub mod config;
mod error;
mod flight;
/// Where each block lives.
pub mod index;
pub mod lmcache;
mod manager;
mod metrics;
pub mod objects;
mod policy;
/// A kvtier node seen as a [`kvtier_tiers::Tier`].
pub mod remote;
pub mod s3;
/// `kvtier serve`.
pub mod server;
/// The shared-memory data plane for clients on the server's host.
pub mod shm;
/// Conversions to and from the wire types.
pub mod wire;

pub use client::{Client, ClientError, ClientTls, GetItem, ObjectInfo, ObjectRange, PutItem, PutReport};
pub use config::{ByteSize, Config};
pub use error::Error;
pub use manager::{
    ArenaPin, Durability, GetOutcome, Looked, Manager, MissReason, NamespaceStats, PinOutcome, Presence, PutOutcome,
    PutWriter, ResyncReport, Stats, TierStats,
};
pub use metrics::Metrics;
pub use policy::PolicyKind;
pub use wire::Outcome;
