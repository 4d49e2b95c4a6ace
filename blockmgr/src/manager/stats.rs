//! Counting what the node does: per-operation counters and the `Stats` snapshot built
//! from them (so `kvtier stat` and `/metrics` never disagree).

use std::time::Instant;

use crate::NodeError;
use kvtier_tiers::{BlockKey, Namespace, PutStatus, TierKind};

use super::{
    Inner, Manager, MissReason, PutOutcome, Stats, TierStats,
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

impl Manager {
    /// `None` when healthy; else why the node is degraded: its oldest write-back byte has
    /// waited for Blob longer than `blob.degraded_after` (a flush or an export stuck, Blob
    /// down), which the metrics alone let pass unnoticed.
    pub fn degraded(&self) -> Option<String> {
        let inner = &self.inner;
        let oldest = inner.index.unflushed_summary().oldest?.elapsed();
        let bound = inner.config.blob.degraded_after;
        (oldest > bound).then(|| {
            let exports = inner.exports().map_or((0, Default::default()), |e| e.backlog());
            format!(
                "the oldest write-back byte has waited {:.0}s for Blob (blob.degraded_after {}s); {} bytes \
                 unflushed, {} exports queued (the oldest {:.0}s)",
                oldest.as_secs_f64(),
                bound.as_secs(),
                inner.index.unflushed(),
                exports.0,
                exports.1.as_secs_f64()
            )
        })
    }

    /// Usage and counters.
    pub async fn stats(&self) -> Stats {
        self.inner.stats().await
    }

    /// Refreshes the tier gauges (before a Prometheus scrape).
    pub async fn refresh_gauges(&self) {
        let inner = &self.inner;
        for tier in inner.tiers() {
            if let Ok(u) = tier.usage().await {
                let label = tier.kind().as_str();
                let capacity = i64::try_from(u.capacity).unwrap_or(i64::MAX); // Blob: unbounded
                inner.metrics.tier_capacity.with_label_values(&[label]).set(capacity);
                inner.metrics.tier_used.with_label_values(&[label]).set(u.used as i64);
                inner.metrics.tier_blocks.with_label_values(&[label]).set(u.blocks as i64);
            }
        }
        inner.metrics.index_blocks.set(inner.index.len() as i64);
        inner.metrics.background_tasks.set(inner.tasks.running() as i64);
        inner.metrics.blob_deletes_held.set(inner.blob_deletes.len() as i64);
        inner.metrics.unflushed_bytes.set(inner.index.unflushed() as i64);
        if let Some(flusher) = &inner.flusher {
            let (queued, lag) = flusher.backlog();
            inner.metrics.flush_queue.set(queued as i64);
            inner.metrics.flush_lag.set(lag.as_secs_f64());
        }
        if let Some(exports) = inner.exports() {
            let (queued, oldest) = exports.backlog();
            inner.metrics.exports_queued.set(queued as i64);
            inner.metrics.export_oldest.set(oldest.as_secs_f64());
        }
        let unflushed = inner.index.unflushed_summary();
        inner.metrics.unflushed_oldest.set(unflushed.oldest.map_or(0.0, |t| t.elapsed().as_secs_f64()));
        // Namespaces that drained since the last scrape go back to no series at all.
        inner.metrics.namespace_unflushed_bytes.reset();
        let mut by_label: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
        for (ns, bytes) in &unflushed.by_namespace {
            *by_label.entry(inner.namespaces.label(ns)).or_default() += bytes;
        }
        for (label, bytes) in by_label {
            inner.metrics.namespace_unflushed_bytes.with_label_values(&[label]).set(bytes as i64);
        }
        if let Some(blob) = &inner.blob {
            // The tier counts; Prometheus counters only go up, so add what is new.
            let r = blob.requests();
            let m = &inner.metrics;
            let catch_up = |c: prometheus::IntCounter, total: u64| c.inc_by(total.saturating_sub(c.get()));
            catch_up(m.blob_requests.with_label_values(&["put"]), r.puts);
            catch_up(m.blob_requests.with_label_values(&["get"]), r.gets);
            catch_up(m.blob_requests.with_label_values(&["other"]), r.other);
            catch_up(m.blob_bytes.with_label_values(&["put"]), r.put_bytes);
            catch_up(m.blob_bytes.with_label_values(&["get"]), r.get_bytes);
        }
    }
}
