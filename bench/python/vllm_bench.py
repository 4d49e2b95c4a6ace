"""Driven by `kvtier-bench vllm`: vLLM 0.32's own `fs` secondary tier and kvtier's tier, both
built by vLLM's SecondaryTierFactory over the same kind of primary chunk view and driven
through the SecondaryTierManager interface the way vLLM's TieringOffloadingManager drives
them: store jobs, lookups resolved across schedule steps, load (promotion) jobs.

Per tier (one working set per run; `kvtier-bench vllm` runs a large and a small one): engine
A stores every chunk; engine B (a second instance, as another vLLM process on the node would be) looks up
every request's chunks and loads them. Every loaded chunk is
checked: its first 8 bytes name the key it was stored under, and a sample is compared with
the stored bytes in full. Prints one JSON object per tier and phase.

With `--sched`: the scheduler-side cost of kvtier's shared-arena spec (`kvtier.vllm_shared`)
against vLLM's own CPU offloading spec, whose host buffer it replaces (see `sched`)."""

import argparse
import hashlib
import json
import mmap
import shutil
import statistics
import sys
import time
import uuid

import numpy as np
from vllm.v1.kv_offload.base import LookupResult, ReqContext, make_offload_key
from vllm.v1.kv_offload.config import (
    OffloadingCacheConfig,
    OffloadingConfig,
    OffloadingGroupConfig,
    OffloadingModelConfig,
    OffloadingParallelConfig,
)
from vllm.v1.kv_offload.tiering.base import ScheduleEndContext, TransferJob
from vllm.v1.kv_offload.tiering.factory import SecondaryTierFactory
from vllm.v1.kv_offload.tiering.spec import TieringOffloadingSpec

p = argparse.ArgumentParser()
p.add_argument("--unix", help="kvtier's gRPC address")
p.add_argument("--shm", help="kvtier's shm socket")
p.add_argument("--fs-root", required=True, help="root_dir of vLLM's fs tier")
p.add_argument("--size", type=int, required=True, help="chunk bytes")
p.add_argument("--count", type=int, required=True, help="chunks stored and loaded")
p.add_argument("--batch", type=int, default=16, help="chunks per job (one request's prefix)")
p.add_argument("--window", type=int, default=8, help="jobs in flight")
p.add_argument("--hot", action="store_true", help="this is the small working set: phases are suffixed _hot")
p.add_argument("--tiers", default="fs,kvtier")
p.add_argument("--sched", action="store_true", help="compare the scheduler side of kvtier's shared spec with vLLM's CPU spec")
a = p.parse_args()

END = ScheduleEndContext(new_req_ids=(), preempted_req_ids=())
SLOTS = a.batch * a.window
CHECK_EVERY = 16  # one chunk in this many is compared in full
STEP_S = 0.0001  # between scheduler steps while a lookup is pending


def config(extra: dict) -> OffloadingConfig:
    parallel = OffloadingParallelConfig(
        rank=0,
        world_size=1,
        tp_size=1,
        pp_size=1,
        pcp_size=1,
        dcp_size=1,
        data_parallel_index=0,
        data_parallel_size=1,
        data_parallel_rank_local=None,
        is_parallelism_agnostic=True,
    )
    config = OffloadingConfig(
        groups=(OffloadingGroupConfig(tokens_per_block=16, layer_names=("model.layers.0.attn",), group_id=0),),
        worker_kv_bytes_per_block=a.size,
        enable_kv_cache_events=False,
        extra_config=extra,
        engine_id=f"bench-{uuid.uuid4().hex[:8]}",
        model=OffloadingModelConfig(name="bench/llama-8b", dtype="bfloat16"),
        cache=OffloadingCacheConfig(tokens_per_hash=16, blocks_per_chunk=1),
        parallel=parallel,
    )
    return config


def spec() -> TieringOffloadingSpec:
    return TieringOffloadingSpec(config({"cpu_bytes_to_use": a.size, "secondary_tiers": []}))


def primary() -> np.ndarray:
    """A page-aligned chunk view, as vLLM's primary region is (O_DIRECT needs the alignment)."""
    buf = mmap.mmap(-1, SLOTS * a.size)
    view = np.frombuffer(buf, dtype=np.uint8).reshape(SLOTS, a.size)
    view[:] = np.random.default_rng(7).integers(0, 255, view.shape, dtype=np.uint8)
    return view


def key(i: int):
    return make_offload_key(hashlib.sha256(f"chunk-{i}".encode()).digest(), 0)


def tier_config(name: str) -> dict:
    if name == "fs":
        return {"type": "fs", "root_dir": a.fs_root}
    return {"type": "KvtierTier", "module_path": "kvtier.vllm", "address": a.unix, "shm_socket": a.shm}


def run_jobs(tier, view, numbers: range, submit, check) -> float:
    """Runs one job per `batch` key numbers, `window` in flight, each on its own group of
    primary slots (a group is reused only once its previous job finished). Returns seconds."""
    n_jobs = (len(numbers) + a.batch - 1) // a.batch
    group_of: dict[int, int] = {}
    free = list(range(a.window))
    done = 0
    started = time.perf_counter()
    for j in range(n_jobs):
        while not free:
            for r in tier.get_finished_jobs():
                assert r.success, f"job {r.job_id} failed"
                g = group_of.pop(r.job_id)
                check(r.job_id, view, g)
                free.append(g)
                done += 1
            if not free:
                time.sleep(0.0002)
        g = free.pop()
        group_of[j] = g
        keys = numbers[j * a.batch : (j + 1) * a.batch]
        chunk_ids = np.arange(g * a.batch, g * a.batch + len(keys), dtype=np.int64)
        submit(j, keys, chunk_ids)
    while done < n_jobs:
        for r in tier.get_finished_jobs():
            assert r.success, f"job {r.job_id} failed"
            check(r.job_id, view, group_of.pop(r.job_id))
            done += 1
        time.sleep(0.0002)
    return time.perf_counter() - started


def store(tier, view, numbers: range, stored_from: dict) -> float:
    """Stores every key from the slot its job was given, stamped with the key's number;
    `stored_from[i]` records that slot (its other bytes are the pattern's)."""
    ctx = ReqContext(req_id="store")

    def submit(j, keys, chunk_ids):
        for i, c in zip(keys, chunk_ids):
            view[c, :8] = np.frombuffer(np.int64(i).tobytes(), dtype=np.uint8)
            stored_from[i] = c
        tier.submit_store(TransferJob(j, [key(i) for i in keys], chunk_ids, False, ctx))

    secs = run_jobs(tier, view, numbers, submit, lambda *_: None)
    tier.drain_jobs()
    return secs


def lookup(tier, numbers: range) -> list[float]:
    """Each request looks up its chunks, then steps (on_schedule_end) until none is RETRY:
    the scheduler's view. Steps are 100 us apart (a real step is a model forward pass, during
    which the tier's threads run). Returns each request's seconds to a full answer."""
    latencies = []
    for j in range(0, len(numbers), a.batch):
        keys = [key(i) for i in numbers[j : j + a.batch]]
        ctx = ReqContext(req_id=f"lookup-{j}")
        tier.on_new_request(ctx)
        t = time.perf_counter()
        while True:
            res = [tier.lookup(k, ctx) for k in keys]
            if LookupResult.RETRY not in res:
                break
            tier.on_schedule_end(END)
            time.sleep(STEP_S)
        latencies.append(time.perf_counter() - t)
        assert all(r is LookupResult.HIT for r in res), f"request {j}: {res}"
    return latencies


def load(tier, view, numbers: range, pattern, stored_from: dict) -> float:
    ctx = ReqContext(req_id="load")
    keys_of = {}

    def submit(j, keys, chunk_ids):
        # Stale bytes in a slot must not pass the checks: stamps always, whole chunks where
        # the chunk is compared in full.
        for i, c in zip(keys, chunk_ids):
            if i % CHECK_EVERY == 0:
                view[c] = 0
            else:
                view[c, :8] = 0xFF
        keys_of[j] = keys
        tier.submit_load(TransferJob(j, [key(i) for i in keys], chunk_ids, True, ctx))

    def check(j, view, g):
        for n, i in enumerate(keys_of.pop(j)):
            got = view[g * a.batch + n]
            stamp = int(np.frombuffer(got[:8].tobytes(), dtype=np.int64)[0])
            assert stamp == i, f"slot of key {i} holds key {stamp}'s chunk"
            if i % CHECK_EVERY == 0:
                assert np.array_equal(got[8:], pattern[stored_from[i], 8:]), f"key {i}: bytes differ"

    return run_jobs(tier, view, numbers, submit, check)


def emit(tier: str, phase: str, **kw):
    print(json.dumps({"tier": tier, "phase": phase, **kw}), flush=True)


def new_tier(name, view):
    return SecondaryTierFactory.create_secondary_tier(tier_config(name), memoryview(view), spec())


def store_then_load(name: str, numbers: range, phase: str, with_lookup: bool):
    """Engine A stores `numbers`; engine B looks them up and loads them."""
    view = primary()
    pattern = view.copy()
    stored_from: dict[int, int] = {}
    mib = len(numbers) * a.size / (1 << 20)
    writer = new_tier(name, view)
    secs = store(writer, view, numbers, stored_from)
    emit(name, f"store{phase}", mib_s=mib / secs)
    writer.shutdown()
    reader = new_tier(name, view)
    if with_lookup:
        lat = sorted(lookup(reader, numbers))
        emit(name, "lookup", p50_us=statistics.median(lat) * 1e6, p99_us=lat[int(len(lat) * 0.99)] * 1e6)
    else:
        lookup(reader, numbers)  # a load follows a HIT; the latency is measured on the big set
    secs = load(reader, view, numbers, pattern, stored_from)
    emit(name, f"load{phase}", mib_s=mib / secs)
    stats = reader.get_stats() if hasattr(reader, "get_stats") else None
    reader.shutdown()
    print(f"{name}{phase}: done ({stats})", file=sys.stderr, flush=True)


def sched(name: str):
    """What each spec's manager costs vLLM's scheduler thread per chunk: a store is
    prepare_store + complete_store, a load is the lookups until answered + prepare_load +
    complete_load (kvtier answers RETRY once, pins in the background, then HIT: the time
    between steps is not counted, the steps are). No chunk bytes move: GPU workers copy them,
    the same kernels for both. vLLM's spec keeps its own buffer of `count` chunks."""
    if name == "cpu":
        from vllm.v1.kv_offload.cpu.spec import CPUOffloadingSpec

        mgr = CPUOffloadingSpec(config({"cpu_bytes_to_use": a.count * a.size})).get_manager()
    else:
        from kvtier.vllm_shared import KvtierSharedOffloadingSpec

        mgr = KvtierSharedOffloadingSpec(config({"kvtier_shm_socket": a.shm})).get_manager()
    drain = getattr(mgr, "drain", lambda: None)
    numbers = range(2 << 40, (2 << 40) + a.count)
    batches = [[key(i) for i in numbers[j : j + a.batch]] for j in range(0, len(numbers), a.batch)]
    busy = committing = 0.0
    for n, keys in enumerate(batches):
        ctx = ReqContext(req_id=f"store-{n}")
        mgr.on_new_request(ctx)
        t = time.perf_counter()
        out = mgr.prepare_store(keys, ctx)
        assert out is not None and len(out.keys_to_store) == len(keys), f"{name}: store {n} refused"
        mgr.complete_store(out.keys_to_store, ctx)
        busy += time.perf_counter() - t
        mgr.on_request_finished(ctx)
        # Stores are paced by the GPU copies; kvtier checksums each batch meanwhile.
        t = time.perf_counter()
        drain()
        committing += time.perf_counter() - t
    commits = {"commit_mib_s": a.count * a.size / (1 << 20) / committing} if name == "kvtier" else {}
    emit(name, "sched_store", us_per_chunk=busy / a.count * 1e6, **commits)
    busy, steps = 0.0, 0
    for n, keys in enumerate(batches):
        ctx = ReqContext(req_id=f"load-{n}")
        mgr.on_new_request(ctx)
        while True:
            t = time.perf_counter()
            res = [mgr.lookup(k, ctx) for k in keys]
            if LookupResult.RETRY in res:
                mgr.on_schedule_end(END)
            busy += time.perf_counter() - t
            steps += 1
            if LookupResult.RETRY not in res:
                break
            drain()  # the model's forward pass, during which the pins are answered
        assert all(r is LookupResult.HIT for r in res), f"{name}: request {n}: {res}"
        t = time.perf_counter()
        mgr.prepare_load(keys, ctx)
        mgr.complete_load(keys, ctx)
        mgr.on_request_finished(ctx)
        busy += time.perf_counter() - t
    drain()
    emit(name, "sched_load", us_per_chunk=busy / a.count * 1e6, steps_per_request=steps / len(batches))
    mgr.shutdown()


if a.sched:
    for name in ("cpu", "kvtier"):
        sched(name)
    sys.exit(0)

for name in a.tiers.split(","):
    if a.hot:
        store_then_load(name, range(1 << 40, (1 << 40) + a.count), "_hot", with_lookup=False)
    else:
        store_then_load(name, range(0, a.count), "", with_lookup=True)
    if name == "fs":
        shutil.rmtree(a.fs_root, ignore_errors=True)  # room on the disk for the next tier
