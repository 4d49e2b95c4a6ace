"""The Python side of `kvtier-bench lmcache`: LMCache 0.5.6's own code storing and reading
chunks through each path to kvtier, and through `lm://` to LMCache's own server
(`python -m lmcache.v1.server`), the baseline. Prints one JSON object per path and phase:
{"path", "op", "mib_s", "chunks", "chunk_bytes"}. Every chunk read is compared with what
was stored; a wrong byte fails the run."""

import argparse
import asyncio
import json
import select
import sys
import threading
import time
import zlib

import torch
from lmcache.utils import CacheEngineKey
from lmcache.v1.config import LMCacheEngineConfig
from lmcache.v1.distributed.api import ObjectKey
from lmcache.v1.distributed.l2_adapters import create_l2_adapter
from lmcache.v1.distributed.l2_adapters.config import add_l2_adapters_args, parse_args_to_l2_adapters_config
from lmcache.v1.memory_management import MemoryFormat, MemoryObjMetadata, TensorMemoryObj
from lmcache.v1.metadata import LMCacheMetadata
from lmcache.v1.platform import consume_fd
from lmcache.v1.storage_backend import RemoteBackend
from lmcache.v1.storage_backend.local_cpu_backend import LocalCPUBackend

MODEL = "bench/llama-8b"
TOKENS = 256


class Engine:
    def __init__(self, a, remote_url=None, plugin=False):
        extra = {}
        if plugin:
            extra = {
                "remote_storage_plugin.kvtier.module_path": "kvtier.lmcache",
                "remote_storage_plugin.kvtier.class_name": "KvtierConnector",
                "remote_storage_plugin.kvtier.url": a.grpc,
                "remote_storage_plugin.kvtier.shm_socket": a.shm,
            }
        chunk = 2 * a.layers * TOKENS * 8 * 128 * 2
        self.config = LMCacheEngineConfig.from_dict(
            {
                "chunk_size": TOKENS,
                "local_cpu": True,
                "max_local_cpu_size": (a.count + 2) * chunk / 1e9 + 0.1,
                "remote_serde": "naive",
                "blocking_timeout_secs": 120,
                "remote_storage_plugins": ["kvtier"] if plugin else None,
                "remote_url": remote_url,
                "extra_config": extra,
            }
        )
        self.metadata = LMCacheMetadata(
            model_name=MODEL, world_size=1, local_world_size=1, worker_id=0, local_worker_id=0,
            kv_dtype=torch.bfloat16, kv_shape=(a.layers, 2, TOKENS, 8, 128), chunk_size=TOKENS,
        )
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.cpu = LocalCPUBackend(config=self.config, metadata=self.metadata, dst_device="cpu")
        self.backend = RemoteBackend(
            self.config, self.metadata, self.loop, self.cpu, dst_device="cpu", plugin_name="kvtier" if plugin else None
        )
        conn = self.backend.connection.getWrappedConnector()
        self.layout = (conn.meta_shapes, conn.meta_dtypes, conn.meta_fmt)

    def close(self):
        self.backend.close()
        self.loop.call_soon_threadsafe(self.loop.stop)


def chunks(engine, a):
    objs = []
    for i in range(a.count):
        obj = engine.cpu.allocate(*engine.layout)
        n = obj.tensor.numel()
        # A different pattern per chunk, so a chunk read under another's key is caught.
        obj.tensor.view(-1).view(torch.int16).copy_((torch.arange(n, dtype=torch.int32) * (2 * i + 3) % 65521 - 32760).to(torch.int16))
        objs.append(obj)
    return objs


def remote_path(a, name, **kw):
    # Keys of their own per path: no path finds chunks another already stored.
    base = zlib.crc32(name.encode()) << 20
    keys = [CacheEngineKey(MODEL, 1, 0, base + i, torch.bfloat16) for i in range(a.count)]
    writer = Engine(a, **kw)
    objs = chunks(writer, a)
    expected = [bytes(o.byte_array) for o in objs]
    size = len(expected[0])
    done, finished = [], threading.Event()

    def one(key):
        done.append(key)
        if len(done) == len(keys):
            finished.set()

    t = time.perf_counter()
    writer.backend.batched_submit_put_task(keys, objs, on_complete_callback=one)
    assert finished.wait(600), f"{name}: puts did not finish"
    put_s = time.perf_counter() - t
    for o in objs:
        o.ref_count_down()
    writer.close()
    reader = Engine(a, **kw)  # a fresh local cache: every byte comes from the remote store
    t = time.perf_counter()
    got = reader.backend.batched_get_blocking(keys)
    get_s = time.perf_counter() - t
    for i, g in enumerate(got):
        assert g is not None and bytes(g.byte_array) == expected[i], f"{name}: chunk {i} wrong or missing"
        g.ref_count_down()
    reader.close()
    report(name, put_s, get_s, a.count, size)


def report(name, put_s, get_s, count, size):
    for op, secs in (("put", put_s), ("get", get_s)):
        print(json.dumps({"path": name, "op": op, "mib_s": count * size / secs / 2**20, "chunks": count, "chunk_bytes": size}), flush=True)


def native_l2_path(a):
    params = {"address": a.grpc, "shm_socket": a.shm}
    spec = {"type": "native_plugin", "module_path": "kvtier.lmcache", "class_name": "KvtierL2Client", "adapter_params": params}
    parser = add_l2_adapters_args(argparse.ArgumentParser())
    adapter = create_l2_adapter(parse_args_to_l2_adapters_config(parser.parse_args(["--l2-adapter", json.dumps(spec)])).adapters[0])
    elements = a.layers * 2 * TOKENS * 8 * 128

    def obj(fill):
        t = torch.full((elements,), fill, dtype=torch.int16).view(torch.bfloat16)
        meta = MemoryObjMetadata(shape=torch.Size([elements]), dtype=torch.bfloat16, address=t.data_ptr(), phy_size=2 * elements, fmt=MemoryFormat.KV_2LTD, ref_count=1)
        return TensorMemoryObj(t, meta, parent_allocator=None)

    def wait(fd):
        select.select([fd], [], [], 600)
        try:
            consume_fd(fd)
        except BlockingIOError:
            pass

    keys = [ObjectKey(chunk_hash=ObjectKey.IntHash2Bytes(0x1200 + i), model_name=MODEL, kv_rank=0) for i in range(a.count)]
    objs = [obj(i + 1) for i in range(a.count)]
    t = time.perf_counter()
    task = adapter.submit_store_task(keys, objs)
    while task not in (done := adapter.pop_completed_store_tasks()):
        wait(adapter.get_store_event_fd())
    put_s = time.perf_counter() - t
    assert done[task].is_successful(), "native L2: the store failed"
    fresh = [obj(0) for _ in range(a.count)]
    t = time.perf_counter()
    task = adapter.submit_load_task(keys, fresh)
    while (bitmap := adapter.query_load_result(task)) is None:
        wait(adapter.get_load_event_fd())
    get_s = time.perf_counter() - t
    assert bitmap.popcount() == a.count, "native L2: chunks missing"
    for i, f in enumerate(fresh):
        assert bytes(f.byte_array) == bytes(objs[i].byte_array), f"native L2: chunk {i} wrong"
    adapter.close()
    report("native_l2", put_s, get_s, a.count, 2 * elements)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--grpc", required=True)
    p.add_argument("--shm", required=True)
    p.add_argument("--lm", required=True, help="kvtier's lm:// listener")
    p.add_argument("--lmcache-server", required=True, help="LMCache's own server")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--count", type=int, default=16)
    a = p.parse_args()
    remote_path(a, "lmcache_server", remote_url=f"lm://{a.lmcache_server}")
    remote_path(a, "lm", remote_url=f"lm://{a.lm}")
    remote_path(a, "plugin", plugin=True)
    native_l2_path(a)


if __name__ == "__main__":
    sys.exit(main())
