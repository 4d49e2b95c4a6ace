//! The reference tier: a plain map under a mutex, bounded by a byte capacity.
//!
//! It is what the conformance suite's expectations mean in the simplest possible code, and
//! a stand-in where a test needs a tier but not a medium.

use std::{collections::HashMap, fmt};

use futures::future::BoxFuture;
use parking_lot::Mutex;

use crate::{Block, BlockKey, BlockMeta, Error, PutStatus, Result, Tier, TierKind, TierUsage, human_bytes};

/// A bounded in-memory tier. Usage counts block bytes exactly (no slack).
#[derive(Debug)]
pub struct MemoryTier {
    capacity: u64,
    max_block_size: u64,
    state: Mutex<(HashMap<BlockKey, Block>, u64)>,
}

impl MemoryTier {
    /// A tier holding at most `capacity` bytes, refusing blocks over `max_block_size`.
    pub fn new(capacity: u64, max_block_size: u64) -> Self {
        MemoryTier { capacity, max_block_size, state: Mutex::new((HashMap::new(), 0)) }
    }

    fn put_one(&self, block: &Block) -> Result<PutStatus> {
        crate::check_block_size(&block.key, block.len(), self.max_block_size)?;
        let mut st = self.state.lock();
        if st.0.contains_key(&block.key) {
            return Ok(PutStatus::Existed);
        }
        if st.1 + block.len() > self.capacity {
            return Err(Error::NoSpace {
                tier: self.to_string(),
                capacity: self.capacity,
                used: st.1,
                required: block.len(),
            });
        }
        st.1 += block.len();
        st.0.insert(block.key.clone(), block.clone());
        Ok(PutStatus::Stored)
    }
}

impl fmt::Display for MemoryTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "memory({})", human_bytes(self.capacity))
    }
}

impl Tier for MemoryTier {
    fn kind(&self) -> TierKind {
        TierKind::Memory
    }

    fn put_batch<'a>(&'a self, blocks: &'a [Block]) -> BoxFuture<'a, Vec<Result<PutStatus>>> {
        Box::pin(async move { blocks.iter().map(|b| self.put_one(b)).collect() })
    }

    fn get_batch<'a>(&'a self, keys: &'a [BlockKey]) -> BoxFuture<'a, Vec<Result<Option<Block>>>> {
        Box::pin(async move {
            let st = self.state.lock();
            keys.iter().map(|k| Ok(st.0.get(k).cloned())).collect()
        })
    }

    fn contains_batch<'a>(&'a self, keys: &'a [BlockKey]) -> BoxFuture<'a, Result<Vec<bool>>> {
        Box::pin(async move {
            let st = self.state.lock();
            Ok(keys.iter().map(|k| st.0.contains_key(k)).collect())
        })
    }

    fn delete_batch<'a>(&'a self, keys: &'a [BlockKey]) -> BoxFuture<'a, Vec<Result<bool>>> {
        Box::pin(async move {
            let mut st = self.state.lock();
            keys.iter()
                .map(|k| {
                    let removed = st.0.remove(k);
                    if let Some(b) = &removed {
                        st.1 -= b.len();
                    }
                    Ok(removed.is_some())
                })
                .collect()
        })
    }

    fn usage(&self) -> BoxFuture<'_, Result<TierUsage>> {
        let st = self.state.lock();
        let usage = TierUsage { capacity: self.capacity, used: st.1, blocks: st.0.len() as u64 };
        Box::pin(async move { Ok(usage) })
    }

    fn blocks(&self) -> BoxFuture<'_, Result<Vec<BlockMeta>>> {
        Box::pin(async move {
            let st = self.state.lock();
            Ok(st
                .0
                .values()
                .map(|b| BlockMeta { key: b.key.clone(), len: b.len(), crc32c: b.crc32c, durable: b.durable })
                .collect())
        })
    }

    fn eviction_candidates(&self, _size: u64, max: usize) -> Vec<BlockKey> {
        self.state.lock().0.keys().take(max).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::conformance;

    #[test_log::test(tokio::test)]
    async fn conformance_suite() {
        let subject = conformance::Subject::new(|| {
            Box::pin(async { Ok(Arc::new(MemoryTier::new(4 << 20, 1 << 20)) as Arc<dyn Tier>) })
        })
        .max_block(1 << 20);
        conformance::run_all(&subject).await;
    }
}
