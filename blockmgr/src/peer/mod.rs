//! The server side of what members ask each other (`kvtier.peer.v1.Peer`): block-level
//! upkeep (flushed notices, resync digests and listings, handoff offers) and named objects
//! (commits on a path's primary, stats, listings, deletes, chunk fetches, staging). It sits
//! above the cluster, the node and the objects layer, which it answers for; the client side
//! of the same calls is cluster/rpc.rs.

pub mod requests;
mod service;

pub use service::PeerService;
