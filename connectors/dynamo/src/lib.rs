//! NVIDIA Dynamo's KVBM G4 (object) tier against kvtier. This crate builds Dynamo's own G4
//! client (`kvbm-engine`, pinned) outside kvtier's workspace, so that its tests run against
//! a `kvtier serve` with `[s3]` (scripts/dynamo.sh; server/tests/dynamo.rs), and a native
//! G4 client on kvtier's own protocol: [`KvtierObjectBlockClient`] and [`KvtierLockManager`],
//! what kvtier proposes to Dynamo as `[leader.object.client] type = "kvtier"`
//! (docs/connectors.md).

mod client;
mod lock;

pub use client::{KvtierConfig, KvtierObjectBlockClient};
pub use kvtier_client::Durability;
pub use lock::KvtierLockManager;
