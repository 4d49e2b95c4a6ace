"""Driven by `kvtier-bench shm`: put/get of blocks from Python through the shared-memory data
plane and through gRPC, and numpy's memcpy of the same bytes, in one process and one run.
Prints one JSON object per phase: {"phase", "mib_s"} (median of the rounds)."""

import argparse
import json
import statistics
import time

import numpy as np

import kvtier

p = argparse.ArgumentParser()
p.add_argument("--unix", required=True)
p.add_argument("--shm", required=True)
p.add_argument("--size", type=int, required=True)
p.add_argument("--count", type=int, required=True)
p.add_argument("--batch", type=int, default=16)
p.add_argument("--rounds", type=int, default=3)
a = p.parse_args()

NS = "bench/shm"
src = [np.random.default_rng(i).integers(0, 255, a.size, dtype=np.uint8) for i in range(a.count)]
dst = [np.empty(a.size, dtype=np.uint8) for _ in range(a.count)]
for d in dst:
    d.fill(1)  # fault the destination pages in before timing, as the arena is prefaulted
shm = kvtier.Client(a.unix, shm_socket=a.shm, namespaces=[NS])
grpc = kvtier.Client(a.unix)
batches = [range(i, min(i + a.batch, a.count)) for i in range(0, a.count, a.batch)]
total_mib = a.size * a.count / (1 << 20)


def timed(fn):
    t = time.perf_counter()
    fn()
    return total_mib / (time.perf_counter() - t)


def memcpy():
    for b in batches:
        for i in b:
            np.copyto(dst[i], src[i])


def put(client, tag):
    def run():
        for b in batches:
            res = client.put(NS, [f"{tag}-{i}".encode() for i in b], [src[i] for i in b])
            assert all(r.ok and not r.existed for r in res), res

    return run


def get(client, tag):
    def run():
        for b in batches:
            got = client.get_into(NS, [f"{tag}-{i}".encode() for i in b], [dst[i] for i in b])
            assert got == [a.size] * len(b), got

    return run


results = {k: [] for k in ("memcpy", "shm_put", "shm_get", "grpc_put", "grpc_get")}
for r in range(a.rounds):
    # Phases alternate within each round so that drift on a shared machine hits all alike.
    results["memcpy"].append(timed(memcpy))
    results["shm_put"].append(timed(put(shm, f"s{r}")))
    results["shm_get"].append(timed(get(shm, f"s{r}")))
    assert all(np.array_equal(s, d) for s, d in zip(src, dst)), "shm get returned other bytes"
    results["grpc_put"].append(timed(put(grpc, f"g{r}")))
    results["grpc_get"].append(timed(get(grpc, f"g{r}")))
    grpc.delete(NS, [f"g{r}-{i}".encode() for i in range(a.count)])
    shm.delete(NS, [f"s{r}-{i}".encode() for i in range(a.count)])
for phase, xs in results.items():
    print(json.dumps({"phase": phase, "mib_s": statistics.median(xs)}), flush=True)
