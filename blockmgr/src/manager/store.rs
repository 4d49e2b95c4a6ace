//! The put path inside the node: size and durability checks, reserving arena slots for
//! streamed puts, placing a new block in memory or on SSD, and recovering the index.

use std::sync::{Arc, atomic::Ordering};

use crate::NodeError;
use kvtier_tiers::{Block, BlockKey, Error as TierError, PutStatus, Tier, TierExt, TierKind};

use super::{
    Durability, Inner, PutOutcome, PutWriter, movement,
    writer::{ReservedBytes, Sink},
};
use crate::{
    Error,
    index::{Entry, TierSet},
};

impl Inner {
    pub(super) fn check_size(&self, key: &BlockKey, len: u64) -> Result<(), NodeError> {
        Ok(kvtier_tiers::check_block_size(key, len, self.limits.max_block_size)?)
    }

    pub(super) fn check_durability(&self, key: &BlockKey, durability: Durability) -> Result<(), NodeError> {
        let refuse = |what: String| Err(NodeError::Tier(TierError::Unsupported { tier: "manager".into(), what }));
        if durability.on_disk() && self.ssd.is_none() {
            return refuse(format!("durability {} needs an SSD tier (ssd.enabled = false)", durability.as_str()));
        }
        if durability == Durability::WriteBack {
            if self.flusher.is_none() {
                return refuse("durability write_back needs a Blob tier (blob.url is empty)".into());
            }
            if !self.flushable(key) {
                return refuse(format!(
                    "durability write_back: namespace {} is cache_only in [namespaces]; its blocks never go to Blob",
                    key.namespace
                ));
            }
        }
        Ok(())
    }

    /// Transfer-budget permits for `len` bytes: a block larger than the whole budget takes
    /// all of it (it then moves alone) rather than waiting forever.
    pub(super) fn budget_permits(&self, len: u64) -> u32 {
        len.min(self.limits.transfer_budget).min(u32::MAX as u64) as u32
    }

    pub(super) fn tiers(&self) -> Vec<Arc<dyn Tier>> {
        let mut tiers: Vec<Arc<dyn Tier>> = vec![self.cpu.clone()];
        tiers.extend(self.ssd.clone());
        tiers.extend(self.blob.clone().map(|b| b as Arc<dyn Tier>));
        tiers
    }

    pub(super) fn existed(&self, e: Entry) -> PutOutcome {
        PutOutcome { status: PutStatus::Existed, tier: e.tiers.fastest().unwrap_or(TierKind::Cpu) }
    }

    /// A put of `key`, already here as `e`, with `durability` and bytes of CRC `crc32c`
    /// (its lock held). A no-op, unless the put asks more than the copy here has: a copy on
    /// disk, or a write-back one, where a cache copy was (a read replica, or a writer's
    /// copy, on a node that became an owner; the copy an owner is handed or sent). Then the
    /// copy here is made that: written to SSD, marked write-back and queued for its flush.
    /// Other bytes under the same key (another version) are left alone.
    pub(super) async fn existing(
        &self,
        key: &BlockKey,
        e: Entry,
        durability: Durability,
        crc32c: u32,
    ) -> Result<PutOutcome, NodeError> {
        let to_disk = durability.on_disk() && self.ssd.is_some() && !e.tiers.has(TierKind::Ssd);
        let to_write_back = durability == Durability::WriteBack
            && !e.durable
            && !e.tiers.has(TierKind::Blob)
            && self.flusher.is_some()
            && self.flushable(key);
        if e.crc32c == crc32c && e.cache && durability.on_disk() {
            // Promised a disk copy now: it is never moved off SSD again.
            self.index.insert(key.clone(), Entry { cache: false, ..e });
        }
        if e.crc32c != crc32c || !(to_disk || to_write_back) {
            return Ok(self.existed(e));
        }
        let block = match self.cpu.get(key).await? {
            Some(block) => block,
            None => match &self.ssd {
                Some(ssd) => match ssd.get(key).await? {
                    Some(block) => block,
                    None => return Ok(self.existed(e)),
                },
                None => return Ok(self.existed(e)),
            },
        };
        let durable = e.durable || to_write_back;
        if e.tiers.has(TierKind::Ssd) {
            // Only the write-back mark is missing: the slot header records it (a restart
            // must flush it), so the copy is written again with it.
            let ssd = self.ssd.as_ref().expect("indexed on SSD implies an SSD tier");
            ssd.delete(key).await?;
            if let Err(err) = self.write_ssd(block.with_durable(true)).await {
                self.index.set_tiers(key, e.tiers.without(TierKind::Ssd));
                return Err(err);
            }
        } else {
            self.write_ssd(block.with_durable(durable)).await?;
        }
        let tiers = e.tiers.with(TierKind::Ssd);
        self.index.insert(key.clone(), Entry { durable, tiers, cache: false, ..e });
        if to_write_back {
            self.queue_new_flush(key.clone(), true);
        }
        Ok(PutOutcome { status: PutStatus::Stored, tier: tiers.fastest().unwrap_or(TierKind::Ssd) })
    }

    /// Rebuilds the index from the slow tier's blocks after a restart.
    pub(super) async fn rebuild_index(&self) -> Result<(), Error> {
        if let Some(ssd) = &self.ssd {
            let blocks = ssd.blocks().await?;
            for b in &blocks {
                let entry = Entry { durable: b.durable, ..Entry::new(b.len, b.crc32c, TierSet::of(TierKind::Ssd)) };
                self.index.insert(b.key.clone(), entry);
                // (Their order before the restart is not on disk: they start it afresh.)
                self.policy.ssd_admit(b.key.clone(), ssd.footprint(b.len), false);
            }
            tracing::info!(blocks = blocks.len(), tier = %ssd, "index rebuilt");
        }
        Ok(())
    }

    pub(super) fn try_reserve(&self, key: &BlockKey, len: u64) -> Option<Sink> {
        let footprint = self.cpu.footprint(len);
        let before = self.reserved.fetch_add(footprint, Ordering::Relaxed);
        let guard = ReservedBytes(self.reserved.clone(), footprint);
        if before + footprint > self.limits.reserve_limit {
            return None;
        }
        self.cpu.reserve(key, len).ok().map(|r| Sink::Arena(r, guard))
    }

    pub(super) async fn finish(&self, writer: PutWriter) -> Result<PutOutcome, NodeError> {
        let PutWriter { key, len, expected_crc32c, durability, crc32c, written, sink, .. } = writer;
        if written != len {
            return Err(NodeError::Tier(TierError::InvalidSize { key: key.to_string(), size: written, max: len }));
        }
        if let Some(expected) = expected_crc32c.filter(|&e| e != crc32c) {
            return Err(NodeError::Tier(TierError::ChecksumMismatch {
                tier: "ingress".into(),
                key: key.to_string(),
                location: "the bytes received".into(),
                expected,
                actual: crc32c,
            }));
        }
        // Before the key's lock: the flush that makes room takes key locks.
        let admitted = self.admit(durability, len).await?;
        let _guard = self.locks.lock(&key).await;
        if let Some(e) = self.index.get(&key) {
            return self.existing(&key, e, durability, crc32c).await;
        }
        match sink {
            Sink::Arena(reservation, _reserved) => {
                let durable = durability == Durability::WriteBack;
                self.cpu.commit(key.clone(), reservation, crc32c)?;
                let cache = durability == Durability::Cache;
                let entry = Entry { durable, cache, ..Entry::new(len, crc32c, TierSet::of(TierKind::Cpu)) };
                self.index.insert(key.clone(), entry);
                drop(admitted); // the index counts it now
                self.admitted(&key, len);
                if durability.on_disk() {
                    let block = self.cpu.get(&key).await?.expect("committed under our lock");
                    if let Err(e) = self.write_ssd(block.with_durable(durable)).await {
                        self.index.remove(&key);
                        self.policy.forget(&key);
                        let _ = self.cpu.delete(&key).await;
                        return Err(e);
                    }
                    self.index.set_tiers(&key, TierSet::of(TierKind::Cpu).with(TierKind::Ssd));
                    self.queue_new_flush(key, durable);
                }
                Ok(PutOutcome { status: PutStatus::Stored, tier: TierKind::Cpu })
            }
            Sink::Heap(buf, _permit) => self.store(Block::with_crc32c(key, buf.freeze(), crc32c), durability).await,
        }
    }

    /// Places a new block (the caller holds its lock, saw it absent, and holds its room in
    /// the unflushed budget if it is write-back).
    pub(super) async fn store(&self, block: Block, durability: Durability) -> Result<PutOutcome, NodeError> {
        let (key, len, crc32c) = (block.key.clone(), block.len(), block.crc32c);
        let durable = durability == Durability::WriteBack;
        let cache = durability == Durability::Cache;
        let entry = |tiers| Entry { durable, cache, ..Entry::new(len, crc32c, tiers) };
        if durability.on_disk() {
            self.write_ssd(block.clone().with_durable(durable)).await?;
            let in_memory = self.put_cpu(&block).await;
            let tiers = TierSet::of(TierKind::Ssd);
            let tiers = if in_memory { tiers.with(TierKind::Cpu) } else { tiers };
            self.index.insert(key.clone(), entry(tiers));
            self.queue_new_flush(key, durable);
            return Ok(PutOutcome { status: PutStatus::Stored, tier: tiers.fastest().expect("ssd is set") });
        }
        if self.put_cpu(&block).await {
            self.index.insert(key, entry(TierSet::of(TierKind::Cpu)));
            return Ok(PutOutcome { status: PutStatus::Stored, tier: TierKind::Cpu });
        }
        // Memory is full: write around it.
        if self.ssd.is_none() {
            return Err(NodeError::Tier(TierError::NoSpace {
                tier: self.cpu.to_string(),
                capacity: self.cpu.capacity(),
                used: self.cpu.usage().await.map(|u| u.used).unwrap_or(0),
                required: len,
            }));
        }
        self.write_ssd(block).await?;
        self.index.insert(key, entry(TierSet::of(TierKind::Ssd)));
        Ok(PutOutcome { status: PutStatus::Stored, tier: TierKind::Ssd })
    }

    /// Copies a block into memory and admits it. False when memory is full.
    pub(super) async fn put_cpu(&self, block: &Block) -> bool {
        match self.cpu.put(block.clone()).await {
            Ok(_) => {
                self.admitted(&block.key, block.len());
                true
            }
            // The policy keeps its blocks under its capacity as they come in; a full arena is
            // slots held by puts and pins, or slab classes competing for regions.
            Err(e) if e.is_no_space() => {
                movement::reclaim_cpu(self, block.len());
                false
            }
            Err(e) => {
                tracing::warn!(key = %block.key, error = %e, "cpu put failed");
                false
            }
        }
    }

    /// Records a block of `len` bytes that just entered memory: the policy weighs it, the
    /// written-bytes counter counts it.
    pub(super) fn admitted(&self, key: &BlockKey, len: u64) {
        self.policy.admit(key.clone(), self.cpu.footprint(len));
        self.metrics.bytes_written.with_label_values(&["cpu"]).inc_by(len);
    }
}
