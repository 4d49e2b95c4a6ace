"""`kvtier-bench shm --quick` end to end: the numbers it prints come with their baselines."""

import json
import os
import pathlib
import re
import subprocess
import sys

BENCH = os.environ.get(
    "KVTIER_BENCH_BIN", str(pathlib.Path(__file__).resolve().parents[3] / "target" / "debug" / "kvtier-bench")
)


def test_shm_bench_reports_ratios_to_memcpy_and_grpc(tmp_path):
    out = subprocess.run(
        [BENCH, "shm", "--quick", "--json", "--python", sys.executable, "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    names = {r["bench"]: r for r in rows}
    assert set(names) == {
        "py_shm_put_2MiB",
        "py_shm_get_2MiB",
        "py_shm_vs_grpc_put_2MiB",
        "py_shm_vs_grpc_get_2MiB",
    }, names
    for r in rows:
        assert r["value"] > 0 and r["baseline"] > 0 and abs(r["ratio"] - r["value"] / r["baseline"]) < 1e-9, r


def test_vllm_bench_compares_kvtier_with_vllms_fs_tier(tmp_path):
    """Both tiers driven through vLLM's SecondaryTierManager interface; every loaded chunk
    is checked by the script, so a wrong byte fails the run."""
    out = subprocess.run(
        [BENCH, "vllm", "--quick", "--json", "--python", sys.executable, "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    rows = {r["bench"]: r for r in (json.loads(line) for line in out.stdout.splitlines() if line.startswith("{"))}
    assert set(rows) == {
        "vllm_store_2MiB",
        "vllm_load_2MiB",
        "vllm_store_hot_2MiB",
        "vllm_load_hot_2MiB",
        "vllm_lookup_p50",
        "vllm_lookup_p99",
        "vllm_sched_store_us_per_chunk",
        "vllm_sched_load_us_per_chunk",
    }, rows
    for r in rows.values():
        sched = r["bench"].startswith("vllm_sched")
        assert r["baseline_name"] == ("vLLM CPU offloading spec" if sched else "vLLM fs tier")
        expected = r["value"] / r["baseline"] if r["unit"] == "MiB/s" else r["baseline"] / r["value"]
        assert r["value"] > 0 and r["baseline"] > 0 and abs(r["ratio"] - expected) < 1e-9, r
    # The loads really went through kvtier: the tier loaded all 128 chunks, and the node
    # served at least that many gets, every one a hit. (A get can be counted twice: a block
    # evicted between the index read and the read is asked for again.)
    assert "'loaded_chunks': 128, 'failed_jobs': 0" in out.stderr, out.stderr[-2000:]
    served = re.search(r"kvtier \(big set\) served (\d+) gets: (.*)", out.stderr)
    assert served, out.stderr[-2000:]
    gets = int(served.group(1))
    hits = sum(int(part.split()[1]) for part in served.group(2).split(", "))
    assert gets >= 128 and hits == gets, served.group(0)


def test_lmcache_bench_compares_every_path_with_lmcaches_own_server(tmp_path):
    """LMCache's own code on each path, each chunk checked by the script."""
    out = subprocess.run(
        [BENCH, "lmcache", "--quick", "--json", "--python", sys.executable, "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    rows = {r["bench"]: r for r in (json.loads(line) for line in out.stdout.splitlines() if line.startswith("{"))}
    assert set(rows) == {f"lmcache_{p}_{op}_4MiB" for p in ("lm", "plugin", "native_l2") for op in ("put", "get")}, rows
    for r in rows.values():
        assert r["baseline_name"] == "lmcache.v1.server over lm://" and r["unit"] == "MiB/s"
        assert r["value"] > 0 and r["baseline"] > 0 and abs(r["ratio"] - r["value"] / r["baseline"]) < 1e-9, r
    # The gets really came from kvtier: 8 chunks per path, every one a hit.
    served = re.search(r"kvtier served (\d+) gets, (\d+) hits", out.stderr)
    assert served and int(served.group(1)) >= 24 and served.group(1) == served.group(2), out.stderr[-2000:]


def test_s3_bench_runs_boto3_against_kvtier_and_azures_sdk_against_azurite(tmp_path):
    """The clients the issue names: boto3 -> kvtier's S3 endpoint, azure-storage-blob ->
    Azurite, in one run; the script compares every object it reads with what it put."""
    out = subprocess.run(
        [BENCH, "s3", "--quick", "--json", "--clients", "boto3", "--python", sys.executable, "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    rows = {r["bench"]: r for r in (json.loads(line) for line in out.stdout.splitlines() if line.startswith("{"))}
    assert set(rows) == {"s3_boto3_put_2MiB", "s3_boto3_get_2MiB", "s3_boto3_get_p99_us"}, rows
    for r in rows.values():
        assert r["baseline_name"] == "Azurite (Blob API) via azure-storage-blob", r
        assert r["value"] > 0 and r["baseline"] > 0, r
    assert rows["s3_boto3_get_p99_us"]["unit"] == "us"
    # A throughput's ratio is value / baseline, a latency's baseline / value (higher is better).
    get, p99 = rows["s3_boto3_get_2MiB"], rows["s3_boto3_get_p99_us"]
    assert abs(get["ratio"] - get["value"] / get["baseline"]) < 1e-9, get
    assert abs(p99["ratio"] - p99["baseline"] / p99["value"]) < 1e-9, p99


def test_chaos_run_loses_nothing_acknowledged(tmp_path):
    """`kvtier-bench chaos --quick`, what CI runs of the fault run: three nodes as separate
    hosts (network namespaces), etcd, Azurite; writers through `kvtier cp`, `kvtier://` and
    S3 while twelve faults run one at a time (kill -9, SIGSTOP and a partition past the
    lease, Azurite stopped and frozen), in two rounds. Every acknowledged file must read back
    byte-exact from every node and from a wiped one, and be in Blob; no failed write may be
    there; the first round's files, deleted before the second round's faults, and the
    second's, deleted at the end, must stay deleted everywhere."""
    out = subprocess.run(
        [BENCH, "chaos", "--quick", "--json", "--python", sys.executable, "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert out.returncode == 0, out.stderr[-8000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    summary = next(r for r in rows if r["bench"] == "chaos")
    assert summary["faults"] == 12 and len(summary["faults_by_kind"]) == 5 and summary["rounds"] == 2, summary
    assert summary["files_acknowledged"] > 0 and summary["bytes_acknowledged"] > 0, summary
    bad_counts = ["files_lost", "files_corrupted", "files_missing_from_blob", "failed_but_present"]
    for bad in bad_counts + ["unknown_corrupted", "files_deleted_but_back"]:
        assert summary[bad] == 0, summary
    assert summary["settle_max_s"] is not None, summary
    names = {r["bench"] for r in rows}
    assert {"chaos_write_under_faults", "chaos_settle_max"} <= names, names
    # The nodes' logs outlive the run's scratch space: the evidence of whatever it found.
    logs = list(tmp_path.glob("chaos-logs/*/n*/*.stderr"))
    assert {p.parent.name for p in logs} == {"n1", "n2", "n3"}, out.stderr[-2000:]
    assert "chaos: the nodes' logs" in out.stderr


def test_chaos_run_stops_and_reports_before_a_round_the_disk_cannot_hold(tmp_path):
    """A fault run checks the free disk before each round: with too little it stops, still
    prints what its completed rounds found, names why, and fails (a 1000-fault run once
    died mid-round with the disk full and reported nothing)."""
    out = subprocess.run(
        [
            BENCH,
            "chaos",
            "--quick",
            "--json",
            "--min-free-gib",
            "1000000",
            "--python",
            sys.executable,
            "--dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode != 0, out.stdout[-2000:]
    assert "stopped before round 1" in out.stderr and "--min-free-gib 1000000" in out.stderr, out.stderr[-4000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    summary = next(r for r in rows if r["bench"] == "chaos")
    assert summary["stopped"].startswith("stopped before round 1"), summary
    assert summary["rounds"] == 0 and summary["faults"] == 0, summary
