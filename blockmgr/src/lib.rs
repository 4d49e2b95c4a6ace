//! kvtier's block manager: one node's tiers behind a batched API, replicated across a
//! cluster, with named objects on top. The services that expose it (gRPC, shm, `kvtier`)
//! are in `kvtier-server`; the S3 and lm:// front ends in `connectors/`.
//!
//! - [`Manager`]: one node: tier policy (admission/eviction per namespace, demotion,
//!   promotion, single-flight reads) over a [`kvtier_tiers::CpuTier`], an optional SSD tier
//!   and Blob, and its copies on the other members (replication, resync, handoff).
//! - [`cluster`]: membership, placement and the peer transport.
//! - [`Objects`]: named objects (files of any size) as blocks, a layer over the node that
//!   the node calls only through its hooks (manager/hooks.rs).
//! - [`Config`]: the `kvtier.toml` file.

mod backoff;
mod clock;
pub mod cluster;
/// `kvtier.toml`.
pub mod config;
mod error;
mod flight;
/// Where each block lives.
pub mod index;
mod keys;
mod manager;
mod metrics;
pub mod objects;
pub mod peer;
mod policy;
pub mod progress;
pub mod store;
mod tasks;
pub use kvtier_types::wire;

pub use config::{ByteSize, Config};
pub use error::Error;
/// The client's types, re-exported for the callers of both (the node uses the client as
/// its peer transport).
pub use kvtier_client::{Client, ClientError, ClientTls, GetItem, ObjectInfo, ObjectRange, PutItem, PutReport};
pub use kvtier_types::{Durability, Looked, MissReason, NamespaceStats, NodeError, Presence, Stats, TierStats};
pub use manager::{ArenaPin, GetOutcome, Manager, MemberAnswer, PinOutcome, PutOutcome, PutWriter, ResyncReport};
pub use metrics::Metrics;
pub use objects::Objects;
pub use policy::PolicyKind;
pub use store::{BlockStore, StoreError};
pub use wire::Outcome;
