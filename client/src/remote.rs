//! A [`Tier`](kvtier_tiers::Tier) backed by a kvtier server over gRPC. It lets the server run the same
//! conformance suite as every local tier, and is the seed of peer access between nodes.

use std::{collections::BTreeMap, fmt};

use futures::future::BoxFuture;
use kvtier_tiers::{Block, BlockKey, BlockMeta, Error, PutStatus, Result, Tier, TierKind, TierUsage};
use tonic::Code;

use kvtier_types::{Durability, MissReason};

use crate::{Client, ClientError, GetItem, PutItem};

/// A remote node seen as one tier.
#[derive(Debug, Clone)]
pub struct RemoteTier {
    client: Client,
    addr: String,
    max_block_size: u64,
    durability: Durability,
}

impl RemoteTier {
    /// Connects to `addr`, whose server accepts blocks up to `max_block_size` bytes.
    pub async fn connect(addr: &str, max_block_size: u64) -> std::result::Result<Self, ClientError> {
        Ok(RemoteTier {
            client: Client::connect(addr).await?,
            addr: addr.into(),
            max_block_size,
            durability: Durability::Cache,
        })
    }

    /// Durability of puts through this tier. Default [`Durability::Cache`].
    pub fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    fn error(&self, e: ClientError) -> Error {
        Error::Generic { tier: self.to_string(), source: Box::new(e) }
    }

    /// A per-block refusal as the closest tier error.
    fn refusal(&self, block: &Block, code: Code, message: String) -> Error {
        match code {
            Code::InvalidArgument => {
                Error::InvalidSize { key: block.key.to_string(), size: block.len(), max: self.max_block_size }
            }
            Code::ResourceExhausted => {
                Error::NoSpace { tier: self.to_string(), capacity: 0, used: 0, required: block.len() }
            }
            _ => Error::Generic { tier: self.to_string(), source: format!("{code}: {message}").into() },
        }
    }
}

/// Indices of `keys` grouped by namespace (requests carry one namespace each).
fn by_namespace<'a>(keys: impl Iterator<Item = &'a BlockKey>) -> BTreeMap<String, Vec<usize>> {
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, k) in keys.enumerate() {
        groups.entry(k.namespace.as_str().to_string()).or_default().push(i);
    }
    groups
}

impl fmt::Display for RemoteTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "remote({})", self.addr)
    }
}

impl Tier for RemoteTier {
    fn kind(&self) -> TierKind {
        TierKind::Remote
    }

    fn put_batch<'a>(&'a self, blocks: &'a [Block]) -> BoxFuture<'a, Vec<Result<PutStatus>>> {
        Box::pin(async move {
            let mut out: Vec<Option<Result<PutStatus>>> = blocks.iter().map(|_| None).collect();
            for (ns, idx) in by_namespace(blocks.iter().map(|b| &b.key)) {
                let items: Vec<PutItem> = idx
                    .iter()
                    .map(|&i| PutItem::new(blocks[i].key.key.as_bytes().to_vec(), blocks[i].data.clone()))
                    .collect();
                match self.client.put(&ns, &items, self.durability).await {
                    Ok(reports) => {
                        for (&i, r) in idx.iter().zip(reports) {
                            out[i] = Some(match r.result {
                                Ok(()) if r.existed => Ok(PutStatus::Existed),
                                Ok(()) => Ok(PutStatus::Stored),
                                Err((code, msg)) => Err(self.refusal(&blocks[i], code, msg)),
                            });
                        }
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        for &i in &idx {
                            out[i] = Some(Err(Error::Generic { tier: self.to_string(), source: msg.clone().into() }));
                        }
                    }
                }
            }
            out.into_iter().map(|r| r.expect("every block answered")).collect()
        })
    }

    fn get_batch<'a>(&'a self, keys: &'a [BlockKey]) -> BoxFuture<'a, Vec<Result<Option<Block>>>> {
        Box::pin(async move {
            let mut out: Vec<Option<Result<Option<Block>>>> = keys.iter().map(|_| None).collect();
            for (ns, idx) in by_namespace(keys.iter()) {
                let wire: Vec<Vec<u8>> = idx.iter().map(|&i| keys[i].key.as_bytes().to_vec()).collect();
                match self.client.get(&ns, &wire).await {
                    Ok(items) => {
                        for (&i, item) in idx.iter().zip(items) {
                            out[i] = Some(match item {
                                GetItem::Hit { data, crc32c, .. } => {
                                    Ok(Some(Block::with_crc32c(keys[i].clone(), data, crc32c)))
                                }
                                GetItem::Miss { reason: MissReason::NotFound, .. } => Ok(None),
                                GetItem::Miss { reason: MissReason::ChecksumMismatch, message } => {
                                    Err(Error::ChecksumMismatch {
                                        tier: self.to_string(),
                                        key: keys[i].to_string(),
                                        location: message,
                                        expected: 0,
                                        actual: 0,
                                    })
                                }
                                GetItem::Miss { message, .. } => {
                                    Err(Error::Generic { tier: self.to_string(), source: message.into() })
                                }
                            });
                        }
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        for &i in &idx {
                            out[i] = Some(Err(Error::Generic { tier: self.to_string(), source: msg.clone().into() }));
                        }
                    }
                }
            }
            out.into_iter().map(|r| r.expect("every key answered")).collect()
        })
    }

    fn contains_batch<'a>(&'a self, keys: &'a [BlockKey]) -> BoxFuture<'a, Result<Vec<bool>>> {
        Box::pin(async move {
            let mut present = Vec::with_capacity(keys.len());
            for k in keys {
                let found = self
                    .client
                    .lookup(k.namespace.as_str(), &[k.key.as_bytes().to_vec()])
                    .await
                    .map_err(|e| self.error(e))?;
                present.push(!found.is_empty());
            }
            Ok(present)
        })
    }

    fn delete_batch<'a>(&'a self, keys: &'a [BlockKey]) -> BoxFuture<'a, Vec<Result<bool>>> {
        Box::pin(async move {
            let mut out: Vec<Option<Result<bool>>> = keys.iter().map(|_| None).collect();
            for (ns, idx) in by_namespace(keys.iter()) {
                let wire: Vec<Vec<u8>> = idx.iter().map(|&i| keys[i].key.as_bytes().to_vec()).collect();
                match self.client.delete(&ns, &wire).await {
                    Ok(deleted) => idx.iter().zip(deleted).for_each(|(&i, d)| out[i] = Some(Ok(d))),
                    Err(e) => {
                        let msg = e.to_string();
                        idx.iter().for_each(|&i| {
                            out[i] = Some(Err(Error::Generic { tier: self.to_string(), source: msg.clone().into() }))
                        });
                    }
                }
            }
            out.into_iter().map(|r| r.expect("every key answered")).collect()
        })
    }

    fn usage(&self) -> BoxFuture<'_, Result<TierUsage>> {
        Box::pin(async move {
            let s = self.client.stats().await.map_err(|e| self.error(e))?;
            Ok(s.tiers.iter().fold(TierUsage::default(), |u, t| TierUsage {
                // Blob reports an unbounded capacity (u64::MAX).
                capacity: u.capacity.saturating_add(t.capacity_bytes),
                used: u.used.saturating_add(t.used_bytes),
                blocks: u.blocks.saturating_add(t.blocks),
            }))
        })
    }

    fn blocks(&self) -> BoxFuture<'_, Result<Vec<BlockMeta>>> {
        Box::pin(async move { Err(Error::Unsupported { tier: self.to_string(), what: "listing every block".into() }) })
    }

    fn eviction_candidates(&self, _size: u64, _max: usize) -> Vec<BlockKey> {
        Vec::new()
    }
}
