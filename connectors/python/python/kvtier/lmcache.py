"""kvtier as LMCache's remote (L2) store, without patching LMCache (tested with 0.5.6).

Two of the three ways LMCache reaches a store live here; the third, LMCache's own ``lm://``
protocol, is served by ``kvtier serve`` itself (``[lmcache] listen``).

- :class:`KvtierConnector`: a ``RemoteConnector`` for LMCache's remote storage plugin
  framework (``remote_storage_plugins: [kvtier]``, with
  ``remote_storage_plugin.kvtier.module_path: kvtier.lmcache`` and
  ``remote_storage_plugin.kvtier.class_name: KvtierConnector`` in ``extra_config``).
  For several kvtier plugins (``kvtier.a``, ``kvtier.b``), name
  ``class_name: KvtierConnectorAdapter`` instead: each instance reads its own
  ``remote_storage_plugin.kvtier.a.*`` options.
- :class:`KvtierL2Client`: the native client of LMCache's multiprocess mode
  (``{"type": "native_plugin", "module_path": "kvtier.lmcache",
  "class_name": "KvtierL2Client", "adapter_params": {...}}``); its transfers run on Rust
  threads with the GIL released, through shared memory when the server is on this host.

Every path maps LMCache's keys the same way (a namespace per model, world size, worker and
dtype; ``kvtier stat`` shows each one's hit rate) and the connector and ``lm://`` store the
same header before each chunk, so what one path stored the others find. A server that is
down or failing makes misses and logged warnings, never an exception in LMCache's request.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import List

from lmcache.utils import CacheEngineKey
from lmcache.v1.memory_management import MemoryObj
from lmcache.v1.protocol import DTYPE_TO_INT, strip_shape_padding
from lmcache.v1.storage_backend.connector import ConnectorAdapter
from lmcache.v1.storage_backend.connector.base_connector import RemoteConnector

from . import _native, loadable_prefix
from ._native import KvtierError

#: The native multiprocess-mode L2 client (see the module docstring).
KvtierL2Client = _native.LMCacheL2Client

logger = logging.getLogger("kvtier.lmcache")

#: After a failed connect, requests are misses for this long before the next try.
RECONNECT_AFTER = 1.0


class KvtierConnector(RemoteConnector):
    """LMCache ``RemoteConnector`` over a kvtier server.

    Options, from ``extra_config`` as ``remote_storage_plugin.<name>.<option>``:
    ``url`` (gRPC address, default ``127.0.0.1:50051``), ``shm_socket`` (the server's
    ``kvtier-shm.sock``: chunks move through shared memory), ``namespace_prefix`` (default
    ``lmcache``), ``durability`` (``cache``, ``local_disk`` or ``write_back``),
    ``max_load_us`` (a chunk kvtier expects to load slower than this many microseconds, and
    the rest of the prefix, is a miss: set it to the engine's time to recompute a chunk;
    default unset, every stored chunk loads) and ``pin_ms`` (how long a lookup keeps its hits
    from eviction waiting for the retrieve; default 10000).
    """

    def __init__(self, loop, local_cpu_backend, config, plugin_name: str = "kvtier"):
        super().__init__(local_cpu_backend.config, local_cpu_backend.metadata)
        extra = (config.extra_config if config is not None else None) or {}

        def option(name, default):
            return extra.get(f"remote_storage_plugin.{plugin_name}.{name}", default)

        self.url = option("url", "127.0.0.1:50051")
        self.shm_socket = option("shm_socket", None)
        self.prefix = option("namespace_prefix", "lmcache")
        self.durability = option("durability", "cache")
        # Chunks kvtier expects to load slower than this (microseconds) end the prefix: the
        # engine recomputes them (unset: load every stored chunk). A lookup pins its hits
        # for `pin_ms` or until read, so a hit is there when LMCache retrieves it.
        max_load_us = option("max_load_us", None)
        self.max_load_us = None if max_load_us is None else int(max_load_us)
        self.pin_ms = int(option("pin_ms", 10_000))
        self.slow_chunks = 0
        self.loop = loop
        self.local_cpu_backend = local_cpu_backend
        self._head_len = _native.lmcache_header_len(len(self.meta_shapes))
        self._dtypes = [DTYPE_TO_INT[d] for d in self.meta_dtypes]
        self._client = None
        self._failed_at = float("-inf")
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<KvtierConnector {self.url} shm={self.shm_socket is not None}>"

    # -- plumbing --------------------------------------------------------------------

    def _connected(self):
        """The client, connecting on first use; None while the server is unreachable."""
        with self._lock:
            if self._client is not None:
                return self._client
            if time.monotonic() - self._failed_at < RECONNECT_AFTER:
                return None
            try:
                import kvtier

                self._client = kvtier.Client(self.url, shm_socket=self.shm_socket)
            except KvtierError as e:
                self._failed_at = time.monotonic()
                logger.warning("kvtier at %s is unreachable (misses until it is back): %s", self.url, e)
            return self._client

    def _call(self, what: str, op, default):
        """`op(client)`, or `default` (a miss) when there is no server or the call fails
        (any error: a kvtier one, or a buffer LMCache handed over that is not usable)."""
        client = self._connected()
        if client is None:
            return default
        try:
            return op(client)
        except Exception as e:  # noqa: BLE001 - whatever fails, LMCache's request goes on
            logger.warning("kvtier %s failed, treated as a miss: %s", what, e)
            return default

    def _by_namespace(self, keys: List[CacheEngineKey]):
        """{namespace: [(position, key bytes)]}; keys that do not map are left out (misses)."""
        groups: dict = {}
        for i, key in enumerate(keys):
            try:
                ns, k = _native.lmcache_engine_key(self.prefix, key.to_string())
            except KvtierError as e:
                logger.warning("LMCache key not stored in kvtier: %s", e)
                continue
            groups.setdefault(ns, []).append((i, k))
        return groups

    async def _off_loop(self, fn, *args):
        # The calls block (the GIL is released while they wait); LMCache's loop keeps going.
        return await self.loop.run_in_executor(None, fn, *args)

    async def _read_off_loop(self, keys: List[CacheEngineKey]) -> List[MemoryObj | None]:
        """`_get_many` on the executor. LMCache cancels reads that pass its timeout, but the
        thread runs on: the chunks it then returns nobody takes are released."""
        future = self.loop.run_in_executor(None, self._get_many, keys)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:

            def release(done):
                if not done.cancelled() and done.exception() is None:
                    for obj in done.result():
                        if obj is not None:
                            obj.ref_count_down()

            future.add_done_callback(release)
            raise

    # -- sync halves -----------------------------------------------------------------

    def _prefix(self, keys: List[CacheEngineKey]) -> int:
        """How many leading keys are stored: one lookup per run of keys sharing a
        namespace (one run, for the keys of one engine)."""
        runs: list = []  # [(namespace, [key bytes])], in key order
        for key in keys:
            try:
                ns, k = _native.lmcache_engine_key(self.prefix, key.to_string())
            except KvtierError as e:
                logger.warning("LMCache key not in kvtier's form: %s", e)
                break  # a key kvtier cannot hold ends the prefix
            if runs and runs[-1][0] == ns:
                runs[-1][1].append(k)
            else:
                runs.append((ns, [k]))
        present = 0
        for ns, run in runs:
            # (The ops given to `_call` run before it returns, inside their iteration: B023 is moot.)
            found = self._call("lookup", lambda c: self._worth_loading(c.lookup_pinned(ns, run, self.pin_ms)), 0)  # noqa: B023
            present += found
            if found < len(run):
                break
        return present

    def _worth_loading(self, looked) -> int:
        """How many leading chunks of a lookup's answer load faster than `max_load_us`."""
        tiers, load_us, _pinned = looked
        n = loadable_prefix(load_us, self.max_load_us)
        self.slow_chunks += len(tiers) - n
        return n

    def _get_many(self, keys: List[CacheEngineKey]) -> List[MemoryObj | None]:
        out: List[MemoryObj | None] = [None] * len(keys)
        for ns, members in self._by_namespace(keys).items():
            objs, heads = [], []
            for _ in members:
                obj = self.local_cpu_backend.allocate(self.meta_shapes, self.meta_dtypes, self.meta_fmt)
                objs.append(obj)
                heads.append(bytearray(self._head_len))
            wanted = [(m, o, h) for m, o, h in zip(members, objs, heads) if o is not None]
            if len(wanted) < len(members):
                logger.warning("LMCache's CPU buffer is full: %d chunks read as misses", len(members) - len(wanted))
            got = self._call(
                "get",
                lambda c: c.get_into(ns, [k for (_, k), _, _ in wanted], [(h, o.byte_array) for _, o, h in wanted]),  # noqa: B023
                [None] * len(wanted),
            )
            for ((i, _), obj, head), n in zip(wanted, got):
                if n is None:
                    obj.ref_count_down()
                else:
                    out[i] = self._shaped(keys[i], obj, head, n)  # releases what it refuses
        return out

    def _shaped(self, key, obj: MemoryObj, head: bytearray, n: int) -> MemoryObj | None:
        """`obj` holding a chunk of `n` bytes (header included), shaped as stored; None
        (and `obj` released) when the stored chunk is not one of this engine's layout."""
        try:
            fmt, groups, length = _native.lmcache_parse_header(bytes(head))
            if fmt != self.meta_fmt.value or [d for d, _ in groups] != self._dtypes:
                raise ValueError(f"stored as format {fmt}, dtypes {[d for d, _ in groups]}")
            if length != n - self._head_len:
                raise ValueError(f"the header says {length} bytes, {n - self._head_len} were read")
            if length == self.full_chunk_size_bytes:
                return obj
            # The last chunk of a prompt: LMCache's own reshape, then the stored shapes
            # (reshape_partial_chunk updates `meta.shape` only).
            obj = self.reshape_partial_chunk(obj, length)
            if getattr(obj.meta, "shapes", None) is not None:
                obj.meta.shapes = [strip_shape_padding(dims, obj.meta.fmt) for _, dims in groups]
            return obj
        except Exception as e:  # noqa: BLE001 - any surprise in a stored chunk is a miss
            logger.warning("kvtier chunk %s read as a miss: %s", key.to_string(), e)
            obj.ref_count_down()
            return None

    def _put_many(self, keys: List[CacheEngineKey], objs: List[MemoryObj]) -> None:
        for ns, members in self._by_namespace(keys).items():
            names, values = [], []
            for i, k in members:
                obj = objs[i]
                try:
                    data = obj.byte_array
                    groups = [(DTYPE_TO_INT[d], list(s)) for s, d in zip(obj.get_shapes(), obj.get_dtypes())]
                    head = _native.lmcache_header(obj.get_memory_format().value, groups, len(data))
                except (KeyError, KvtierError) as e:
                    logger.warning("LMCache chunk %s not stored in kvtier: %s", keys[i].to_string(), e)
                    continue
                names.append(k)
                values.append((head, data))
            if not names:
                continue
            results = self._call("put", lambda c: c.put(ns, names, values, durability=self.durability), [])  # noqa: B023
            failed = [r.error for r in results if not r.ok]
            if failed:
                logger.warning("kvtier stored %d of %d chunks: %s", len(names) - len(failed), len(names), failed[0])

    # -- RemoteConnector -------------------------------------------------------------

    async def exists(self, key: CacheEngineKey) -> bool:
        return await self._off_loop(self.exists_sync, key)

    def exists_sync(self, key: CacheEngineKey) -> bool:
        return self._prefix([key]) == 1

    async def get(self, key: CacheEngineKey) -> MemoryObj | None:
        return (await self._read_off_loop([key]))[0]

    async def put(self, key: CacheEngineKey, memory_obj: MemoryObj):
        await self._off_loop(self._put_many, [key], [memory_obj])

    async def list(self) -> List[str]:
        # kvtier keeps no reverse map from block keys to LMCache's key strings.
        return []

    async def close(self):
        with self._lock:
            self._client = None

    def remove_sync(self, key: CacheEngineKey) -> bool:
        groups = self._by_namespace([key])
        return any(
            self._call("delete", lambda c: c.delete(ns, [k for _, k in m])[0], False)  # noqa: B023
            for ns, m in groups.items()
        )

    def support_ping(self) -> bool:
        return True

    async def ping(self) -> int:
        ok = await self._off_loop(lambda: self._call("health", lambda c: c.health()[0], False))
        return 0 if ok else 1

    def support_batched_get(self) -> bool:
        return True

    async def batched_get(self, keys: List[CacheEngineKey]) -> List[MemoryObj | None]:
        return await self._read_off_loop(list(keys))

    def support_batched_put(self) -> bool:
        return True

    async def batched_put(self, keys: List[CacheEngineKey], memory_objs: List[MemoryObj]):
        await self._off_loop(self._put_many, list(keys), list(memory_objs))

    def support_batched_contains(self) -> bool:
        return True

    def batched_contains(self, keys: List[CacheEngineKey]) -> int:
        return self._prefix(list(keys))

    def support_batched_async_contains(self) -> bool:
        return True

    async def batched_async_contains(self, lookup_id: str, keys: List[CacheEngineKey], pin: bool = False) -> int:
        return await self._off_loop(self._prefix, list(keys))

    def support_batched_get_non_blocking(self) -> bool:
        return True

    async def batched_get_non_blocking(self, lookup_id: str, keys: List[CacheEngineKey]) -> List[MemoryObj]:
        """The chunks of the leading keys found; those after the first miss are released."""
        got = await self._read_off_loop(list(keys))
        prefix: List[MemoryObj] = []
        for obj in got:
            if obj is None:
                break
            prefix.append(obj)
        for obj in got[len(prefix) :]:
            if obj is not None:
                obj.ref_count_down()
        return prefix


class KvtierConnectorAdapter(ConnectorAdapter):
    """The plugin as a ``ConnectorAdapter``: LMCache hands it the plugin's instance name, so
    ``remote_storage_plugins: [kvtier.a, kvtier.b]`` gives two connectors, each configured
    by its own ``remote_storage_plugin.<instance>.*`` options."""

    def __init__(self):
        super().__init__("plugin://kvtier")

    def can_parse(self, url: str) -> bool:
        return url == "plugin://kvtier" or url.startswith("plugin://kvtier.")

    def create_connector(self, context) -> RemoteConnector:
        name = context.plugin_name or "kvtier"
        return KvtierConnector(context.loop, context.local_cpu_backend, context.config, plugin_name=name)
