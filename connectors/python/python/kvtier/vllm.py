"""kvtier as vLLM's KV offload target (tested with vLLM 0.32.0 only: the API is experimental).

Two ways in, both plain ``--kv-transfer-config``, no vLLM patch:

1. A secondary tier for vLLM's ``TieringOffloadingSpec``::

     {"kv_connector": "OffloadingConnector", "kv_role": "kv_both",
      "kv_connector_extra_config": {
        "spec_name": "TieringOffloadingSpec", "cpu_bytes_to_use": 8589934592,
        "secondary_tiers": [{"type": "KvtierTier", "module_path": "kvtier.vllm",
                             "address": "unix:///var/lib/kvtier/kvtier.sock",
                             "shm_socket": "/var/lib/kvtier/kvtier-shm.sock"}]}}

2. ``KvtierOffloadingSpec``: the same, with kvtier as the only secondary tier, configured
   by ``kvtier_*`` keys::

     {"kv_connector": "OffloadingConnector", "kv_role": "kv_both",
      "kv_connector_extra_config": {
        "spec_name": "KvtierOffloadingSpec", "spec_module_path": "kvtier.vllm",
        "cpu_bytes_to_use": 8589934592,
        "kvtier_address": "unix:///var/lib/kvtier/kvtier.sock",
        "kvtier_shm_socket": "/var/lib/kvtier/kvtier-shm.sock"}}

vLLM keeps its own per-instance host buffer (its GPU copies need it pinned); kvtier is the
tier below it: host memory shared by every vLLM instance on the node (bytes move through
kvtier's shared-memory arena, one memcpy each way), then SSD. A chunk one instance stores is
a hit for every other instance of the same model and layout.

Keys are vLLM's offload keys (block hash + group index). Use ``--prefix-caching-hash-algo
sha256_cbor`` (or set ``PYTHONHASHSEED``) so that hashes agree across processes and
restarts. ``cache_salt`` is part of vLLM's block hash, so salted tenants never share keys.
The namespace is derived from the model, KV dtype, layout, chunk geometry and parallelism.

Loading beats recomputing only when the chunk comes fast enough: kvtier answers each lookup
with the expected time to load each chunk (its tier's measured speed), and with
``max_load_us`` (``kvtier_max_load_us``) set to the time the engine takes to recompute a
chunk (its tokens over the prefill rate: 256 tokens of an 8B model at 10,000 tokens/s is
25,600 us) the tier answers MISS from the first chunk slower than that, so vLLM recomputes
instead of waiting on a slow disk. Unset, every stored chunk is a hit. The lookup pins what it
reports (``pin_ms``, default 10 s, or until loaded) so a chunk answered HIT is still there
when vLLM loads it.

Failures never fail a request: a dead or erroring kvtier answers MISS to lookups (vLLM
recomputes); a failed store is reported failed, which vLLM tolerates (the chunk is simply not
offloaded); a load that loses blocks reports the keys that did load, and the rest are
answered MISS from then on.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Collection, Iterable
from typing import ClassVar

from vllm.v1.kv_offload.base import (
    LookupResult,
    Medium,
    OffloadKey,
    ReqContext,
    RequestOffloadingContext,
    ScheduleEndContext,
)
from vllm.v1.kv_offload.tiering.base import JobResult, SecondaryTierManager, TransferJob
from vllm.v1.kv_offload.tiering.spec import TieringOffloadingSpec

import kvtier

logger = logging.getLogger(__name__)

#: Most chunk bytes moved per kvtier request (bounded by the server's shm.session_limit).
BATCH_BYTES = 256 << 20
#: How long a "not in kvtier" answer is trusted before asking again (another instance may
#: have stored the chunk since).
MISS_TTL_S = 1.0
#: Keys remembered as present (a bounded LRU).
KNOWN_KEYS = 1 << 20
#: Seconds between reconnection attempts while kvtier is unreachable.
RECONNECT_S = 5.0
#: Threads moving chunks (each with its own kvtier session), so that one job's SSD reads
#: overlap the next job's copies. Lookups have a thread of their own and never wait behind
#: a transfer.
TRANSFER_THREADS = 4


def namespace_for(spec, block_size_bytes: int) -> str:
    """The kvtier namespace of an engine's chunks: every property that changes their bytes."""
    cfg = spec.config
    p = cfg.parallel
    layout = "canonical" if cfg.canonical_layout else (cfg.kv_cache_layout or "direct")
    groups = "-".join(f"{g.group_id}x{g.tokens_per_block}" for g in cfg.groups)
    ident = "|".join(
        str(x)
        for x in (
            cfg.model.name,
            cfg.model.dtype,
            layout,
            cfg.replicated_layout,
            groups,
            cfg.cache.tokens_per_hash,
            cfg.cache.blocks_per_chunk,
            block_size_bytes,
            p.world_size,
            p.tp_size,
            p.pp_size,
            p.pcp_size,
            p.dcp_size,
        )
    )
    model = "".join(c if c.isalnum() or c in "._-" else "-" for c in cfg.model.name.split("/")[-1])[:48] or "model"
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return f"vllm/{model}/{cfg.model.dtype}/tp{p.tp_size}pp{p.pp_size}/{digest}"


class KvtierTier(SecondaryTierManager):
    """A vLLM secondary tier backed by a kvtier node on this host (or reachable over gRPC)."""

    medium: ClassVar[Medium] = Medium.CPU

    def __init__(
        self,
        offloading_spec,
        primary_kv_view: memoryview,
        tier_type: str,
        address: str = "unix://./kvtier-data/kvtier.sock",
        shm_socket: str | None = None,
        namespace: str | None = None,
        durability: str = "cache",
        transfer_threads: int = TRANSFER_THREADS,
        backpressure_detector=None,
        locality: str | None = None,
        max_load_us: int | None = None,
        pin_ms: int = 10_000,
    ) -> None:
        super().__init__(
            offloading_spec=offloading_spec,
            primary_kv_view=primary_kv_view,
            tier_type=tier_type,
            backpressure_detector=backpressure_detector,
        )
        self.locality = locality
        self.namespace = namespace or namespace_for(offloading_spec, self.block_size_bytes)
        self._address, self._shm_socket, self._durability = address, shm_socket, durability
        self._max_load_us = None if max_load_us is None else int(max_load_us)
        self._pin_ms = int(pin_ms)
        # Chunk c is bytes [c * size, (c + 1) * size) of the flat view.
        self._flat = primary_kv_view.cast("B") if primary_kv_view.ndim > 1 else primary_kv_view
        # kvtier is treated as down (every lookup a MISS, no connection attempts) until then.
        self._down_until = 0.0
        self._known: OrderedDict[bytes, None] = OrderedDict()
        self._missing: dict[bytes, float] = {}
        self._asking: dict[bytes, None] = {}
        self._queued: dict[bytes, None] = {}
        self._lock = threading.Lock()
        self._lookups: queue.SimpleQueue = queue.SimpleQueue()
        self._transfers: queue.SimpleQueue = queue.SimpleQueue()
        self._done: list[JobResult] = []
        self._in_flight = 0
        self._idle = threading.Condition(self._lock)
        self.stats = {
            "lookups": 0,
            "hits": 0,
            "stored_chunks": 0,
            "loaded_chunks": 0,
            "failed_jobs": 0,
            "errors": 0,
            "slow_chunks": 0,
        }
        self._threads = [threading.Thread(target=self._run, args=(self._lookups,), name="kvtier-lookup", daemon=True)]
        self._threads += [
            threading.Thread(target=self._run, args=(self._transfers,), name=f"kvtier-transfer-{i}", daemon=True)
            for i in range(max(1, int(transfer_threads)))
        ]
        for t in self._threads:
            t.start()
        logger.info("kvtier tier: namespace %s, address %s, shm %s", self.namespace, address, shm_socket)

    # -- scheduler-side API (never blocks) -------------------------------------------------

    def lookup(self, key: OffloadKey, req_context: ReqContext) -> LookupResult:
        key = bytes(key)
        with self._lock:
            self.stats["lookups"] += 1
            if key in self._known:
                self._known.move_to_end(key)
                self.stats["hits"] += 1
                return LookupResult.HIT
            seen = self._missing.get(key)
            if seen is not None and time.monotonic() - seen < MISS_TTL_S:
                return LookupResult.MISS
            if time.monotonic() < self._down_until:
                return LookupResult.MISS
            if key not in self._asking:
                self._queued[key] = None
            return LookupResult.RETRY

    def on_schedule_end(self, ctx: ScheduleEndContext | None = None) -> None:
        with self._lock:
            if not self._queued:
                return
            keys = list(self._queued)
            self._asking.update(self._queued)
            self._queued.clear()
            self._in_flight += 1
        self._lookups.put(("lookup", keys))

    def submit_store(self, job_metadata: TransferJob) -> None:
        with self._lock:
            self._in_flight += 1
        self._transfers.put(("store", job_metadata))

    def submit_load(self, job_metadata: TransferJob) -> None:
        with self._lock:
            self._in_flight += 1
        self._transfers.put(("load", job_metadata))

    def get_finished_jobs(self) -> Iterable[JobResult]:
        with self._lock:
            done, self._done = self._done, []
        return done

    def has_pending_work(self) -> bool:
        with self._lock:
            return self._in_flight > 0 or bool(self._queued)

    def drain_jobs(self) -> None:
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0)

    def on_new_request(self, req_context: ReqContext) -> RequestOffloadingContext:
        return RequestOffloadingContext()

    def touch(self, keys: Collection[OffloadKey], req_context: ReqContext) -> None:
        return

    def shutdown(self) -> None:
        self._lookups.put(("stop", None))
        for _ in self._threads[1:]:
            self._transfers.put(("stop", None))
        for t in self._threads:
            t.join(timeout=10)

    def get_stats(self):
        with self._lock:
            return dict(self.stats)

    # -- the worker threads: one for lookups, `transfer_threads` for stores and loads ------

    def _run(self, work: queue.SimpleQueue) -> None:
        conn = _Connection(self)  # each thread its own session: no lock around the copies
        while True:
            kind, arg = work.get()
            if kind == "stop":
                return
            try:
                if kind == "lookup":
                    self._lookup(conn, arg)
                elif kind == "store":
                    self._finish(self._store(conn, arg))
                elif kind == "load":
                    self._finish(self._load(conn, arg))
            except Exception:  # never let one job kill the tier: vLLM would hang on it
                logger.exception("kvtier tier: %s failed", kind)
                if kind != "lookup":
                    self._finish(JobResult(job_id=arg.job_id, success=False, successful_keys=[]))
            finally:
                with self._idle:
                    self._in_flight -= 1
                    self._idle.notify_all()

    def _failed(self, conn: _Connection, e: Exception) -> None:
        """A request failed: count it and, if the node is unreachable, stop asking for a while."""
        with self._lock:
            self.stats["errors"] += 1
        logger.warning("kvtier tier: %s", e)
        if isinstance(e, kvtier.UnavailableError):
            conn.client = None
            self._down_until = time.monotonic() + RECONNECT_S

    def _lookup(self, conn: _Connection, keys: list[bytes]) -> None:
        present: list[bytes] = []
        slow = 0
        client = conn.get()
        rest = keys
        try:
            # Keys of one request come in prefix order, so the longest-present-prefix
            # lookup settles them in one or two round trips.
            while client is not None and rest:
                tiers, load_us, _ = client.lookup_pinned(self.namespace, rest, self._pin_ms)
                n = kvtier.loadable_prefix(load_us, self._max_load_us)
                slow += len(tiers) - n
                present.extend(rest[:n])
                rest = rest[n + 1 :]
        except kvtier.KvtierError as e:
            self._failed(conn, e)
        now = time.monotonic()
        with self._lock:
            self.stats["slow_chunks"] += slow
            for k in present:
                self._remember(k)
            for k in keys:
                self._asking.pop(k, None)
                if k not in self._known:
                    self._missing[k] = now
            if len(self._missing) > KNOWN_KEYS:
                self._missing = {k: t for k, t in self._missing.items() if now - t < MISS_TTL_S}

    def _remember(self, key: bytes) -> None:
        self._missing.pop(key, None)
        self._known[key] = None
        self._known.move_to_end(key)
        while len(self._known) > KNOWN_KEYS:
            self._known.popitem(last=False)

    def _chunk(self, chunk_id: int) -> memoryview:
        size = self.block_size_bytes
        return self._flat[int(chunk_id) * size : (int(chunk_id) + 1) * size]

    def _batches(self, job: TransferJob):
        per = max(1, BATCH_BYTES // self.block_size_bytes)
        pairs = list(zip((bytes(k) for k in job.keys), job.chunk_ids))
        for i in range(0, len(pairs), per):
            yield pairs[i : i + per]

    def _store(self, conn: _Connection, job: TransferJob) -> JobResult:
        started, moved, ok = time.monotonic(), 0, True
        client = conn.get()
        if client is None:
            return JobResult(job_id=job.job_id, success=False)
        stored: list[bytes] = []
        try:
            for batch in self._batches(job):
                results = client.put(
                    self.namespace, [k for k, _ in batch], [self._chunk(c) for _, c in batch], self._durability
                )
                for (k, _), r in zip(batch, results):
                    if r.ok:
                        stored.append(k)
                        moved += 0 if r.existed else self.block_size_bytes
                    else:
                        ok = False
                        logger.warning("kvtier tier: storing a chunk failed: %s", r.error)
        except kvtier.KvtierError as e:
            self._failed(conn, e)
            ok = False
        with self._lock:
            for k in stored:
                self._remember(k)
            self.stats["stored_chunks"] += len(stored)
        return JobResult(job_id=job.job_id, success=ok, transfer_time=time.monotonic() - started, transfer_bytes=moved)

    def _load(self, conn: _Connection, job: TransferJob) -> JobResult:
        started = time.monotonic()
        loaded: list[bytes] = []
        client = conn.get()
        try:
            for batch in self._batches(job) if client is not None else ():
                got = client.get_into(self.namespace, [k for k, _ in batch], [self._chunk(c) for _, c in batch])
                loaded.extend(k for (k, _), n in zip(batch, got) if n == self.block_size_bytes)
        except kvtier.KvtierError as e:
            self._failed(conn, e)
        keys = [bytes(k) for k in job.keys]
        lost = set(keys) - set(loaded)
        with self._lock:
            now = time.monotonic()
            for k in lost:
                self._known.pop(k, None)
                self._missing[k] = now
            self.stats["loaded_chunks"] += len(loaded)
        if lost:
            logger.warning(
                "kvtier tier: %d of %d chunks could not be loaded; vLLM recomputes them", len(lost), len(keys)
            )
            return JobResult(job_id=job.job_id, success=False, successful_keys=[OffloadKey(k) for k in loaded])
        return JobResult(
            job_id=job.job_id,
            success=True,
            transfer_time=time.monotonic() - started,
            transfer_bytes=len(loaded) * self.block_size_bytes,
        )

    def _finish(self, result: JobResult) -> None:
        with self._lock:
            if not result.success:
                self.stats["failed_jobs"] += 1
            self._done.append(result)


class _Connection:
    """One worker thread's kvtier client (and shm session), opened on first use and again
    after a failure once the tier's back-off has passed."""

    def __init__(self, tier: KvtierTier) -> None:
        self.tier = tier
        self.client: kvtier.Client | None = None

    def get(self) -> kvtier.Client | None:
        tier = self.tier
        if self.client is not None:
            return self.client
        if time.monotonic() < tier._down_until:
            return None
        try:
            self.client = kvtier.Client(
                tier._address,
                shm_socket=tier._shm_socket,
                namespaces=[tier.namespace] if tier._shm_socket else [],
            )
            logger.debug("kvtier tier: connected to %s (shm=%s)", tier._address, self.client.uses_shm)
        except kvtier.KvtierError as e:
            logger.warning("kvtier tier: %s; offloading to kvtier is off for %.0fs", e, RECONNECT_S)
            with tier._lock:
                tier.stats["errors"] += 1
            tier._down_until = time.monotonic() + RECONNECT_S
        return self.client


class KvtierOffloadingSpec(TieringOffloadingSpec):
    """vLLM's tiering spec with kvtier as its secondary tier, configured by ``kvtier_*`` keys
    of ``kv_connector_extra_config``: ``kvtier_address``, ``kvtier_shm_socket``,
    ``kvtier_namespace``, ``kvtier_durability``, ``kvtier_transfer_threads``,
    ``kvtier_max_load_us``, ``kvtier_pin_ms``."""

    def __init__(self, config) -> None:
        extra = dict(config.extra_config)
        tier = {"type": "KvtierTier", "module_path": __name__}
        for key in ("address", "shm_socket", "namespace", "durability", "transfer_threads", "max_load_us", "pin_ms"):
            if f"kvtier_{key}" in extra:
                tier[key] = extra[f"kvtier_{key}"]
        extra["secondary_tiers"] = [tier, *extra.get("secondary_tiers", [])]
        super().__init__(_with_extra(config, extra))


def _with_extra(config, extra):
    import dataclasses

    return dataclasses.replace(config, extra_config=extra)


__all__ = ["KvtierTier", "KvtierOffloadingSpec", "namespace_for"]
