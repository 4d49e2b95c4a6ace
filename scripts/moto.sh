#!/usr/bin/env bash
# moto's S3 server (PyPI `moto[server]`), an S3-compatible endpoint for the Blob tier's S3
# backend tests.
#
#   scripts/moto.sh install           pip-installs moto[server] into a venv under
#                                     $KVTIER_CACHE/moto (once)
#   scripts/moto.sh start DIR         starts it on a free port (log in DIR), creates the
#                                     bucket `kvtier`, and prints one line: "<endpoint> <pid>",
#                                     e.g. "http://127.0.0.1:41235 12345"
#
# Credentials are anything (moto does not check them). Stop it with kill PID.
set -euo pipefail
venv="${KVTIER_CACHE:-$HOME/.cache/kvtier}/moto"

install() {
    [[ -x "$venv/bin/moto_server" ]] && return
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --upgrade pip >&2
    "$venv/bin/pip" install --quiet "moto[server]==5.*" >&2
}

start() {
    local dir="$1"
    install
    mkdir -p "$dir"
    local port
    port="$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$dir/moto.log" 2>&1 &
    local pid=$!
    local endpoint="http://127.0.0.1:$port"
    for _ in $(seq 100); do
        if "$venv/bin/python" - "$endpoint" <<'PY' 2>/dev/null; then
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test")
s3.create_bucket(Bucket="kvtier")
PY
            echo "$endpoint $pid"
            return
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill "$pid" 2>/dev/null || true
    echo "moto did not start; its log:" >&2
    cat "$dir/moto.log" >&2
    exit 1
}

case "${1:-}" in
    install) install ;;
    start) start "${2:?usage: moto.sh start DIR}" ;;
    *) echo "usage: $0 install | start DIR" >&2; exit 2 ;;
esac
