//! kvtier's value types, shared by the client and the node: when a put is acknowledged
//! ([`Durability`]), what a get, lookup or presence check answers, a node's [`Stats`], and
//! their conversions to and from the `kvtier.v1` wire types ([`wire`]).
//!
//! The layers above: `kvtier-client` (talks to a node) and the node itself both depend on
//! this crate, and neither on the other's internals.

mod durability;
mod error;
mod stats;
mod values;
pub mod wire;

pub use durability::Durability;
pub use error::NodeError;
pub use stats::{NamespaceStats, Stats, TierStats};
pub use values::{CommitIf, Looked, MissReason, Presence};
pub use wire::Outcome;
