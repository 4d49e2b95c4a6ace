//! Per-namespace counters: puts, hits, misses and bytes read for each namespace, so an
//! operator sees the hit rate of each model (LMCache and vLLM map one model / layout to one
//! namespace) in `kvtier stat` and in `/metrics`.
//!
//! The counters live in the Prometheus registry (`kvtier_namespace_*_total{namespace}`),
//! which is also what `Stats` reads. Label cardinality is bounded: the first
//! [`TRACKED_NAMESPACES`] namespaces seen get their own label, later ones share `other`.

use dashmap::DashSet;
use kvtier_tiers::Namespace;
use prometheus::core::Collector;

use crate::metrics::Metrics;

use super::NamespaceStats;

/// Namespaces counted under their own name; the rest are counted as [`OTHER`].
pub(crate) const TRACKED_NAMESPACES: usize = 1024;
/// The label of namespaces beyond [`TRACKED_NAMESPACES`].
pub(crate) const OTHER: &str = "other";

/// Which namespaces have a label of their own.
#[derive(Debug, Default)]
pub(crate) struct NamespaceLabels {
    tracked: DashSet<Namespace>,
}

/// What happened to one block, as the namespace counters see it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Counted {
    Put,
    Hit { bytes: u64 },
    Miss,
}

impl NamespaceLabels {
    /// Counts `what` for `namespace`.
    pub(crate) fn count(&self, metrics: &Metrics, namespace: &Namespace, what: Counted) {
        let label = self.label(namespace);
        match what {
            Counted::Put => metrics.namespace_puts.with_label_values(&[label]).inc(),
            Counted::Hit { bytes } => {
                metrics.namespace_hits.with_label_values(&[label]).inc();
                metrics.namespace_bytes_read.with_label_values(&[label]).inc_by(bytes);
            }
            Counted::Miss => metrics.namespace_misses.with_label_values(&[label]).inc(),
        }
    }

    pub(super) fn label<'a>(&self, namespace: &'a Namespace) -> &'a str {
        if self.tracked.contains(namespace) {
            return namespace.as_str();
        }
        // A race may let a few more than the limit in; the bound is what matters.
        if self.tracked.len() < TRACKED_NAMESPACES {
            self.tracked.insert(namespace.clone());
            return namespace.as_str();
        }
        OTHER
    }
}

/// Every namespace's counters, busiest (most gets) first.
pub(crate) fn snapshot(metrics: &Metrics) -> Vec<NamespaceStats> {
    let mut by_name: std::collections::BTreeMap<String, NamespaceStats> = Default::default();
    let mut read = |vec: &prometheus::IntCounterVec, set: fn(&mut NamespaceStats, u64)| {
        for family in vec.collect() {
            for m in family.get_metric() {
                let Some(name) = m.get_label().iter().find(|l| l.name() == "namespace").map(|l| l.value().to_string())
                else {
                    continue;
                };
                let entry = by_name
                    .entry(name.clone())
                    .or_insert_with(|| NamespaceStats { namespace: name, ..Default::default() });
                set(entry, m.get_counter().value() as u64);
            }
        }
    };
    read(&metrics.namespace_puts, |s, v| s.puts = v);
    read(&metrics.namespace_hits, |s, v| s.hits = v);
    read(&metrics.namespace_misses, |s, v| s.misses = v);
    read(&metrics.namespace_bytes_read, |s, v| s.bytes_read = v);
    let mut all: Vec<NamespaceStats> = by_name.into_values().collect();
    all.sort_by(|a, b| (b.hits + b.misses).cmp(&(a.hits + a.misses)).then(a.namespace.cmp(&b.namespace)));
    all
}
