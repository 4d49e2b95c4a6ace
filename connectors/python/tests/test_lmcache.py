"""kvtier as LMCache's remote store, through LMCache's own code (lmcache 0.5.6 from PyPI, CPU
tensors): its RemoteBackend over the `kvtier` remote storage plugin and over `lm://` (served
by `kvtier serve`), and its multiprocess-mode NativeConnectorL2Adapter over KvtierL2Client,
each built by LMCache's factories from the config a user writes. Each path stores chunks,
drops LMCache's local copies, reads them back byte-exact from kvtier, answers prefix lookups,
and turns a killed server into misses."""

import argparse
import asyncio
import json
import select
import subprocess
import threading
import time

import pytest

pytest.importorskip("lmcache", reason="the test venv (scripts/python-env.sh) has no lmcache")

import torch
from lmcache.utils import CacheEngineKey
from lmcache.v1.config import LMCacheEngineConfig
from lmcache.v1.distributed.api import ObjectKey
from lmcache.v1.distributed.l2_adapters import create_l2_adapter
from lmcache.v1.distributed.l2_adapters.config import (
    add_l2_adapters_args,
    parse_args_to_l2_adapters_config,
)
from lmcache.v1.memory_management import MemoryFormat, MemoryObjMetadata, TensorMemoryObj
from lmcache.v1.metadata import LMCacheMetadata
from lmcache.v1.storage_backend import RemoteBackend
from lmcache.v1.storage_backend.local_cpu_backend import LocalCPUBackend

from conftest import BIN

MODEL = "meta-llama/Llama-3.1-8B"
CHUNK = 16  # tokens per chunk; the layout is an 8B model's, with fewer layers
KV_SHAPE = (4, 2, CHUNK, 8, 128)  # layers, K/V, tokens, kv heads, head size
LM_SERVER = '[lmcache]\nlisten = "127.0.0.1:0"\n'


class Engine:
    """What an LMCache worker builds: a config, its metadata, the event loop, the local CPU
    backend (the buffer every remote read is allocated from) and a RemoteBackend."""

    def __init__(self, server, plugin=True, shm=True, worker=0, name="kvtier", cls="KvtierConnector", options=None):
        extra = {"save_chunk_meta": True}
        if plugin:
            extra.update(
                {
                    f"remote_storage_plugin.{name}.module_path": "kvtier.lmcache",
                    f"remote_storage_plugin.{name}.class_name": cls,
                    f"remote_storage_plugin.{name}.url": server.grpc,
                }
            )
            if shm:
                extra[f"remote_storage_plugin.{name}.shm_socket"] = server.shm
            for option, value in (options or {}).items():
                extra[f"remote_storage_plugin.{name}.{option}"] = value
        self.config = LMCacheEngineConfig.from_dict(
            {
                "chunk_size": CHUNK,
                "local_cpu": True,
                "max_local_cpu_size": 0.1,
                "remote_serde": "naive",
                "blocking_timeout_secs": 5,
                "remote_storage_plugins": [name] if plugin else None,
                "remote_url": None if plugin else f"lm://{server.lmcache}",
                "extra_config": extra,
            }
        )
        self.metadata = LMCacheMetadata(
            model_name=MODEL,
            world_size=2,
            local_world_size=2,
            worker_id=worker,
            local_worker_id=worker,
            kv_dtype=torch.bfloat16,
            kv_shape=KV_SHAPE,
            chunk_size=CHUNK,
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.cpu = LocalCPUBackend(config=self.config, metadata=self.metadata, dst_device="cpu")
        self.backend = RemoteBackend(
            self.config, self.metadata, self.loop, self.cpu, dst_device="cpu", plugin_name=name if plugin else None
        )
        assert self.backend.connection is not None, "LMCache created the connector"

    def key(self, i):
        return CacheEngineKey(MODEL, self.metadata.world_size, self.metadata.worker_id, 0xC0FFEE00 + i, torch.bfloat16)

    def chunk(self, seed):
        conn = self.backend.connection.getWrappedConnector()
        obj = self.cpu.allocate(conn.meta_shapes, conn.meta_dtypes, conn.meta_fmt)
        g = torch.Generator().manual_seed(seed)
        obj.tensor.copy_(torch.randn(obj.tensor.shape, generator=g).to(obj.tensor.dtype))
        return obj

    def store(self, keys, objs):
        """LMCache's batched put; returns once every key's write completed (and releases
        the chunks, as LMCache's storage manager does)."""
        done = []
        finished = threading.Event()

        def one_done(key):
            done.append(key)
            if len(done) == len(keys):
                finished.set()

        self.backend.batched_submit_put_task(keys, objs, on_complete_callback=one_done)
        assert finished.wait(20), "puts finished"
        for o in objs:
            o.ref_count_down()

    def contains(self, keys):
        lookup = self.backend.batched_async_contains("lookup", keys)
        return asyncio.run_coroutine_threadsafe(lookup, self.loop).result(10)

    def close(self):
        self.backend.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def raw(obj):
    return bytes(obj.byte_array)


def store_drop_and_read_back(server, make):
    """Stores 6 chunks from one engine, reads them from a second (empty local cache)."""
    writer = make(server)
    keys = [writer.key(i) for i in range(6)]
    objs = [writer.chunk(i) for i in range(6)]
    expected = [raw(o) for o in objs]
    writer.store(keys, objs)
    writer.close()

    reader = make(server)
    got = reader.backend.batched_get_blocking(keys)
    assert [raw(g) for g in got] == expected, "byte-exact after LMCache's own buffers are gone"
    assert all(g.get_shapes() == reader.chunk(0).get_shapes() for g in got)
    assert got[0].get_dtypes() == [torch.bfloat16]
    assert reader.backend.contains(keys[3]) and not reader.backend.contains(reader.key(99))
    # Prefix lookup: 0..3 stored, 99 not, 5 stored after it: the hit prefix is 4.
    assert reader.contains(keys[:4] + [reader.key(99), keys[5]]) == 4
    assert reader.contains(keys) == 6
    assert reader.contains([reader.key(98)] + keys) == 0
    return reader, keys, expected


def kill_and_miss(server, reader, keys):
    server.kill9()
    assert reader.backend.get_blocking(keys[0]) is None
    assert reader.backend.batched_get_blocking(keys[:2]) == [None, None]
    assert not reader.backend.contains(keys[0])
    assert reader.contains(keys) == 0
    reader.store([reader.key(50)], [reader.chunk(50)])  # no exception; logged


@pytest.mark.parametrize("shm", [True, False], ids=["shm", "grpc"])
def test_plugin_connector_stores_and_reads_chunks_through_lmcache(make_server, shm):
    server = make_server()
    reader, keys, _ = store_drop_and_read_back(server, lambda s: Engine(s, plugin=True, shm=shm))
    # kvtier counts the model's namespace.
    stats = {
        n["namespace"]: n for n in reader.backend.connection.getWrappedConnector()._connected().stats()["namespaces"]
    }
    ns = stats[f"lmcache/{MODEL}/ws2.w0.bfloat16"]
    assert ns["puts"] == 6 and ns["hits"] >= 6
    kill_and_miss(server, reader, keys)
    reader.close()


def test_chunks_slower_to_load_than_to_recompute_are_not_reported(make_server):
    """With `max_load_us` below what kvtier expects a chunk to take (a chunk from memory
    here: tens of microseconds), the lookup reports no prefix and LMCache recomputes; a
    generous budget reports every chunk (issue 20)."""
    server = make_server()
    writer = Engine(server)
    keys = [writer.key(i) for i in range(3)]
    writer.store(keys, [writer.chunk(i) for i in range(3)])
    writer.close()
    strict = Engine(server, options={"max_load_us": 1})
    assert strict.contains(keys) == 0
    assert strict.backend.connection.getWrappedConnector().slow_chunks >= 3
    strict.close()
    ample = Engine(server, options={"max_load_us": 10_000_000, "pin_ms": 500})
    assert ample.contains(keys) == 3
    ample.close()


def test_named_plugin_instances_read_their_own_options(make_server):
    """`remote_storage_plugins: [kvtier.a, kvtier.b]` through KvtierConnectorAdapter: two
    connectors on two servers, each configured under its instance name."""
    a, b = make_server(name="a"), make_server(name="b")
    ea = Engine(a, name="kvtier.a", cls="KvtierConnectorAdapter")
    eb = Engine(b, name="kvtier.b", cls="KvtierConnectorAdapter")
    assert ea.backend.connection.getWrappedConnector().url == a.grpc
    assert eb.backend.connection.getWrappedConnector().url == b.grpc
    obj = ea.chunk(3)
    expected = raw(obj)
    ea.store([ea.key(3)], [obj])
    assert raw(ea.backend.get_blocking(ea.key(3))) == expected
    assert eb.backend.get_blocking(eb.key(3)) is None, "b is another store"
    ea.close()
    eb.close()


def test_plugin_connector_starts_with_the_server_down_and_recovers(make_server):
    server = make_server()
    engine = Engine(server)
    server.kill9()
    key = engine.key(1)
    engine.store([key], [engine.chunk(1)])
    assert engine.backend.get_blocking(key) is None
    server.start()
    engine.backend.connection.getWrappedConnector().url = server.grpc
    engine.backend.connection.getWrappedConnector().shm_socket = server.shm
    engine.backend.connection.getWrappedConnector()._client = None
    time.sleep(1.1)  # past the reconnect pause
    obj = engine.chunk(2)
    expected = raw(obj)
    engine.store([key], [obj])
    assert raw(engine.backend.get_blocking(key)) == expected
    engine.close()


def test_lm_protocol_works_unchanged_and_shares_chunks_with_the_plugin(make_server):
    server = make_server(LM_SERVER)
    assert server.lmcache, "kvtier serve listens for lm://"
    reader, keys, expected = store_drop_and_read_back(server, lambda s: Engine(s, plugin=False))
    # What LMCache stored over lm:// is what the plugin connector reads.
    plugin = Engine(server, plugin=True)
    assert [raw(g) for g in plugin.backend.batched_get_blocking(keys)] == expected
    plugin.close()
    kill_and_miss(server, reader, keys)
    reader.close()


def test_partial_chunks_come_back_with_their_own_shape(make_server):
    server = make_server(LM_SERVER)
    for plugin in (True, False):
        engine = Engine(server, plugin=plugin)
        full = engine.chunk(7)
        # The last chunk of a prompt holds fewer tokens: LMCache stores it with its own shape.
        tokens = 5
        shape = list(full.get_shapes()[0])
        shape[2] = tokens
        part = engine.cpu.allocate([torch.Size(shape)], [torch.bfloat16], full.get_memory_format())
        part.tensor.copy_(full.tensor[:, :, :tokens, :])
        key = engine.key(200 + plugin)
        expected = raw(part)
        engine.store([key], [part])
        got = engine.backend.get_blocking(key)
        assert raw(got) == expected
        assert list(got.get_shapes()[0]) == shape, f"plugin={plugin}"
        engine.close()


# -- multiprocess mode: the native_plugin L2 adapter ------------------------------------


def l2_adapter(server, shm=True, **options):
    """The adapter LMCache's MP server builds from `--l2-adapter <json>`."""
    params = {"address": server.grpc, **options}
    if shm:
        params["shm_socket"] = server.shm
    spec = {
        "type": "native_plugin",
        "module_path": "kvtier.lmcache",
        "class_name": "KvtierL2Client",
        "adapter_params": params,
    }
    parser = add_l2_adapters_args(argparse.ArgumentParser())
    config = parse_args_to_l2_adapters_config(parser.parse_args(["--l2-adapter", json.dumps(spec)]))
    return create_l2_adapter(config.adapters[0])


def mp_obj(seed, elements=64 * 1024):
    t = torch.empty(elements, dtype=torch.bfloat16)
    t.copy_(torch.randn(elements, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16))
    meta = MemoryObjMetadata(
        shape=torch.Size([elements]),
        dtype=torch.bfloat16,
        address=t.data_ptr(),
        phy_size=2 * elements,
        fmt=MemoryFormat.KV_2LTD,
        ref_count=1,
    )
    return TensorMemoryObj(t, meta, parent_allocator=None)


def wait(fd, timeout=20):
    assert select.select([fd], [], [], timeout)[0], "the adapter signalled"
    from lmcache.v1.platform import consume_fd

    try:
        consume_fd(fd)
    except BlockingIOError:
        pass


def okey(i, rank=0):
    return ObjectKey(chunk_hash=ObjectKey.IntHash2Bytes(0xABC000 + i), model_name=MODEL, kv_rank=rank)


def store(adapter, keys, objs):
    task = adapter.submit_store_task(keys, objs)
    deadline = time.time() + 20
    while time.time() < deadline:
        wait(adapter.get_store_event_fd())
        done = adapter.pop_completed_store_tasks()
        if task in done:
            return done[task].is_successful()
    raise AssertionError("the store never completed")


def lookup(adapter, keys):
    task = adapter.submit_lookup_and_lock_task(keys, {})
    while (bitmap := adapter.query_lookup_and_lock_result(task)) is None:
        wait(adapter.get_lookup_and_lock_event_fd())
    return [bitmap.test(i) for i in range(len(keys))]


def load(adapter, keys, objs):
    task = adapter.submit_load_task(keys, objs)
    while (bitmap := adapter.query_load_result(task)) is None:
        wait(adapter.get_load_event_fd())
    return [bitmap.test(i) for i in range(len(keys))]


@pytest.mark.parametrize("shm", [True, False], ids=["shm", "grpc"])
def test_native_l2_adapter_stores_looks_up_and_loads(make_server, shm):
    server = make_server()
    adapter = l2_adapter(server, shm)
    keys = [okey(i) for i in range(8)]
    objs = [mp_obj(i) for i in range(8)]
    assert store(adapter, keys, objs)
    assert lookup(adapter, keys[:3] + [okey(99)]) == [True, True, True, False]
    fresh = [mp_obj(1000 + i) for i in range(8)]
    assert load(adapter, keys, fresh) == [True] * 8
    assert all(raw(a) == raw(b) for a, b in zip(objs, fresh)), "byte-exact"
    # A buffer of another size is not a load (the stored chunk does not fill it).
    assert load(adapter, [keys[0]], [mp_obj(5, elements=1024)]) == [False]
    # Delete (LMCache's L2 eviction) removes them from kvtier.
    adapter.delete(keys[:2])
    assert lookup(adapter, keys[:3]) == [False, False, False]
    assert lookup(adapter, keys[2:4]) == [True, True]
    # The server killed: misses and failed stores, no exceptions.
    server.kill9()
    assert load(adapter, keys[2:4], [mp_obj(1), mp_obj(2)]) == [False, False]
    assert lookup(adapter, keys[2:4]) == [False, False]
    assert not store(adapter, [okey(50)], [mp_obj(50)])
    assert adapter.report_status()["is_healthy"]
    adapter.close()


def test_native_l2_adapter_reports_no_chunk_slower_to_load_than_to_recompute(make_server):
    """`max_load_us` in the adapter's params: below what kvtier expects a chunk to take (from
    memory here: tens of microseconds) the lookup finds nothing and LMCache recomputes; a
    generous budget finds every chunk, and they load (issue 20)."""
    server = make_server()
    writer = l2_adapter(server)
    keys = [okey(i) for i in range(3)]
    objs = [mp_obj(i) for i in range(3)]
    assert store(writer, keys, objs)
    writer.close()
    strict = l2_adapter(server, max_load_us=1)
    assert lookup(strict, keys) == [False, False, False]
    strict.close()
    ample = l2_adapter(server, max_load_us=10_000_000, pin_ms=500)
    assert lookup(ample, keys) == [True, True, True]
    fresh = [mp_obj(100 + i) for i in range(3)]
    assert load(ample, keys, fresh) == [True] * 3
    assert all(raw(a) == raw(b) for a, b in zip(objs, fresh)), "byte-exact"
    ample.close()


def test_native_l2_client_refuses_bad_input_with_clear_errors(make_server):
    import kvtier.lmcache as kl

    with pytest.raises(kvtier_errors(), match="namespace_prefix"):
        kl.KvtierL2Client("127.0.0.1:1", namespace_prefix="../x")
    with pytest.raises(kvtier_errors(), match="durability"):
        kl.KvtierL2Client("127.0.0.1:1", durability="sometimes")
    server = make_server()
    c = kl.KvtierL2Client(server.grpc)
    with pytest.raises(kvtier_errors(), match="2 keys for 1 buffer"):
        c.submit_batch_set(["m@0@0@ab", "m@0@0@cd"], [memoryview(bytearray(4))])
    with pytest.raises(kvtier_errors(), match="read-only"):
        c.submit_batch_get(["m@0@0@ab"], [memoryview(b"1234")])
    # A key not in LMCache's form is a failed key, not an exception.
    fid = c.submit_batch_set(["not-a-key", "m@00000000@0@ab"], [memoryview(bytearray(4)), memoryview(bytearray(4))])
    select.select([c.event_fd()], [], [], 10)
    done = {}
    deadline = time.time() + 10
    while fid not in done and time.time() < deadline:
        done.update({d[0]: d for d in c.drain_completions()})
        time.sleep(0.01)
    _, ok, _, results = done[fid]
    assert not ok and results == [False, True]
    c.close()
    fid = c.submit_batch_exists(["m@00000000@0@ab"])
    time.sleep(0.05)
    assert [d for d in c.drain_completions() if d[0] == fid][0][1:3] == (False, "the client is closed")


def kvtier_errors():
    import kvtier

    return kvtier.KvtierError


def test_kvtier_stat_shows_lmcache_hit_rates_per_model(make_server):
    server = make_server(LM_SERVER)
    engine = Engine(server, plugin=False)
    keys = [engine.key(i) for i in range(3)]
    engine.store(keys, [engine.chunk(i) for i in range(3)])
    engine.backend.batched_get_blocking(keys + [engine.key(9)])
    engine.close()
    out = subprocess.run([BIN, "stat", "--server", server.grpc], capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith(f"lmcache/{MODEL}/ws2.w0.bfloat16"))
    assert "75.0%" in line, out
