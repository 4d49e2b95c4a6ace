//! A node's blocks behind one small trait, whichever way they are reached: [`BlockStore`],
//! batched like [`kvtier_tiers::Tier`] one layer down, is implemented by the [`Manager`]
//! (one node, or the cluster it is a member of: its puts, gets and deletes go to the
//! owners) and by the [`Client`] (a node over gRPC). One conformance suite
//! (`conformance`, behind the feature of that name) holds each of them to the same
//! behaviour: a caller that swaps one for the other sees no difference but speed.

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

use crate::NodeError;
use bytes::Bytes;
use futures::future::BoxFuture;
use kvtier_tiers::{Block, BlockKey, Error as TierError, TierKind};
use tonic::Code;

use crate::{Client, ClientError, Durability, GetItem, GetOutcome, Manager, PutItem, Stats};

/// What went wrong in a [`BlockStore`] call, by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The request itself is wrong (a malformed key or namespace, a block over the size
    /// limit): sending it again fails again.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The store cannot take it now (backpressure, a quorum short, a member out of reach, a
    /// connection lost): worth retrying later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Anything else (a tier failed).
    #[error("{0}")]
    Failed(String),
}

impl StoreError {
    /// Whether the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Classed by the gRPC code the node answers it with (`wire::code_of`): a caller of the
/// node in process and one over gRPC see the same class for the same failure.
impl From<NodeError> for StoreError {
    fn from(e: NodeError) -> Self {
        of_code(crate::wire::code_of(&e), e.to_string())
    }
}

impl From<TierError> for StoreError {
    fn from(e: TierError) -> Self {
        of_code(crate::wire::code_of(&e), e.to_string())
    }
}

impl From<ClientError> for StoreError {
    fn from(e: ClientError) -> Self {
        match &e {
            ClientError::Status(s) => of_code(s.code(), e.to_string()),
            _ if e.is_transient() => StoreError::Unavailable(e.to_string()),
            _ => StoreError::Failed(e.to_string()),
        }
    }
}

/// The store error a gRPC status code stands for (retryable as the client judges it).
fn of_code(code: Code, message: String) -> StoreError {
    match code {
        Code::InvalidArgument | Code::OutOfRange => StoreError::Invalid(message),
        code if kvtier_client::transient_code(code) => StoreError::Unavailable(message),
        _ => StoreError::Failed(message),
    }
}

/// Blocks by namespace and key, batched: every call answers per item, in order.
pub trait BlockStore: Send + Sync {
    /// Stores each block of `namespace` with `durability`. A key already held keeps the
    /// bytes it has (blocks are named by their contents' provenance: a second put of a key
    /// is a no-op, as in vLLM's and LMCache's stores).
    fn put_batch<'a>(
        &'a self,
        namespace: &'a str,
        blocks: &'a [PutItem],
        durability: Durability,
    ) -> BoxFuture<'a, Result<Vec<Result<(), StoreError>>, StoreError>>;

    /// Reads each key: its bytes, checked against their CRC-32C, or `None` (not held, or
    /// no copy left that passes its checksum).
    fn get_batch<'a>(
        &'a self,
        namespace: &'a str,
        keys: &'a [Vec<u8>],
    ) -> BoxFuture<'a, Result<Vec<Option<Bytes>>, StoreError>>;

    /// Removes each key, answering whether it was held.
    fn delete_batch<'a>(
        &'a self,
        namespace: &'a str,
        keys: &'a [Vec<u8>],
    ) -> BoxFuture<'a, Result<Vec<bool>, StoreError>>;

    /// The tier of each key of the longest held prefix of `keys` (a prefix chain's lookup).
    fn lookup<'a>(
        &'a self,
        namespace: &'a str,
        keys: &'a [Vec<u8>],
    ) -> BoxFuture<'a, Result<Vec<TierKind>, StoreError>>;

    /// Counts of blocks and bytes, per tier and namespace.
    fn stats(&self) -> BoxFuture<'_, Result<Stats, StoreError>>;
}

/// The keys of one namespace, parsed.
fn parse_keys(namespace: &str, keys: &[Vec<u8>]) -> Result<Vec<BlockKey>, StoreError> {
    keys.iter().map(|k| BlockKey::parse(namespace, k).map_err(StoreError::from)).collect()
}

impl BlockStore for Manager {
    fn put_batch<'a>(
        &'a self,
        namespace: &'a str,
        blocks: &'a [PutItem],
        durability: Durability,
    ) -> BoxFuture<'a, Result<Vec<Result<(), StoreError>>, StoreError>> {
        Box::pin(async move {
            let puts = blocks.iter().map(|item| async move {
                let key = BlockKey::parse(namespace, &item.key)?;
                self.put(Block::new(key, item.data.clone()), durability).await?;
                Ok(())
            });
            Ok(futures::future::join_all(puts).await)
        })
    }

    fn get_batch<'a>(
        &'a self,
        namespace: &'a str,
        keys: &'a [Vec<u8>],
    ) -> BoxFuture<'a, Result<Vec<Option<Bytes>>, StoreError>> {
        Box::pin(async move {
            let keys = parse_keys(namespace, keys)?;
            let gets = keys.iter().map(|key| async move {
                match self.get(key).await {
                    GetOutcome::Hit { block, .. } => Some(block.data),
                    GetOutcome::Miss { .. } => None,
                }
            });
            Ok(futures::future::join_all(gets).await)
        })
    }

    fn delete_batch<'a>(
        &'a self,
        namespace: &'a str,
        keys: &'a [Vec<u8>],
    ) -> BoxFuture<'a, Result<Vec<bool>, StoreError>> {
        Box::pin(async move {
            let keys = parse_keys(namespace, keys)?;
            Ok(futures::future::join_all(keys.iter().map(|key| self.delete(key))).await)
        })
    }

    fn lookup<'a>(
        &'a self,
        namespace: &'a str,
        keys: &'a [Vec<u8>],
    ) -> BoxFuture<'a, Result<Vec<TierKind>, StoreError>> {
        Box::pin(async move { Ok(Manager::lookup(self, &parse_keys(namespace, keys)?)) })
    }

    fn stats(&self) -> BoxFuture<'_, Result<Stats, StoreError>> {
        Box::pin(async move { Ok(Manager::stats(self).await) })
    }
}

impl BlockStore for Client {
    fn put_batch<'a>(
        &'a self,
        namespace: &'a str,
        blocks: &'a [PutItem],
        durability: Durability,
    ) -> BoxFuture<'a, Result<Vec<Result<(), StoreError>>, StoreError>> {
        Box::pin(async move {
            let reports = self.put(namespace, blocks, durability).await?;
            Ok(reports.into_iter().map(|r| r.result.map_err(|(code, message)| of_code(code, message))).collect())
        })
    }

    fn get_batch<'a>(
        &'a self,
        namespace: &'a str,
        keys: &'a [Vec<u8>],
    ) -> BoxFuture<'a, Result<Vec<Option<Bytes>>, StoreError>> {
        Box::pin(async move {
            let items = self.get(namespace, keys).await?;
            Ok(items
                .into_iter()
                .map(|item| match item {
                    GetItem::Hit { data, .. } => Some(data),
                    GetItem::Miss { .. } => None,
                })
                .collect())
        })
    }

    fn delete_batch<'a>(
        &'a self,
        namespace: &'a str,
        keys: &'a [Vec<u8>],
    ) -> BoxFuture<'a, Result<Vec<bool>, StoreError>> {
        Box::pin(async move { Ok(self.delete(namespace, keys).await?) })
    }

    fn lookup<'a>(
        &'a self,
        namespace: &'a str,
        keys: &'a [Vec<u8>],
    ) -> BoxFuture<'a, Result<Vec<TierKind>, StoreError>> {
        Box::pin(async move { Ok(Client::lookup(self, namespace, keys).await?) })
    }

    fn stats(&self) -> BoxFuture<'_, Result<Stats, StoreError>> {
        Box::pin(async move { Ok(Client::stats(self).await?) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Metrics;

    /// A failure is classed the same in process as over gRPC: retryable when the store is
    /// busy or short of members, invalid when the request is, failed otherwise.
    #[test]
    fn failures_are_classed_by_what_the_caller_should_do() {
        let busy = NodeError::Backpressure { tier: "ssd".into(), waiting: 2, limit: 1, cause: None };
        let short = NodeError::Quorum { key: "k".into(), stored: 1, wanted: 2, failures: "n2: down".into() };
        let undone = NodeError::NotCommitted { what: "a/b".into(), cause: "undone".into() };
        let closed = NodeError::Closed { what: "the node".into() };
        for e in [busy, short, undone, closed] {
            let message = e.to_string();
            let classed = StoreError::from(e);
            assert!(classed.is_retryable(), "{classed:?}");
            let over_grpc = StoreError::from(ClientError::Status(tonic::Status::unavailable(message)));
            assert!(over_grpc.is_retryable(), "{over_grpc:?}");
        }
        let bad = BlockKey::parse("ns", b"").unwrap_err();
        assert!(matches!(StoreError::from(bad), StoreError::Invalid(_)));
        let status = tonic::Status::invalid_argument("key is 0 bytes");
        assert!(matches!(StoreError::from(ClientError::Status(status)), StoreError::Invalid(_)));
        let damaged = NodeError::Tier(TierError::config("ssd.capacity", "changed"));
        assert!(matches!(StoreError::from(damaged), StoreError::Failed(_)));
    }

    /// One node (memory and SSD) through the manager itself.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_single_node_passes_the_store_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::small_for_tests(dir.path());
        let node = Manager::open(&config, Metrics::new()).await.unwrap();
        conformance::run(&node, "conformance/node", config.max_block_size.0).await;
        node.shutdown().await;
    }
}
