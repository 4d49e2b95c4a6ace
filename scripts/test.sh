#!/usr/bin/env bash
# The whole kvtier test suite, as CI runs it (.ci/run calls this script).
#
# Works on a fresh machine with the Rust toolchain: it installs what the tests need and
# runs formatting and lint checks, every unit, integration, CLI and benchmark-smoke test,
# the doc tests, and the Python package's tests (pytest, with vLLM from PyPI). The Blob
# tier's tests run against a real Azurite (npm), which scripts/azurite.sh installs and
# starts. Tests start real `kvtier` processes, kill -9 them, corrupt their files, fill a
# disk (a private tmpfs in a mount namespace, via `unshare`), and run nodes as separate
# hosts in network namespaces (`ip netns`, veth, a bridge) to cut one off.
set -euo pipefail
cd "$(dirname "$0")/.."
# A test whose dependency is missing fails here instead of skipping (testkit's require_all,
# the Python suite's conftest.py): CI must not pass on tests that did not run.
export KVTIER_REQUIRE_ALL=1

step() { printf '\n==> %s\n' "$*"; }

step "tools"
missing=()
for tool in unshare mount ip; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if ((${#missing[@]})); then
    # util-linux (unshare, mount) and iproute2 (ip: the multi-host tests' network
    # namespaces, veth and bridge); present on Debian, installed here when absent.
    apt-get update -qq && apt-get install -y -qq util-linux iproute2 >/dev/null
fi
cargo --version
if cargo nextest --version >/dev/null 2>&1; then
    runner=(cargo nextest run --workspace --locked --no-fail-fast)
else
    echo "cargo-nextest not installed; using cargo test"
    runner=(cargo test --workspace --locked --no-fail-fast)
fi

step "Azurite (Azure Blob emulator, from npm; the Blob tier's tests start their own)"
scripts/azurite.sh install
echo "azurite installed under ${KVTIER_CACHE:-$HOME/.cache/kvtier}/azurite"

step "moto (an S3-compatible server, from PyPI; the S3 backend's tests start their own)"
scripts/moto.sh install
echo "moto and the AWS CLI installed under ${KVTIER_CACHE:-$HOME/.cache/kvtier}/{moto,awscli}"

step "etcd (Debian etcd-server; the membership tests start their own)"
scripts/etcd.sh install
/usr/bin/etcd --version | sed -n 1p  # sed reads to the end: head would close the pipe early, and SIGPIPE fails pipefail

step "NVIDIA Dynamo's G4 client (kvbm-engine from crates.io, built outside the workspace once)"
scripts/dynamo.sh install
echo "kvbm-engine built under ${KVTIER_CACHE:-$HOME/.cache/kvtier}/dynamo"

step "format"
cargo fmt --all --check
cargo fmt --manifest-path connectors/dynamo/Cargo.toml --check

step "lint (clippy, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
CARGO_TARGET_DIR="${KVTIER_CACHE:-$HOME/.cache/kvtier}/dynamo/target" \
    cargo clippy --manifest-path connectors/dynamo/Cargo.toml --all-targets --locked -- -D warnings

step "layers (crates depend downwards, no module cycle: scripts/check-layers.py)"
python3 scripts/check-layers.py

step "tests"
"${runner[@]}"

step "doc tests"
cargo test --workspace --locked --doc

step "python package and vLLM connector (pytest, against real kvtier serve processes)"
# The venv (vLLM, pytest, maturin) is ~8 GB and lives outside the repo; created on first use.
venv="$(scripts/python-env.sh)"
# `pip install` of the package from the repo, as a user would (maturin builds the wheel).
# `test` brings the linters and the stub checker (ruff, mypy), pinned in pyproject.toml.
"$venv/bin/pip" install --quiet "./connectors/python[fsspec,test]"
"$venv/bin/ruff" check connectors/python
"$venv/bin/ruff" format --check connectors/python
cargo build --locked --bin kvtier --bin kvtier-bench
KVTIER_BIN="$PWD/target/debug/kvtier" KVTIER_BENCH_BIN="$PWD/target/debug/kvtier-bench" "$venv/bin/python" -m pytest -v -p no:cacheprovider -o tmp_path_retention_policy=failed connectors/python/tests

step "all tests passed"
