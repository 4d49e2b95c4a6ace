#!/usr/bin/env bash
# Creates (or reuses) the Python venv the connector tests and benchmarks run in:
# vLLM from PyPI (pinned: the offload API is experimental and changes between
# releases), pytest and maturin. It is ~8 GB, so it lives outside the repo and
# is reused when its pinned versions are already installed.
#
# Prints the venv's path on stdout; everything else goes to stderr.
set -euo pipefail

VLLM_VERSION=0.32.0
VENV="${KVTIER_VENV:-$HOME/.cache/kvtier/venv-vllm}"
STAMP="$VENV/.kvtier-stamp"
LMCACHE_VERSION=0.5.6
# s3fs and boto3: real S3 clients for the S3 endpoint tests (PyTorch DCP over s3fs among them);
# azure-storage-blob: the baseline of `kvtier-bench s3` (boto3 -> kvtier vs Azure's SDK -> Azurite).
WANT="vllm==$VLLM_VERSION lmcache==$LMCACHE_VERSION s3fs==2025.12.0 boto3==1.41.5 azure-storage-blob==12.31.1 pytest==8.4.2 maturin==1.9.6"
# NIXL (its OBJ plugin drives the S3 endpoint), without its dependencies: it asks for a torch
# that would replace vLLM's; it needs only numpy. Not the `nixl` meta package vLLM imports
# (`nixl._api`): with vLLM's CUDA 13 torch it picks nixl-cu13, whose OBJ plugin needs NVIDIA's
# libcuobjclient (not on PyPI); the tests bind `nixl` to nixl-cu12 as that package would.
NODEPS="nixl-cu12==1.5.1"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT $NODEPS" ]] && "$VENV/bin/python" -c 'import vllm' 2>/dev/null; then
    echo "$VENV"
    exit 0
fi

echo "python-env: creating $VENV with $WANT (first run: ~5 minutes, ~8 GB)" >&2
# A venv that exists but fails the check above is broken (an interrupted install, files removed
# from site-packages): pip would take its recorded packages as installed and leave it broken,
# so it is made again from nothing.
rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip >&2
# shellcheck disable=SC2086
"$VENV/bin/pip" install --quiet $WANT >&2
# shellcheck disable=SC2086
"$VENV/bin/pip" install --quiet --no-deps $NODEPS >&2
echo "$WANT $NODEPS" > "$STAMP"
echo "$VENV"
