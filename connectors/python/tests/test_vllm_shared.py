"""kvtier's arena as vLLM 0.32's host offload buffer (`kvtier.vllm_shared`), against a real
`kvtier serve`: the spec is built by vLLM's OffloadingSpecFactory, the scheduler side is the
real manager, and the worker is KvtierArenaWorker over kvtier's mapped arena.

No GPU: vLLM's CPUOffloadingWorker (CUDA kernels) is replaced by `CpuCopies`, which takes the
same arguments and makes the same copies on CPU tensors through the same region views. What
runs here is everything of ours: slot allocation and pins, chunk ids, the views' offsets per
tensor and rank, commits, arena changes. What does not: vLLM's kernel itself."""

import os
import uuid

import pytest

vllm = pytest.importorskip("vllm", reason="the vLLM venv (scripts/python-env.sh) is not active")

import torch  # noqa: E402
from vllm.v1.kv_offload.base import (  # noqa: E402
    CanonicalKVCacheRef,
    CanonicalKVCaches,
    CanonicalKVCacheTensor,
    GPULoadStoreSpec,
    LookupResult,
    ReqContext,
    TransferResult,
)
from vllm.v1.kv_offload.factory import OffloadingSpecFactory  # noqa: E402

import kvtier  # noqa: E402
import kvtier.vllm_shared as shared  # noqa: E402
from kvtier.vllm_shared import ROW, KvtierArenaWorker, KvtierSharedOffloadingSpec  # noqa: E402
from test_vllm import END, key, offloading_config  # noqa: E402

PAGES = (40960, 24576)  # two KV tensors: one rank's bytes of one block in each
BLOCKS = 32  # GPU blocks per tensor


class CpuCopies:
    """vLLM's CPUOffloadingWorker, for CPU tensors: its constructor, its views, its copies."""

    def __init__(self, kv_caches, blocks_per_chunk, num_cpu_chunks, mmap_region):
        assert blocks_per_chunk == 1
        self.region = mmap_region
        self.gpu = [t.tensor.view(-1, t.page_size_bytes) for t in kv_caches.tensors]
        self.cpu = [mmap_region.create_next_worker_view(t.page_size_bytes) for t in kv_caches.tensors]
        assert all(v.shape[0] == num_cpu_chunks for v in self.cpu)
        self.done = []

    def _copy(self, job_id, gpu_spec, cpu_spec, to_cpu):
        for g, c in zip(gpu_spec.block_ids, cpu_spec.block_ids):
            for gpu, cpu in zip(self.gpu, self.cpu):
                (cpu[c] if to_cpu else gpu[g]).copy_(gpu[g] if to_cpu else cpu[c])
        self.done.append(TransferResult(job_id=job_id, success=True))
        return True

    def submit_store(self, job_id, src_spec, dst_spec):
        return self._copy(job_id, src_spec, dst_spec, True)

    def submit_load(self, job_id, src_spec, dst_spec):
        return self._copy(job_id, dst_spec, src_spec, False)

    def get_finished(self):
        done, self.done = self.done, []
        return done

    def wait(self, job_ids):
        return

    def shutdown(self):
        self.region.cleanup()


def spec_for(server_or_socket, rank=0, world_size=1, dtype="bfloat16", extra=None):
    socket = getattr(server_or_socket, "shm", server_or_socket)
    config = offloading_config(
        {
            "spec_name": "KvtierSharedOffloadingSpec",
            "spec_module_path": "kvtier.vllm_shared",
            "kvtier_shm_socket": socket,
            **(extra or {}),
        },
        dtype=dtype,
        kv_bytes_per_block=sum(PAGES),
        rank=rank,
        world_size=world_size,
    )
    spec = OffloadingSpecFactory.create_spec(config)
    assert isinstance(spec, KvtierSharedOffloadingSpec)
    return spec


class Rank:
    """One GPU worker: its KV tensors (CPU stand-ins) and its KvtierArenaWorker."""

    def __init__(self, spec, seed=None):
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        self.gpu = [
            torch.randint(-128, 127, (BLOCKS, p), dtype=torch.int8, generator=gen)
            if gen
            else torch.zeros((BLOCKS, p), dtype=torch.int8)
            for p in PAGES
        ]
        kv = CanonicalKVCaches(
            tensors=[CanonicalKVCacheTensor(t, p) for t, p in zip(self.gpu, PAGES)],
            group_data_refs=[[CanonicalKVCacheRef(tensor_idx=i, page_size_bytes=p) for i, p in enumerate(PAGES)]],
        )
        self.worker = KvtierArenaWorker(spec, kv, make_inner=CpuCopies)

    def block(self, b):
        return b"".join(t[b].numpy().tobytes() for t in self.gpu)


def gpu_spec(blocks):
    return GPULoadStoreSpec(list(blocks), group_sizes=[len(blocks)], block_indices=[0])


_jobs = iter(range(1, 1 << 30))


def store(mgr, ranks, keys, blocks):
    """What the connector does for a request whose chunks `keys` sit in GPU blocks `blocks`."""
    ctx = ReqContext(req_id=f"store-{uuid.uuid4().hex[:6]}")
    mgr.on_new_request(ctx)
    out = mgr.prepare_store(keys, ctx)
    if out is None:
        return None
    chosen = [blocks[keys.index(k)] for k in out.keys_to_store]
    job = next(_jobs)
    for r in ranks:
        assert r.worker.submit_store(job, gpu_spec(chosen), out.store_spec)
        assert [t.job_id for t in r.worker.get_finished()] == [job]
    mgr.complete_store(out.keys_to_store, ctx)
    mgr.on_request_finished(ctx)
    mgr.drain()
    return out


def lookup(mgr, keys, ctx=None, steps=200):
    ctx = ctx or ReqContext(req_id=f"load-{uuid.uuid4().hex[:6]}")
    mgr.on_new_request(ctx)
    for _ in range(steps):
        res = [mgr.lookup(k, ctx) for k in keys]
        if all(r is LookupResult.HIT for r in res) or LookupResult.MISS in res:
            return res, ctx
        mgr.on_schedule_end(END)
        mgr.drain()
    raise AssertionError(f"lookups never settled: {res}")


def load(mgr, ranks, keys, ctx, blocks):
    spec = mgr.prepare_load(keys, ctx)
    job = next(_jobs)
    for r in ranks:
        assert r.worker.submit_load(job, spec, gpu_spec(blocks))
        assert [t.job_id for t in r.worker.get_finished()] == [job]
    mgr.complete_load(keys, ctx)
    mgr.on_request_finished(ctx)
    mgr.drain()


def test_chunks_one_engine_stores_are_loaded_by_another_through_the_arena(server):
    spec_a, spec_b = spec_for(server), spec_for(server)
    a, b = Rank(spec_a, seed=1), Rank(spec_b)
    mgr_a, mgr_b = spec_a.get_manager(), spec_b.get_manager()
    keys = [key(i) for i in range(8)]
    out = store(mgr_a, [a], keys, blocks=list(range(8, 16)))
    assert out.keys_to_store == keys
    assert all(
        int(c) * ROW < len(a.worker._inner[out.store_spec.arena_id].region._arena) for c in out.store_spec.chunk_ids
    )
    assert mgr_a.stats["stored_chunks"] == 8
    # Each chunk is one kvtier block: tensor 0's page, then tensor 1's.
    direct = kvtier.Client(server.unix).get(spec_a.namespace, [bytes(k) for k in keys])
    assert direct == [a.block(b) for b in range(8, 16)]
    # Storing them again allocates nothing.
    assert store(mgr_a, [a], keys[:3], blocks=[0, 1, 2]).keys_to_store == []

    res, ctx = lookup(mgr_b, keys)
    assert res == [LookupResult.HIT] * 8
    load(mgr_b, [b], keys, ctx, blocks=list(range(20, 28)))
    assert [b.block(i) for i in range(20, 28)] == [a.block(i) for i in range(8, 16)]
    assert mgr_b.stats["loaded_chunks"] == 8
    # No host buffer of vLLM's own: nothing in /dev/shm for either engine.
    for spec in (spec_a, spec_b):
        assert not os.path.exists(f"/dev/shm/vllm_offload_{spec.config.engine_id}.mmap")
    # A different dtype is another namespace: a miss, never another layout's bytes.
    res, _ = lookup(spec_for(server, dtype="float16").get_manager(), keys[:1])
    assert res == [LookupResult.MISS]
    for m in (mgr_a, mgr_b):
        m.shutdown()


def test_chunks_slower_to_load_than_to_recompute_are_misses(server):
    """`kvtier_max_load_us` below what kvtier expects a chunk to take (from memory here: tens
    of microseconds): lookups miss, nothing is pinned, and vLLM recomputes; a generous budget
    finds and loads every chunk (issue 20)."""
    spec_a = spec_for(server)
    a = Rank(spec_a, seed=3)
    mgr_a = spec_a.get_manager()
    keys = [key(100 + i) for i in range(3)]
    assert store(mgr_a, [a], keys, blocks=[0, 1, 2]).keys_to_store == keys
    strict = spec_for(server, extra={"kvtier_max_load_us": 1}).get_manager()
    res, _ = lookup(strict, keys)
    assert res[0] is LookupResult.MISS
    assert strict.stats["slow_chunks"] == 3 and strict.stats["hits"] == 0
    ample_spec = spec_for(server, extra={"kvtier_max_load_us": 10_000_000})
    b = Rank(ample_spec)
    ample = ample_spec.get_manager()
    res, ctx = lookup(ample, keys)
    assert res == [LookupResult.HIT] * 3 and ample.stats["slow_chunks"] == 0
    load(ample, [b], keys, ctx, blocks=[5, 6, 7])
    assert [b.block(i) for i in (5, 6, 7)] == [a.block(i) for i in (0, 1, 2)]
    for m in (mgr_a, strict, ample):
        m.shutdown()


def test_tensor_parallel_ranks_write_their_own_part_of_each_chunk(server):
    specs = [spec_for(server, rank=r, world_size=2) for r in range(2)]
    ranks = [Rank(s, seed=10 + r) for r, s in enumerate(specs)]
    mgr = specs[0].get_manager()  # one scheduler for both ranks
    keys = [key(100 + i) for i in range(4)]
    store(mgr, ranks, keys, blocks=[3, 5, 7, 9])
    direct = kvtier.Client(server.unix).get(specs[0].namespace, [bytes(k) for k in keys])
    assert direct == [ranks[0].block(b) + ranks[1].block(b) for b in (3, 5, 7, 9)]

    readers = [Rank(spec_for(server, rank=r, world_size=2)) for r in range(2)]
    mgr2 = spec_for(server, world_size=2).get_manager()
    res, ctx = lookup(mgr2, keys)
    assert res == [LookupResult.HIT] * 4
    load(mgr2, readers, keys, ctx, blocks=[0, 1, 2, 3])
    for r in range(2):
        assert [readers[r].block(i) for i in range(4)] == [ranks[r].block(b) for b in (3, 5, 7, 9)]
    for m in (mgr, mgr2):
        m.shutdown()


def test_pinned_chunks_outlive_deletes_and_the_server_and_a_restarted_server_is_mapped_anew(server, monkeypatch):
    monkeypatch.setattr(shared, "RECONNECT_S", 0.0)
    spec_w, spec_r = spec_for(server), spec_for(server)
    writer, reader = Rank(spec_w, seed=3), Rank(spec_r)
    mgr_w, mgr_r = spec_w.get_manager(), spec_r.get_manager()
    keys = [key(200 + i) for i in range(4)]
    store(mgr_w, [writer], keys, blocks=[0, 1, 2, 3])
    res, ctx = lookup(mgr_r, keys)
    assert res == [LookupResult.HIT] * 4
    _, waiting = lookup(mgr_r, keys[:1])  # a request that will still wait after the restart
    old_arena = next(iter(reader.worker._inner))

    # Between lookup and load: the chunks are deleted and kvtier is killed. The pins keep
    # the bytes where they were, and the mapping outlives the server.
    assert kvtier.Client(server.unix).delete(spec_w.namespace, [bytes(k) for k in keys]) == [True] * 4
    server.kill9()
    load(mgr_r, [reader], keys, ctx, blocks=[10, 11, 12, 13])
    assert [reader.block(i) for i in range(10, 14)] == [writer.block(i) for i in range(4)]
    # While it is down: misses and skipped stores, no exceptions.
    res, _ = lookup(mgr_r, [key(300)])
    assert res == [LookupResult.MISS]
    assert store(mgr_w, [writer], [key(301)], blocks=[4]) is None
    assert mgr_r.stats["errors"] >= 1

    server.start()  # a new process: a new arena
    out = None
    for _ in range(50):
        out = store(mgr_w, [writer], [key(302)], blocks=[5])
        if out is not None:
            break
    assert out is not None and out.store_spec.arena_id != old_arena
    # One load reads one arena: the waiting request's new lookups miss.
    res, _ = lookup(mgr_r, [keys[0], key(302)], waiting)
    assert res == [LookupResult.HIT, LookupResult.MISS]
    mgr_r.on_request_finished(waiting)
    res, ctx = lookup(mgr_r, [key(302)])
    assert res == [LookupResult.HIT]
    load(mgr_r, [reader], [key(302)], ctx, blocks=[20])
    assert reader.block(20) == writer.block(5)
    # No slot is left in the old arena, so the reader's worker unmapped it.
    assert list(reader.worker._inner) == [out.store_spec.arena_id]
    for m in (mgr_w, mgr_r):
        m.shutdown()


def test_a_missing_socket_setting_or_server_is_a_clear_error_or_a_miss(tmp_path):
    with pytest.raises(ValueError, match="kvtier_shm_socket"):
        spec_for("")
    spec = spec_for(str(tmp_path / "none.sock"))
    rank = Rank(spec)  # vLLM starts; the arena is mapped once there is one
    assert rank.worker._inner == {}
    mgr = spec.get_manager()
    res, _ = lookup(mgr, [key(1)])
    assert res == [LookupResult.MISS]
    assert store(mgr, [rank], [key(2)], blocks=[0]) is None
    mgr.shutdown()


def test_pins_beyond_the_session_limit_are_misses_not_stalls(make_server):
    server = make_server('[shm]\nsession_limit = "4MiB"\n')
    spec = spec_for(server)
    writer, mgr = Rank(spec, seed=4), spec.get_manager()
    chunk = sum(PAGES)
    keys = [key(400 + i) for i in range(72)]
    for i in range(0, len(keys), BLOCKS):
        store(mgr, [writer], keys[i : i + BLOCKS], blocks=list(range(len(keys[i : i + BLOCKS]))))
    reader = spec_for(server).get_manager()
    res, ctx = lookup(reader, keys)
    fits = (4 << 20) // chunk
    assert res[:fits] == [LookupResult.HIT] * fits and LookupResult.MISS in res, res
    reader.on_request_finished(ctx)
    reader.drain()
    # Released at the end of the request: the next request's lookups are hits again.
    res, _ = lookup(reader, keys[:fits])
    assert res == [LookupResult.HIT] * fits
    for m in (mgr, reader):
        m.shutdown()


def test_slots_are_held_only_as_long_as_vllm_can_still_use_them(server):
    spec = spec_for(server)
    writer, mgr = Rank(spec, seed=5), spec.get_manager()
    keys = [key(500 + i) for i in range(8)]
    store(mgr, [writer], keys, blocks=list(range(8)))
    held = lambda: sum(mgr._live.values())  # noqa: E731 (slots the manager holds in kvtier)
    assert held() == 0

    # A chunk is allocated once even if vLLM asks twice before the first store completed.
    ctx = ReqContext(req_id="twice")
    mgr.on_new_request(ctx)
    first = mgr.prepare_store([key(600), key(601)], ctx)
    again = mgr.prepare_store([key(601), key(602)], ctx)
    assert first.keys_to_store == [key(600), key(601)] and again.keys_to_store == [key(602)]
    assert held() == 3

    # Lookups pin the whole prompt; the load takes a prefix, and the rest is given back.
    res, reader = lookup(mgr, keys)
    assert res == [LookupResult.HIT] * 8 and held() == 3 + 8
    mgr.prepare_load(keys[:5], reader)
    mgr.drain()
    assert held() == 3 + 5

    # vLLM's reset drops in-flight transfers and never completes them: their slots are given
    # back at the end of the next step.
    mgr.reset_cache()
    mgr.on_schedule_end(END)
    mgr.drain()
    assert held() == 0
    res, _ = lookup(mgr, keys)
    assert res == [LookupResult.HIT] * 8, "the pins are released on the server too"
    assert kvtier.Client(server.unix).lookup(spec.namespace, [bytes(key(600))]) == [], "abandoned, not stored"
    mgr.shutdown()


def test_a_uid_kvtier_gives_a_private_window_is_refused_at_start(make_server):
    server = make_server("[shm]\nprivate_windows = true\n")
    with pytest.raises(shared.PrivateWindowError, match="namespaces"):
        spec_for(server).get_manager()
    with pytest.raises(shared.PrivateWindowError):
        Rank(spec_for(server))
    # The plain client works through its window: copies, same API.
    ns = "tenant-a/llama"
    c = kvtier.Client(server.unix, shm_socket=server.shm, namespaces=[ns])
    assert c.put(ns, [b"k"], [b"v" * 5000])[0].ok
    assert c.get(ns, [b"k"]) == [b"v" * 5000]
    session = kvtier.ShmSession(server.shm, [ns])
    assert session.arena.private and len(session.arena) == session.session_limit
