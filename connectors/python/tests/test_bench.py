"""`kvtier-bench shm --quick` end to end: the numbers it prints come with their baselines."""

import json
import os
import pathlib
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
