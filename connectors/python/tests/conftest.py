"""A real `kvtier serve` process per test: its own temp data dir, OS-chosen ports, readiness
read from the JSON line it prints. The binary is $KVTIER_BIN (scripts/test.sh sets it)."""

import json
import os
import pathlib
import signal
import subprocess
import threading

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
# scripts/test.sh (CI) sets it: a skipped test (a missing wheel: `importorskip`) fails.
REQUIRE_ALL = os.environ.get("KVTIER_REQUIRE_ALL") == "1"


def _required(report):
    if REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped, but KVTIER_REQUIRE_ALL=1 requires every test to run: {report.longrepr}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _required(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _required(outcome.get_result())


BIN = os.environ.get("KVTIER_BIN", str(REPO / "target" / "debug" / "kvtier"))


def s3_table(key: str, secret: str) -> str:
    """The `[s3]` table of a node listening for S3 on a free port, with one key for every
    bucket."""
    return f"""
[s3]
listen = "127.0.0.1:0"
[[s3.keys]]
access_key = "{key}"
secret_key = "{secret}"
buckets = ["*"]
"""


class Server:
    def __init__(self, root: pathlib.Path, extra: str = "", memory: str = "64MiB", defaults: bool = False):
        """A small node (blocks up to 4 MiB), or with `defaults` the embedded defaults a user
        gets (1 GiB of memory, 8 GiB of SSD, blocks up to 64 MiB, 16 MiB object chunks)."""
        self.root = root
        self.config = root / "kvtier.toml"
        top = "" if defaults else 'max_block_size = "4MiB"'
        tiers = (
            ""
            if defaults
            else f"""[cpu]
capacity = "{memory}"
region_size = "4MiB"
[ssd]
capacity = "128MiB"
region_size = "4160KiB"
"""
        )
        self.config.write_text(
            f"""data_dir = "{root / "data"}"
{top}
[server]
listen = "127.0.0.1:0"
metrics_listen = ""
{tiers}
{extra}
"""
        )
        self.start()

    def start(self):
        self.stderr = open(self.root / "kvtier.stderr", "ab")
        self.proc = subprocess.Popen(
            [BIN, "serve", "--config", str(self.config)], stdout=subprocess.PIPE, stderr=self.stderr
        )
        ready = {}

        def read():
            for line in self.proc.stdout:
                if b'"event":"ready"' in line:
                    ready.update(json.loads(line))
                    return

        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(60)
        if not ready:
            self.proc.kill()
            raise RuntimeError(f"kvtier serve did not start: {(self.root / 'kvtier.stderr').read_text()}")
        self.grpc = ready["grpc"]
        self.unix = ready["unix"]
        self.shm = ready["shm"]
        self.lmcache = ready.get("lmcache")
        self.s3 = ready.get("s3")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path)
    yield s
    s.stop()


@pytest.fixture
def make_server(tmp_path):
    made = []

    def make(extra: str = "", name: str = "node", memory: str = "64MiB", defaults: bool = False):
        root = tmp_path / f"{name}{len(made)}"
        root.mkdir()
        s = Server(root, extra, memory, defaults)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()
