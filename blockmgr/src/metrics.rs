//! Prometheus metrics of one node. Counters are also what `Stats` reports, so `kvtier stat`
//! and `/metrics` never disagree.

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Every metric the node exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Where long tasks report how far they are (nowhere unless [`Metrics::with_progress`]).
    progress: std::sync::Arc<dyn crate::progress::Progress>,
    /// Requests by operation.
    pub requests: IntCounterVec,
    /// Request latency by operation (seconds).
    pub latency: HistogramVec,
    /// Blocks put, by result (`stored`, `existed`, `error`).
    pub puts: IntCounterVec,
    /// Gets served, by tier.
    pub hits: IntCounterVec,
    /// Gets not served, by reason (`not_found`, `checksum_mismatch`, `error`).
    pub misses: IntCounterVec,
    /// Block bytes read from each tier.
    pub bytes_read: IntCounterVec,
    /// Block bytes written to each tier.
    pub bytes_written: IntCounterVec,
    /// Blocks removed from a tier to make room.
    pub evictions: IntCounterVec,
    /// Blocks moved to a slower tier (`from`, `to`).
    pub demotions: IntCounterVec,
    /// Blocks copied to a faster tier after a hit (`from`, `to`).
    pub promotions: IntCounterVec,
    /// Reads issued to a tier below memory: one per key however many gets wait on it.
    pub tier_reads: IntCounterVec,
    /// Copies that failed their checksum, by tier.
    pub checksum_failures: IntCounterVec,
    /// Blocks that left the node entirely to make room or after an error.
    pub dropped: IntCounter,
    /// Blocks dropped because the block before them in a prefix chain left the node (no
    /// prefix lookup can reach them).
    pub unreachable_dropped: IntCounter,
    /// Blocks waiting to be moved out of memory or being moved.
    pub demotion_queue: IntGauge,
    /// Blocks waiting in the flush queue.
    pub flush_queue: IntGauge,
    /// The node's background tasks still running (loops, flushes, copies after a quorum,
    /// reads in flight): a number that only grows is a leak.
    pub background_tasks: IntGauge,
    /// How long the oldest block in the flush queue has waited (seconds).
    pub flush_lag: Gauge,
    /// Bytes of write-back blocks Blob does not hold yet.
    pub unflushed_bytes: IntGauge,
    /// Blocks flushed to Blob (write-back and demoted).
    pub flushed_blocks: IntCounter,
    /// Bytes flushed to Blob.
    pub flushed_bytes: IntCounter,
    /// Flush batches that failed (each is retried).
    pub flush_errors: IntCounter,
    /// Write-back puts refused by backpressure.
    pub flush_backpressure: IntCounter,
    /// Write-back blocks whose only copy was damaged before it reached Blob.
    pub lost_write_back: IntCounter,
    /// Requests to the Blob tier's store, by op (`put`, `get`, `other`).
    pub blob_requests: IntCounterVec,
    /// Bytes to and from the Blob tier's store, by direction (`put`, `get`).
    pub blob_bytes: IntCounterVec,
    /// Requests to other members, by op (`put`, `get`, `delete`) and outcome (`ok`, `error`).
    pub peer_requests: IntCounterVec,
    /// Reads other members asked this node for and it answered, by `answer`: `owner` (the
    /// bytes, as an owner), `replica` (the bytes, as a read replica), `redirect` (the read
    /// replicas to read from instead).
    pub peer_reads: IntCounterVec,
    /// Copies this node kept of blocks it read from other nodes, as read replicas.
    pub read_replicas_kept: IntCounter,
    /// Blocks put, by namespace (see `manager::namespaces` for the label's bound).
    pub namespace_puts: IntCounterVec,
    /// Gets served, by namespace.
    pub namespace_hits: IntCounterVec,
    /// Gets not served, by namespace.
    pub namespace_misses: IntCounterVec,
    /// Block bytes served, by namespace.
    pub namespace_bytes_read: IntCounterVec,
    /// S3 endpoint requests, by HTTP `method` and `code` (`OK`, or the S3 error code).
    pub s3_requests: IntCounterVec,
    /// Multipart uploads removed with their parts after `s3.stale_uploads_expiry`.
    pub s3_uploads_expired: IntCounter,
    /// S3 GETs whose body was cut short: a chunk could not be read after the status and
    /// headers went out (the client sees fewer bytes than Content-Length).
    pub s3_bodies_cut: IntCounter,
    /// `lm://` requests refused or connections closed, by reason.
    pub lmcache_protocol_errors: IntCounterVec,
    /// Keys in the index.
    pub index_blocks: IntGauge,
    /// Open shared-memory sessions (local clients mapping the arena).
    pub shm_sessions: IntGauge,
    /// Members of this node's cluster as it sees them (1 alone).
    pub members: IntGauge,
    /// Resync rounds run.
    pub resync_runs: IntCounter,
    /// Blocks pulled from peers by resync.
    pub resync_blocks: IntCounter,
    /// Bytes pulled from peers by resync.
    pub resync_bytes: IntCounter,
    /// Resync steps that failed (a peer unreachable, a block unreadable).
    pub resync_failures: IntCounter,
    /// Blocks this node handed to their new owners after a change of the member list.
    pub handoff_blocks: IntCounter,
    /// Bytes of those blocks.
    pub handoff_bytes: IntCounter,
    /// Objects whose file this node committed in Blob, under their own names.
    pub objects_exported: IntCounter,
    /// Bytes of those objects.
    pub object_export_bytes: IntCounter,
    /// Parts of objects' files this node staged in Blob (its share of the fan-in).
    pub object_parts_staged: IntCounter,
    /// Bytes of those parts: more than `object_export_bytes` across the cluster when tries
    /// that failed staged parts no commit took.
    pub object_staged_bytes: IntCounter,
    /// Parts joined into objects by adopting their chunks (S3 multipart completions): no
    /// byte of them copied.
    pub object_parts_joined: IntCounter,
    /// Exports that failed (each is retried on its own), by reason (`blob`, `chunks`,
    /// `stager`, `manifest`).
    pub object_export_failures: IntCounterVec,
    /// Exports that found their object's file in Blob already, with this version's bytes
    /// (after a restart or a take-over), and wrote nothing.
    pub objects_found_in_blob: IntCounter,
    /// Exports put off until their version settled: this node holds a version another node
    /// committed (it took over the path's flushes, or pulled the copy), and that node may
    /// still undo it (a commit short of its quorum).
    pub exports_waiting_to_settle: IntCounter,
    /// Commits, block copies and deletes a member asked of this node that arrived past their
    /// deadline (this node was stopped, cut off, or waited for room meanwhile) and were refused.
    pub late_commits_refused: IntCounter,
    /// Write-back chunks of uploads that never committed, removed by the orphan sweep.
    pub orphan_chunks_removed: IntCounter,
    /// Objects whose export is queued or running on this node.
    pub exports_queued: IntGauge,
    /// Deletes of Blob copies held until Blob takes them.
    pub blob_deletes_held: IntGauge,
    /// How long the oldest of those has waited since first queued (seconds).
    pub export_oldest: Gauge,
    /// How long the oldest write-back byte on this node has waited for Blob (seconds): a
    /// block's flush, a chunk's export, or an owner's copy waiting to hear of either.
    pub unflushed_oldest: Gauge,
    /// Bytes of write-back blocks Blob does not hold yet, by namespace.
    pub namespace_unflushed_bytes: IntGaugeVec,
    /// Object chunks read back from their object's file in Blob (no node held them).
    pub object_blob_reads: IntCounter,
    /// Bytes of those chunks.
    pub object_blob_read_bytes: IntCounter,
    /// Capacity of each tier (bytes), refreshed on scrape.
    pub tier_capacity: IntGaugeVec,
    /// Used bytes of each tier, refreshed on scrape.
    pub tier_used: IntGaugeVec,
    /// Blocks in each tier, refreshed on scrape.
    pub tier_blocks: IntGaugeVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// These metrics, with long tasks (resync, persisting memory) reported to `progress`
    /// (the `kvtier` binary's progress bars).
    pub fn with_progress(mut self, progress: std::sync::Arc<dyn crate::progress::Progress>) -> Self {
        self.progress = progress;
        self
    }

    /// Where long tasks report.
    pub(crate) fn progress(&self) -> &dyn crate::progress::Progress {
        self.progress.as_ref()
    }

    /// Registers every metric in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("kvtier".into()), None).expect("valid prefix");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let latency = HistogramVec::new(
            HistogramOpts::new("request_duration_seconds", "Request latency by operation")
                .buckets(prometheus::exponential_buckets(25e-6, 2.0, 18).expect("valid buckets")),
            &["op"],
        )
        .expect("valid metric");
        registry.register(Box::new(latency.clone())).expect("unique metric");
        let dropped =
            IntCounter::new("dropped_blocks_total", "Blocks that left the node to make room or after an error")
                .expect("valid metric");
        registry.register(Box::new(dropped.clone())).expect("unique metric");
        let demotion_queue =
            IntGauge::new("demotion_queue", "Blocks waiting to move out of memory").expect("valid metric");
        registry.register(Box::new(demotion_queue.clone())).expect("unique metric");
        let one_counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let one_gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let one_float_gauge = |name: &str, help: &str| {
            let g = Gauge::new(name, help).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let flush_lag = one_float_gauge("flush_lag_seconds", "How long the oldest block in the flush queue has waited");
        let index_blocks = IntGauge::new("index_blocks", "Blocks in the index").expect("valid metric");
        registry.register(Box::new(index_blocks.clone())).expect("unique metric");
        let shm_sessions =
            IntGauge::new("shm_sessions", "Open shared-memory data plane sessions").expect("valid metric");
        registry.register(Box::new(shm_sessions.clone())).expect("unique metric");
        let members =
            IntGauge::new("cluster_members", "Members of the cluster as this node sees them").expect("valid metric");
        registry.register(Box::new(members.clone())).expect("unique metric");
        members.set(1);
        Metrics {
            requests: counter("requests_total", "Requests by operation", &["op"]),
            latency,
            puts: counter("blocks_put_total", "Blocks put, by result", &["result"]),
            hits: counter("get_hits_total", "Gets served, by tier", &["tier"]),
            misses: counter("get_misses_total", "Gets not served, by reason", &["reason"]),
            bytes_read: counter("tier_read_bytes_total", "Block bytes read from a tier", &["tier"]),
            bytes_written: counter("tier_written_bytes_total", "Block bytes written to a tier", &["tier"]),
            evictions: counter("evictions_total", "Blocks removed from a tier to make room", &["tier"]),
            demotions: counter("demotions_total", "Blocks moved to a slower tier", &["from", "to"]),
            promotions: counter("promotions_total", "Blocks copied to a faster tier after a hit", &["from", "to"]),
            tier_reads: counter(
                "tier_reads_total",
                "Reads issued to a tier below memory (one per key, however many gets wait on it)",
                &["tier"],
            ),
            checksum_failures: counter("checksum_failures_total", "Copies that failed their checksum", &["tier"]),
            dropped,
            demotion_queue,
            flush_queue: one_gauge("flush_queue", "Blocks waiting to be flushed to Blob"),
            background_tasks: one_gauge("background_tasks", "The node's background tasks still running"),
            flush_lag,
            unflushed_bytes: one_gauge("unflushed_bytes", "Bytes written with write-back durability not yet in Blob"),
            unreachable_dropped: one_counter(
                "unreachable_dropped_total",
                "Blocks dropped because their prefix parent left the node",
            ),
            flushed_blocks: one_counter("flushed_blocks_total", "Blocks flushed to Blob (write-back and demoted)"),
            flushed_bytes: one_counter("flushed_bytes_total", "Bytes flushed to Blob"),
            flush_errors: one_counter("flush_errors_total", "Flush batches that failed (each is retried)"),
            flush_backpressure: one_counter(
                "flush_backpressure_total",
                "Write-back puts refused because too many bytes waited for the flush",
            ),
            lost_write_back: one_counter(
                "lost_write_back_total",
                "Write-back blocks whose only copy was damaged before it reached Blob",
            ),
            blob_requests: counter("blob_requests_total", "Requests to the Blob tier's store, by op", &["op"]),
            peer_requests: counter(
                "peer_requests_total",
                "Requests to other members, by op and outcome",
                &["op", "outcome"],
            ),
            blob_bytes: counter("blob_bytes_total", "Bytes to and from the Blob tier's store", &["direction"]),
            peer_reads: counter(
                "peer_reads_total",
                "Reads other members asked for, by answer (owner, replica: the bytes; redirect: read replicas named)",
                &["answer"],
            ),
            read_replicas_kept: one_counter(
                "read_replicas_kept_total",
                "Copies kept of blocks read from other nodes, as read replicas",
            ),
            namespace_puts: counter("namespace_puts_total", "Blocks put, by namespace", &["namespace"]),
            namespace_hits: counter("namespace_hits_total", "Gets served, by namespace", &["namespace"]),
            namespace_misses: counter("namespace_misses_total", "Gets not served, by namespace", &["namespace"]),
            namespace_bytes_read: counter(
                "namespace_bytes_read_total",
                "Block bytes served, by namespace",
                &["namespace"],
            ),
            s3_requests: counter(
                "s3_requests_total",
                "S3 endpoint requests, by method and code (OK or the S3 error)",
                &["method", "code"],
            ),
            s3_bodies_cut: one_counter(
                "s3_bodies_cut_total",
                "S3 GET bodies cut short: a chunk could not be read after the headers were sent",
            ),
            s3_uploads_expired: one_counter(
                "s3_uploads_expired_total",
                "Multipart uploads removed, with their parts, after s3.stale_uploads_expiry",
            ),
            lmcache_protocol_errors: counter(
                "lmcache_protocol_errors_total",
                "lm:// requests refused (key, oversize) or connections closed (header, truncated, stalled, io), by reason",
                &["reason"],
            ),
            index_blocks,
            shm_sessions,
            members,
            resync_runs: one_counter("resync_runs_total", "Resync rounds run"),
            resync_blocks: one_counter("resync_blocks_total", "Blocks pulled from peers by resync"),
            resync_bytes: one_counter("resync_bytes_total", "Bytes pulled from peers by resync"),
            resync_failures: one_counter("resync_failures_total", "Resync steps that failed"),
            handoff_blocks: one_counter(
                "handoff_blocks_total",
                "Blocks handed to their new owners after a member change",
            ),
            handoff_bytes: one_counter("handoff_bytes_total", "Bytes handed to new owners after a member change"),
            objects_exported: one_counter("objects_exported_total", "Objects committed in Blob under their own names"),
            object_export_bytes: one_counter("object_export_bytes_total", "Bytes of the objects committed in Blob"),
            object_parts_staged: one_counter("object_parts_staged_total", "Parts of object files staged in Blob"),
            object_staged_bytes: one_counter("object_staged_bytes_total", "Bytes of object file parts staged in Blob"),
            object_parts_joined: one_counter("object_parts_joined_total", "Parts joined into objects without a copy"),
            object_export_failures: counter(
                "object_export_failures_total",
                "Object exports that failed (each retried on its own), by reason",
                &["reason"],
            ),
            objects_found_in_blob: one_counter(
                "objects_found_in_blob_total",
                "Exports that found their object's file in Blob already, with this version's bytes",
            ),
            exports_waiting_to_settle: one_counter(
                "exports_waiting_to_settle_total",
                "Exports put off until their version, committed by another node, could no longer be undone",
            ),
            late_commits_refused: one_counter(
                "late_commits_refused_total",
                "Commits and block copies that arrived past their sender's deadline and were refused",
            ),
            orphan_chunks_removed: one_counter(
                "orphan_chunks_removed_total",
                "Write-back chunks no member's manifest named, removed by the orphan sweep",
            ),
            exports_queued: one_gauge("exports_queued", "Objects whose export is queued or running"),
            blob_deletes_held: one_gauge(
                "blob_deletes_held",
                "Deletes of Blob copies held (on disk) until Blob takes them",
            ),
            export_oldest: one_float_gauge(
                "export_oldest_seconds",
                "How long the oldest queued or running export has waited since first queued",
            ),
            unflushed_oldest: one_float_gauge(
                "unflushed_oldest_seconds",
                "How long the oldest write-back byte on this node has waited for Blob",
            ),
            namespace_unflushed_bytes: gauge(
                "namespace_unflushed_bytes",
                "Bytes written with write-back durability not yet in Blob, by namespace",
                &["namespace"],
            ),
            object_blob_reads: one_counter("object_blob_reads_total", "Object chunks read from their file in Blob"),
            object_blob_read_bytes: one_counter(
                "object_blob_read_bytes_total",
                "Bytes of object chunks read from Blob",
            ),
            tier_capacity: gauge("tier_capacity_bytes", "Tier capacity", &["tier"]),
            tier_used: gauge("tier_used_bytes", "Bytes allocated in a tier", &["tier"]),
            tier_blocks: gauge("tier_blocks", "Blocks in a tier", &["tier"]),
            registry,
            progress: crate::progress::none(),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding cannot fail");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}
