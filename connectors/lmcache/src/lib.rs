//! LMCache integration on the server side: its keys as kvtier block keys, the header kvtier
//! stores in front of its chunks, and its `lm://` wire protocol.
//!
//! The Python package's connectors (`kvtier.lmcache`) use the same key mapping and header
//! (through `kvtier._native`), so a chunk stored through any path is found through every
//! other.

pub mod keys;
mod server;

pub use server::{LmSettings, serve};
pub mod wire;
