//! Counting what the node does: per-operation counters and the `Stats` snapshot built
//! from them (so `kvtier stat` and `/metrics` never disagree).

use std::time::Instant;

use crate::NodeError;
use kvtier_tiers::{BlockKey, Namespace, PutStatus, TierKind};

use super::{
    Inner, MissReason, PutOutcome, Stats, TierStats,
    namespaces::{self, Counted},
};

impl Inner {
    pub(super) fn count_put(&self, namespace: &Namespace, result: &Result<PutOutcome, NodeError>) {
        if result.is_ok() {
            self.namespaces.count(&self.metrics, namespace, Counted::Put);
        }
        let label = match result {
            Ok(PutOutcome { status: PutStatus::Stored, .. }) => "stored",
            Ok(PutOutcome { status: PutStatus::Existed, .. }) => "existed",
            Err(_) => "error",
        };
        self.metrics.puts.with_label_values(&[label]).inc();
    }

    pub(super) fn count_hit(&self, key: &BlockKey, tier: TierKind, len: u64, started: Instant) {
        self.namespaces.count(&self.metrics, &key.namespace, Counted::Hit { bytes: len });
        self.metrics.hits.with_label_values(&[tier.as_str()]).inc();
        self.metrics.bytes_read.with_label_values(&[tier.as_str()]).inc_by(len);
        let op = match tier {
            TierKind::Cpu => "get_cpu",
            TierKind::Ssd => "get_ssd",
            _ => "get_other",
        };
        let took = started.elapsed();
        self.metrics.latency.with_label_values(&[op]).observe(took.as_secs_f64());
        self.read_speeds.observe(tier, len, took);
    }

    pub(super) fn count_miss(&self, key: &BlockKey, reason: MissReason) {
        self.namespaces.count(&self.metrics, &key.namespace, Counted::Miss);
        let label = match reason {
            MissReason::NotFound => "not_found",
            MissReason::ChecksumMismatch => "checksum_mismatch",
            MissReason::Error => "error",
        };
        self.metrics.misses.with_label_values(&[label]).inc();
    }

    pub(super) async fn stats(&self) -> Stats {
        let m = &self.metrics;
        let mut tiers = Vec::new();
        for tier in self.tiers() {
            let label = tier.kind().as_str();
            let usage = tier.usage().await.unwrap_or_default();
            tiers.push(TierStats {
                tier: tier.kind(),
                name: tier.to_string(),
                capacity_bytes: usage.capacity,
                used_bytes: usage.used,
                blocks: usage.blocks,
                hits: m.hits.with_label_values(&[label]).get(),
                bytes_read: m.bytes_read.with_label_values(&[label]).get(),
                bytes_written: m.bytes_written.with_label_values(&[label]).get(),
                evictions: m.evictions.with_label_values(&[label]).get(),
            });
        }
        use prometheus::core::Collector;
        let sum = |c: &prometheus::IntCounterVec| -> u64 {
            c.collect().iter().flat_map(|f| f.get_metric()).map(|m| m.get_counter().value() as u64).sum()
        };
        let hits = sum(&m.hits);
        let misses = sum(&m.misses);
        Stats {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_seconds: self.started.elapsed().as_secs(),
            tiers,
            index_blocks: self.index.len() as u64,
            puts: m.puts.with_label_values(&["stored"]).get() + m.puts.with_label_values(&["existed"]).get(),
            gets: hits + misses,
            hits,
            misses,
            demotions: sum(&m.demotions),
            promotions: sum(&m.promotions),
            checksum_failures: sum(&m.checksum_failures),
            dropped: m.dropped.get(),
            unflushed_bytes: self.index.unflushed(),
            flush_queue: self.flusher.as_ref().map_or(0, |f| f.backlog().0 as u64),
            flushed_blocks: m.flushed_blocks.get(),
            namespaces: namespaces::snapshot(m),
        }
    }
}
