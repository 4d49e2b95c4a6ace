//! The Rust client of a kvtier node, with no server code: a user of it links neither the
//! node's tiers policy nor its front ends (S3, lm://), metrics or membership.
//!
//! - [`Client`]: the gRPC client (TCP, TLS or the node's Unix socket): blocks, lookups,
//!   named objects, stats. The CLI, the benchmarks, the cluster's peer transport and the
//!   Python package use it.
//! - [`shm::ShmClient`]: the shared-memory data plane, for clients on the node's host.
//! - [`RemoteTier`]: a node seen as a [`kvtier_tiers::Tier`].

mod grpc;
mod remote;
pub mod shm;

pub use grpc::*;
pub use kvtier_types::{CommitIf, Durability, Looked, MissReason, Presence, Stats};
pub use remote::RemoteTier;
