"""kvtier's shared-memory arena as vLLM's host offload buffer (tested with vLLM 0.32.0 only).

::

  {"kv_connector": "OffloadingConnector", "kv_role": "kv_both",
   "kv_connector_extra_config": {
     "spec_name": "KvtierSharedOffloadingSpec", "spec_module_path": "kvtier.vllm_shared",
     "kvtier_shm_socket": "/var/lib/kvtier/kvtier-shm.sock"}}

vLLM's CPU offloading gives each instance a host buffer of its own. With this spec there is
none: GPU workers copy KV chunks straight into slots of kvtier's arena and back (one DMA each
way), so every vLLM instance on the node shares one offload cache, and kvtier moves what
does not fit to SSD. The copies are vLLM's own (``CPUOffloadingWorker``, the kernels of its
CPU offloading) over a view of the arena; only where chunks live changes:

- **scheduler** (``KvtierArenaManager``): a lookup pins the chunk in the arena (reading it
  from SSD first when needed) and holds the pin until the chunk is loaded or the request
  ends, so nothing can move it in between; a store allocates a slot, the workers write it,
  and ``complete_store`` commits it (kvtier checksums it). The chunk id vLLM passes to its
  workers is the slot's offset in the arena divided by ``ROW``.
- **workers** (``KvtierArenaWorker``): map the arena through their own session and give
  vLLM's worker a view whose row ``i`` starts at byte ``i * ROW``; with tensor parallelism
  rank ``r`` writes bytes ``[r * w, (r + 1) * w)`` of each chunk (``w``: one rank's bytes).

A chunk is one kvtier block of every rank's bytes, in the namespace ``kvtier.vllm`` derives
(model, dtype, layout, chunk geometry, parallelism); ``cache_salt`` is in vLLM's hash. Use
``--prefix-caching-hash-algo sha256_cbor`` so hashes agree across instances and restarts.

Failures never fail a request or a transfer: while kvtier is unreachable lookups miss and
stores are skipped; chunks pinned before it died stay readable (the mapping outlives the
server). A restarted kvtier has a new arena: specs name the arena their slots are in, and a
worker maps each arena it is sent (and unmaps the ones no slot refers to any more).

Every pinned chunk holds arena memory until loaded, so the server's ``shm.session_limit``
bounds the chunks of requests waiting to load; lookups beyond it miss (vLLM recomputes).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import weakref
from collections.abc import Collection
from dataclasses import dataclass, field

import torch
from vllm.platforms import current_platform
from vllm.v1.kv_offload.base import (
    LookupResult,
    OffloadingManager,
    OffloadingSpec,
    OffloadingWorker,
    OffloadKey,
    PrepareStoreOutput,
    ReqContext,
    RequestOffloadingContext,
    ScheduleEndContext,
    TransferResult,
)
from vllm.v1.kv_offload.cpu.common import CPULoadStoreSpec
from vllm.v1.kv_offload.cpu.gpu_worker import CPUOffloadingWorker

import kvtier
from kvtier.vllm import RECONNECT_S, namespace_for

logger = logging.getLogger(__name__)

#: Bytes per row of the view vLLM's worker copies through: every slot starts on a page, so
#: a slot at offset ``o`` is row ``o // ROW`` (rows overlap; only their starts matter).
ROW = 4096


class PrivateWindowError(RuntimeError):
    """kvtier gave this process a private window, not its arena: it may not read every
    namespace, so it cannot share the arena as vLLM's host buffer."""

    def __init__(self) -> None:
        super().__init__(
            "kvtier gives this uid a private window instead of its arena (its [[shm.grants]] entry "
            "does not cover every namespace, or shm.private_windows is on); KvtierSharedOffloadingSpec "
            'needs the arena: grant the uid namespaces = ["*"], or use kvtier.vllm.KvtierOffloadingSpec'
        )


class ArenaLoadStoreSpec(CPULoadStoreSpec):
    """Chunk ids (arena offset // ROW) in the arena ``arena_id``; ``live_arena_ids`` are the
    arenas the scheduler still holds slots in (a worker unmaps the others)."""

    def __init__(self, chunk_ids: list[int], arena_id: int, live_arena_ids: Collection[int]):
        super().__init__(chunk_ids)
        self.arena_id = arena_id
        self.live_arena_ids = frozenset(live_arena_ids)


class KvtierSharedOffloadingSpec(OffloadingSpec):
    """Configured by ``kv_connector_extra_config``: ``kvtier_shm_socket`` (required),
    ``kvtier_namespace``, ``kvtier_durability`` ("cache" or "local_disk"),
    ``kvtier_alloc_wait_ms`` (default 0), ``kvtier_max_load_us`` (a chunk kvtier expects to
    load slower than this many microseconds, and the rest of its request's prefix, is a
    MISS: set it to the engine's time to recompute a chunk; unset, every stored chunk loads)."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self.shm_socket = self.extra_config.get("kvtier_shm_socket")
        if not self.shm_socket:
            raise ValueError("KvtierSharedOffloadingSpec needs kvtier_shm_socket (the server's kvtier-shm.sock)")
        #: One rank's bytes of a chunk, and every rank's (one kvtier block).
        self.worker_chunk_bytes = config.worker_kv_bytes_per_block * self.blocks_per_chunk
        self.chunk_bytes = self.worker_chunk_bytes * max(1, config.parallel.world_size)
        self.namespace = self.extra_config.get("kvtier_namespace") or namespace_for(self, self.chunk_bytes)
        self.durability = self.extra_config.get("kvtier_durability", "cache")
        #: How long a store may wait for room in a full arena, on vLLM's scheduler thread.
        #: 0: never; a chunk that finds no room is not offloaded, and kvtier starts making room.
        self.alloc_wait_ms = int(self.extra_config.get("kvtier_alloc_wait_ms", 0))
        max_load_us = self.extra_config.get("kvtier_max_load_us")
        self.max_load_us = None if max_load_us is None else int(max_load_us)
        self._manager: KvtierArenaManager | None = None
        self._worker: KvtierArenaWorker | None = None

    def get_manager(self) -> OffloadingManager:
        if self._manager is None:
            self._manager = KvtierArenaManager(self)
        return self._manager

    def get_worker(self, kv_caches) -> OffloadingWorker:
        if self._worker is None:
            if not (current_platform.is_cuda_alike() or current_platform.is_xpu()):
                raise RuntimeError("KvtierSharedOffloadingSpec copies with vLLM's CUDA/XPU kernels; no GPU here")
            self._worker = KvtierArenaWorker(self, kv_caches)
        return self._worker


class _Sessions:
    """The scheduler's sessions. ``stores``: allocs on the scheduler thread, commits (of the
    same session's handles) on the commit thread, each session under its lock. There are two
    so that an alloc never waits behind a commit, which takes milliseconds (kvtier checksums
    every byte). ``pin``: pins and releases, on the pin thread only."""

    def __init__(self, spec: KvtierSharedOffloadingSpec) -> None:
        names = [spec.namespace]
        self.stores = [kvtier.ShmSession(spec.shm_socket, names) for _ in range(2)]
        self.locks = [threading.Lock() for _ in self.stores]
        self.pin = kvtier.ShmSession(spec.shm_socket, names)
        self.arena_id = self.pin.arena.id
        if self.pin.arena.private:
            self.close()
            raise PrivateWindowError()

    def free_store(self) -> int:
        """Locks and returns a store session no commit is using (waits only if all are)."""
        for i, lock in enumerate(self.locks):
            if lock.acquire(blocking=False):
                return i
        self.locks[0].acquire()
        return 0

    def close(self) -> None:
        for session in (*self.stores, self.pin):
            session.close()


@dataclass(eq=False)
class _Request:
    """One request's slots: pins from lookups (kept until loaded), allocations to commit.
    Every handle is kept with the sessions that issued it (handles are per session)."""

    pinned: dict[bytes, tuple[_Sessions, kvtier.Slot]] = field(default_factory=dict)
    loading: set[bytes] = field(default_factory=set)
    missed: set[bytes] = field(default_factory=set)
    asking: set[bytes] = field(default_factory=set)
    storing: dict[bytes, tuple[_Sessions, tuple[int, int]]] = field(default_factory=dict)  # (store session, handle)
    finished: bool = False


class KvtierArenaManager(OffloadingManager):
    """The scheduler side: lookups pin, stores allocate, all in kvtier's arena."""

    def __init__(self, spec: KvtierSharedOffloadingSpec) -> None:
        self.spec = spec
        self._lock = threading.Lock()
        self._connect_lock = threading.Lock()
        self._sessions: _Sessions | None = None
        self._down_until = 0.0
        self._queued: list[tuple[_Request, bytes]] = []
        self._in_flight = 0
        self._idle = threading.Condition(self._lock)
        self._live: dict[int, int] = {}  # arena id -> slots held in it
        self._requests: weakref.WeakSet[_Request] = weakref.WeakSet()
        self._storing: set[bytes] = set()  # keys with an allocation not yet committed
        self._reset: list = []  # what reset_cache dropped, given back at the next step's end
        self.stats = {
            "lookups": 0,
            "hits": 0,
            "stored_chunks": 0,
            "loaded_chunks": 0,
            "skipped_stores": 0,
            "errors": 0,
            "slow_chunks": 0,
        }
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._commits: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._run, args=(self._work,), name="kvtier-pin", daemon=True),
            threading.Thread(target=self._run, args=(self._commits,), name="kvtier-commit", daemon=True),
        ]
        for t in self._threads:
            t.start()
        logger.info("kvtier shared offload: namespace %s, shm %s", spec.namespace, spec.shm_socket)
        self._connected(strict=True)  # a misconfiguration fails vLLM's start, not every lookup

    # -- connection --------------------------------------------------------------------------

    def _connected(self, strict: bool = False) -> _Sessions | None:
        """The sessions, opened on first use and again once the back-off after a failure passed."""
        with self._connect_lock:
            if self._sessions is None and time.monotonic() >= self._down_until:
                try:
                    self._sessions = _Sessions(self.spec)
                except PrivateWindowError as e:
                    if strict:
                        raise
                    self._failed(None, e, locked=True)
                except kvtier.KvtierError as e:
                    self._failed(None, e, locked=True)
            return self._sessions

    def _failed(self, sessions: _Sessions | None, e: Exception, locked: bool = False) -> None:
        with self._lock:
            self.stats["errors"] += 1
        logger.warning("kvtier shared offload: %s; vLLM recomputes what kvtier would have served", e)
        # Unreachable, or out of step (a protocol error poisons a session): new sessions
        # later. A refusal leaves them. Old sessions stay open while handles refer to them:
        # closing one would make the server drop pins that loads are reading.
        if not (sessions is None or isinstance(e, kvtier.UnavailableError) or "shm protocol" in str(e)):
            return
        with contextlib.nullcontext() if locked else self._connect_lock:
            if sessions is None or self._sessions is sessions:
                self._sessions = None
                self._down_until = time.monotonic() + RECONNECT_S

    def _hold(self, arena_id: int, n: int) -> None:
        """Counts slots per arena (under ``_lock``): specs tell workers which arenas are live."""
        left = self._live.get(arena_id, 0) + n
        if left > 0:
            self._live[arena_id] = left
        else:
            self._live.pop(arena_id, None)

    def _spec(self, ids: list[int], arena_id: int | None) -> ArenaLoadStoreSpec:
        current = self._sessions  # read once: other threads may replace it
        with self._lock:
            live = set(self._live)
        if current is not None:
            live.add(current.arena_id)
        if arena_id is None:  # no slots: any arena will do
            arena_id = current.arena_id if current is not None else next(iter(live), 0)
        return ArenaLoadStoreSpec(ids, arena_id, live)

    # -- lookups and loads -------------------------------------------------------------------

    def _request(self, ctx: ReqContext) -> _Request:
        req = ctx.get_state(_Request)
        if req is None:
            req = _Request()
            ctx.set_state(req)
            self._requests.add(req)
        return req

    def lookup(self, key: OffloadKey, req_context: ReqContext) -> LookupResult:
        k, req = bytes(key), self._request(req_context)
        with self._lock:
            self.stats["lookups"] += 1
            if k in req.pinned:
                self.stats["hits"] += 1
                return LookupResult.HIT
            if k in req.missed or (self._sessions is None and time.monotonic() < self._down_until):
                return LookupResult.MISS
            if k not in req.asking:
                req.asking.add(k)
                self._queued.append((req, k))
            return LookupResult.RETRY

    def on_schedule_end(self, context: ScheduleEndContext | None = None) -> None:
        with self._lock:
            reset, self._reset = self._reset, []
            batch, self._queued = self._queued, []
            self._in_flight += bool(batch) + bool(reset)
        if reset:
            self._commits.put(("reset", reset))
        if batch:
            self._work.put(("pin", batch))

    def has_pending_work(self) -> bool:
        with self._lock:
            return self._in_flight > 0 or bool(self._queued) or bool(self._reset)

    def prepare_load(self, keys: Collection[OffloadKey], req_context: ReqContext) -> ArenaLoadStoreSpec:
        req, wanted = self._request(req_context), {bytes(k) for k in keys}
        with self._lock:
            held = [req.pinned[bytes(k)] for k in keys]  # every key was a HIT: pinned by lookup
            req.loading.update(wanted)
            # Pins past the loaded prefix will not be read by this request: give them back now.
            unused = [req.pinned.pop(k) for k in list(req.pinned) if k not in req.loading]
        self._release(unused)
        arenas = {s.arena_id for s, _ in held}
        assert len(arenas) <= 1, "one load reads one arena (lookups never pin across two)"
        return self._spec([slot.offset // ROW for _, slot in held], arenas.pop() if arenas else None)

    def complete_load(self, keys: Collection[OffloadKey], req_context: ReqContext) -> None:
        req = self._request(req_context)
        with self._lock:
            done = [req.pinned.pop(bytes(k)) for k in keys if bytes(k) in req.pinned]
            req.loading.difference_update(bytes(k) for k in keys)
            self.stats["loaded_chunks"] += len(done)
        self._release(done)

    def on_new_request(self, req_context: ReqContext) -> RequestOffloadingContext:
        self._request(req_context)
        return RequestOffloadingContext()

    def on_request_finished(self, req_context: ReqContext) -> None:
        req = self._request(req_context)
        with self._lock:
            req.finished = True
            unused = [req.pinned.pop(k) for k in list(req.pinned) if k not in req.loading]
        self._release(unused)

    def _release(self, held: list[tuple[_Sessions, kvtier.Slot]]) -> None:
        if held:
            with self._lock:
                self._in_flight += 1
            self._work.put(("release", held))

    # -- stores ------------------------------------------------------------------------------

    def prepare_store(self, keys: Collection[OffloadKey], req_context: ReqContext) -> PrepareStoreOutput | None:
        sessions, req = self._connected(), self._request(req_context)
        if sessions is None:
            return None
        with self._lock:  # a key being stored (by any request) is not allocated twice
            keys = [k for k in keys if bytes(k) not in self._storing]
            self._storing.update(bytes(k) for k in keys)
        wanted = [bytes(k) for k in keys]
        got = []
        try:
            i = sessions.free_store()
            try:
                got = sessions.stores[i].alloc(
                    self.spec.namespace,
                    wanted,
                    [self.spec.chunk_bytes] * len(wanted),
                    self.spec.durability,
                    wait_ms=self.spec.alloc_wait_ms,
                )
            finally:
                sessions.locks[i].release()
        except kvtier.KvtierError as e:
            self._failed(sessions, e)
        to_store, ids = [], []
        with self._lock:
            for n, (k, key) in enumerate(zip(wanted, keys)):
                r = got[n] if n < len(got) else None
                if isinstance(r, kvtier.Slot):
                    to_store.append(key)
                    ids.append(r.offset // ROW)
                    req.storing[k] = (sessions, (i, r.handle))
                    continue
                self._storing.discard(k)
                if r is not None and not r.ok:
                    self.stats["skipped_stores"] += 1
                    logger.debug("kvtier shared offload: not storing a chunk: %s", r.error)
            self._hold(sessions.arena_id, len(to_store))
        if got == [] and wanted:
            return None
        return PrepareStoreOutput(
            keys_to_store=to_store, store_spec=self._spec(ids, sessions.arena_id), evicted_keys=[]
        )

    def complete_store(self, keys: Collection[OffloadKey], req_context: ReqContext, success: bool = True) -> None:
        req = self._request(req_context)
        with self._lock:
            handles = [req.storing.pop(bytes(k)) for k in keys if bytes(k) in req.storing]
            self._storing.difference_update(bytes(k) for k in keys)
            if not handles:
                return
            self._in_flight += 1
        self._commits.put(("commit" if success else "abandon", handles))

    # -- the pin and commit threads ----------------------------------------------------------

    def _run(self, work: queue.SimpleQueue) -> None:
        jobs = {"pin": self._pin, "release": self._unpin, "commit": self._commit, "abandon": self._commit}
        jobs["reset"] = self._give_back_all
        while True:
            kind, arg = work.get()
            if kind == "stop":
                return
            try:
                jobs[kind](arg, kind)
            except BaseException:  # a dead thread would leave vLLM waiting on has_pending_work
                logger.exception("kvtier shared offload: %s failed", kind)
            finally:
                with self._idle:
                    self._in_flight -= 1
                    self._idle.notify_all()

    def _pin(self, batch: list[tuple[_Request, bytes]], _kind: str) -> None:
        sessions, got = self._connected(), []
        try:
            if sessions is not None:
                batch = self._without_slow(sessions, batch)
                got = sessions.pin.pin(self.spec.namespace, [k for _, k in batch])
        except kvtier.KvtierError as e:
            self._failed(sessions, e)
        finally:
            self._settle(batch, sessions, got)

    def _without_slow(self, sessions: _Sessions, batch: list[tuple[_Request, bytes]]) -> list[tuple[_Request, bytes]]:
        """`batch` less the chunks kvtier expects to load slower than ``max_load_us`` and
        those after them in their request (a pin would read them from SSD first): those are
        misses, and the engine recomputes them."""
        limit = self.spec.max_load_us
        if limit is None:
            return batch
        by_request: dict[int, tuple[_Request, list[bytes]]] = {}
        for req, k in batch:
            by_request.setdefault(id(req), (req, []))[1].append(k)
        slow = set()
        for req, keys in by_request.values():
            _, load_us = sessions.pin.lookup(self.spec.namespace, keys)
            n = kvtier.loadable_prefix(load_us, limit)
            if n < len(load_us):
                slow.update((id(req), k) for k in keys[n:])
        if not slow:
            return batch
        with self._lock:
            for req, k in batch:
                if (id(req), k) in slow:
                    req.asking.discard(k)
                    req.missed.add(k)
            self.stats["slow_chunks"] += len(slow)
        return [(req, k) for req, k in batch if (id(req), k) not in slow]

    def _settle(self, batch, sessions: _Sessions | None, got: list) -> None:
        """Records each key's pin (or miss); pins nobody can use are given back."""
        useless = []
        with self._lock:
            for n, (req, k) in enumerate(batch):
                req.asking.discard(k)
                r = got[n] if n < len(got) else None
                if not isinstance(r, kvtier.Slot):
                    req.missed.add(k)  # not found, no room, past the session's limit, or down
                    continue
                self._hold(sessions.arena_id, 1)
                # A pin in another arena than the request's other pins (kvtier restarted
                # between its lookups), or of another chunk size (a shared namespace) is a miss.
                other_arena = any(s.arena_id != sessions.arena_id for s, _ in req.pinned.values())
                if req.finished or k in req.pinned or other_arena or r.length != self.spec.chunk_bytes:
                    if not req.finished and k not in req.pinned:
                        req.missed.add(k)
                    useless.append((sessions, r))
                else:
                    req.pinned[k] = (sessions, r)
        self._unpin(useless, "release")

    def _unpin(self, held: list[tuple[_Sessions, kvtier.Slot]], _kind: str) -> None:
        self._give_back([(s, slot.handle) for s, slot in held], lambda s, hs: s.pin.release(hs))

    def _commit(self, held: list[tuple[_Sessions, tuple[int, int]]], kind: str) -> None:
        def commit(sessions: _Sessions, handles: list[tuple[int, int]]) -> None:
            for i, (store, lock) in enumerate(zip(sessions.stores, sessions.locks)):
                mine = [h for s, h in handles if s == i]
                if not mine:
                    continue
                with lock:
                    if kind == "abandon":
                        store.release(mine)
                        continue
                    results = store.commit(mine)
                for r in results:
                    if not r.ok:
                        logger.warning("kvtier shared offload: a chunk was not stored: %s", r.error)
                with self._lock:
                    self.stats["stored_chunks"] += sum(r.ok for r in results)

        self._give_back(held, commit)

    def _give_back(self, held: list[tuple[_Sessions, object]], act) -> None:
        """Runs ``act(sessions, handles)`` per issuing sessions; handles stop counting as
        live either way (a failed call means the server dropped them with the session)."""
        by_sessions: dict[int, tuple[_Sessions, list]] = {}
        for s, h in held:
            by_sessions.setdefault(id(s), (s, []))[1].append(h)
        for sessions, handles in by_sessions.values():
            try:
                act(sessions, handles)
            except kvtier.KvtierError as e:
                self._failed(sessions, e)
            finally:
                with self._lock:
                    self._hold(sessions.arena_id, -len(handles))

    def _give_back_all(self, dropped: list[_Request], _kind: str) -> None:
        """After reset_cache: vLLM dropped these requests' transfers and will never complete
        them, so their pins are released and their allocations abandoned."""
        pins, allocs = [], []
        with self._lock:
            for req in dropped:
                pins.extend(req.pinned.values())
                allocs.extend(req.storing.values())
                self._storing.difference_update(req.storing)
                req.pinned.clear()
                req.loading.clear()
                req.storing.clear()
        self._unpin(pins, "release")
        self._commit(allocs, "abandon")

    # -- the rest of OffloadingManager --------------------------------------------------------

    def drain(self) -> None:
        """Waits until every queued pin, release and commit is done (tests, shutdown)."""
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0, timeout=60)

    def reset_cache(self) -> None:
        # kvtier is shared by every instance on the node: a reset never deletes what the
        # others stored. vLLM drops its in-flight transfers, whose completions never come:
        # their slots are given back once those copies ended (at the next step's end).
        with self._lock:
            self._reset.extend(r for r in self._requests if r.pinned or r.storing)

    def shutdown(self) -> None:
        self.drain()
        for t in self._threads:
            (self._work if t.name == "kvtier-pin" else self._commits).put(("stop", None))
            t.join(timeout=10)
        if self._sessions is not None:
            self._sessions.close()
            self._sessions = None


class KvtierArenaRegion:
    """What vLLM's ``CPUOffloadingWorker`` uses of its ``SharedOffloadRegion``, over kvtier's
    arena: views with row stride ``ROW`` (a slot at offset ``o`` is row ``o // ROW``)."""

    def __init__(self, spec: KvtierSharedOffloadingSpec, rank: int) -> None:
        session = kvtier.ShmSession(spec.shm_socket, [spec.namespace])
        self._arena = session.arena  # the mapping outlives the session
        session.close()
        if self._arena.private:
            raise PrivateWindowError()
        self.arena_id = self._arena.id
        self.rank = rank
        self._row_stride = ROW
        self.total_size_bytes = len(self._arena)
        if self.total_size_bytes < spec.chunk_bytes:
            raise ValueError(f"kvtier's arena ({self.total_size_bytes} bytes) is smaller than one chunk")
        self.num_chunks = (self.total_size_bytes - spec.chunk_bytes) // ROW + 1
        self._base: torch.Tensor | None = torch.frombuffer(self._arena, dtype=torch.int8)
        self._worker_offset = rank * spec.worker_chunk_bytes
        self._worker_area_end = (rank + 1) * spec.worker_chunk_bytes
        self._views: list[torch.Tensor] = []
        self.is_pinned = False
        self.pinned_addresses: list[int] = []

    def create_next_worker_view(self, tensor_page_size: int) -> torch.Tensor:
        """This rank's bytes of the next tensor in every chunk, as (num_chunks, page) int8."""
        end = self._worker_offset + tensor_page_size
        assert end <= self._worker_area_end, f"tensor pages overflow this rank's {self._worker_area_end} bytes"
        view = torch.as_strided(
            self._base, size=(self.num_chunks, tensor_page_size), stride=(ROW, 1), storage_offset=self._worker_offset
        )
        self._worker_offset = end
        self._views.append(view)
        return view

    def create_next_canonical_view(self, tensor_page_size: int) -> torch.Tensor:
        raise NotImplementedError("kvtier's shared spec stores the direct layout only")

    def cleanup(self) -> None:
        if self.is_pinned and self._base is not None:
            from vllm.v1.kv_offload.cpu.host_register import host_unregister

            for address in reversed(self.pinned_addresses or [self._base.data_ptr()]):
                host_unregister(address)
            self.pinned_addresses.clear()
            self.is_pinned = False
        self._views.clear()
        self._base = None


class KvtierArenaWorker(OffloadingWorker):
    """The worker side: vLLM's ``CPUOffloadingWorker`` over each arena the scheduler's specs
    name. ``make_inner`` builds it (the tests pass a CPU copier; vLLM's needs a GPU)."""

    def __init__(self, spec: KvtierSharedOffloadingSpec, kv_caches, make_inner=CPUOffloadingWorker) -> None:
        self.spec, self.kv_caches, self.make_inner = spec, kv_caches, make_inner
        self._inner: dict[int, OffloadingWorker] = {}
        self._jobs: dict[int, int] = {}  # job id -> arena id
        self._finished: list[TransferResult] = []
        try:
            self._inner_for(None)  # map the arena now: registering it for DMA takes a while
        except kvtier.KvtierError as e:
            logger.warning("kvtier shared offload: %s; the arena is mapped when the first slots arrive", e)

    def _inner_for(self, arena_id: int | None) -> OffloadingWorker:
        if arena_id in self._inner:
            return self._inner[arena_id]
        # A new arena (kvtier restarted): map it. Any other id would be a stale mapping.
        rank = self.spec.config.parallel.rank
        region = KvtierArenaRegion(self.spec, rank)
        if arena_id is not None and region.arena_id != arena_id:
            region.cleanup()
            raise RuntimeError(f"kvtier serves arena {region.arena_id}, the scheduler sent slots of {arena_id}")
        try:
            inner = self.make_inner(
                kv_caches=self.kv_caches,
                blocks_per_chunk=self.spec.blocks_per_chunk,
                num_cpu_chunks=region.num_chunks,
                mmap_region=region,
            )
        except Exception:
            region.cleanup()
            raise
        self._inner[region.arena_id] = inner
        logger.info("kvtier shared offload: rank %d mapped arena %d", rank, region.arena_id)
        return inner

    def _submit(self, job_id: int, arena_spec: ArenaLoadStoreSpec, submit) -> bool:
        self._retire(arena_spec.live_arena_ids | {arena_spec.arena_id})
        if len(arena_spec.block_ids) == 0 and arena_spec.arena_id not in self._inner:
            # Nothing to copy (and perhaps no arena to map): done.
            self._finished.append(TransferResult(job_id=job_id, success=True, transfer_size=0))
            return True
        inner = self._inner_for(arena_spec.arena_id)
        self._jobs[job_id] = arena_spec.arena_id
        return submit(inner)

    def submit_store(self, job_id, src_spec, dst_spec) -> bool:
        return self._submit(job_id, dst_spec, lambda w: w.submit_store(job_id, src_spec, dst_spec))

    def submit_load(self, job_id, src_spec, dst_spec) -> bool:
        return self._submit(job_id, src_spec, lambda w: w.submit_load(job_id, src_spec, dst_spec))

    def _retire(self, live: frozenset[int]) -> None:
        """Unmaps arenas no slot refers to any more, once their transfers are done."""
        for arena_id in [a for a in self._inner if a not in live]:
            inner = self._inner.pop(arena_id)
            pending = {j for j, a in self._jobs.items() if a == arena_id}
            inner.wait(pending)
            self._collect(inner)
            inner.shutdown()
            logger.info("kvtier shared offload: unmapped arena %d", arena_id)

    def _collect(self, inner: OffloadingWorker) -> None:
        for r in inner.get_finished():
            self._jobs.pop(r.job_id, None)
            self._finished.append(r)

    def get_finished(self) -> list[TransferResult]:
        for inner in self._inner.values():
            self._collect(inner)
        done, self._finished = self._finished, []
        return done

    def wait(self, job_ids: set[int]) -> None:
        for arena_id, inner in self._inner.items():
            inner.wait({j for j in job_ids if self._jobs.get(j) == arena_id})

    def shutdown(self) -> None:
        for inner in self._inner.values():
            inner.shutdown()
        self._inner.clear()


__all__ = ["ArenaLoadStoreSpec", "KvtierArenaManager", "KvtierArenaWorker", "KvtierSharedOffloadingSpec", "ROW"]
