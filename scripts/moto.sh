#!/usr/bin/env bash
# moto's S3 server (PyPI `moto[server]`), an S3-compatible endpoint for the Blob tier's S3
# backend tests; and the AWS CLI (PyPI `awscli`), which the S3 endpoint's tests run.
#
#   scripts/moto.sh install           pip-installs moto[server] and awscrt into a venv under
#                                     $KVTIER_CACHE/moto, and awscli into one under
#                                     $KVTIER_CACHE/awscli (it pins its own botocore) (once)
#   scripts/moto.sh start DIR         starts it on a free port (log in DIR), creates the
#                                     bucket `kvtier`, and prints one line: "<endpoint> <pid>",
#                                     e.g. "http://127.0.0.1:41235 12345"
#
# Credentials are anything (moto does not check them). Stop it with kill PID.
set -euo pipefail
source "$(dirname "$0")/emulator-lib.sh"
venv="${KVTIER_CACHE:-$HOME/.cache/kvtier}/moto"
cli="${KVTIER_CACHE:-$HOME/.cache/kvtier}/awscli"

install() {
    if [[ ! -x "$cli/bin/aws" ]]; then
        python3 -m venv "$cli" >&2
        "$cli/bin/pip" install --quiet "awscli==1.*" >&2
    fi
    if [[ ! -x "$venv/bin/moto_server" ]]; then
        python3 -m venv "$venv" >&2
        "$venv/bin/pip" install --quiet --upgrade pip >&2
        "$venv/bin/pip" install --quiet "moto[server]==5.*" >&2
    fi
    # awscrt: the CRC-32C and CRC-64/NVME checksums botocore sends with it, and the S3
    # checksum suite computes (a cache made before it lacks it).
    "$venv/bin/python" -c "import awscrt" 2>/dev/null || "$venv/bin/pip" install --quiet "awscrt" >&2
}

start() {
    local dir="$1"
    install
    mkdir -p "$dir"
    local port
    port="$(free_port)"
    "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$dir/moto.log" 2>&1 &
    local endpoint="http://127.0.0.1:$port"
    local create_bucket='import sys, boto3
boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
             aws_access_key_id="test", aws_secret_access_key="test").create_bucket(Bucket="kvtier")'
    await_ready moto $! "$dir/moto.log" "$endpoint" "$venv/bin/python" -c "$create_bucket" "$endpoint"
}

case "${1:-}" in
    install) install ;;
    start) start "${2:?usage: moto.sh start DIR}" ;;
    *) echo "usage: $0 install | start DIR" >&2; exit 2 ;;
esac
