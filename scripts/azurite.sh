#!/usr/bin/env bash
# Azurite, the Azure Blob emulator, for kvtier's tests and benchmarks.
#
#   scripts/azurite.sh install        npm-installs Azurite under $KVTIER_CACHE/azurite (once)
#   scripts/azurite.sh start DIR [PORT]
#                                     starts its Blob service on PORT (default: a free one)
#                                     with its data in DIR (a restart on the same DIR and
#                                     PORT finds what it held), creates the container
#                                     `kvtier` if absent, and prints
#                                     one line: "<endpoint> <pid>", e.g.
#                                     "http://127.0.0.1:41234/devstoreaccount1 12345"
#
# The account is the emulator's well-known devstoreaccount1 and key. Stop it with kill PID.
# It listens on 127.0.0.1, or on $KVTIER_LISTEN_HOST when set.
set -euo pipefail
source "$(dirname "$0")/emulator-lib.sh"
cache="${KVTIER_CACHE:-$HOME/.cache/kvtier}/azurite"
bin="$cache/node_modules/.bin/azurite-blob"

install() {
    [[ -x "$bin" ]] && return
    if ! command -v npm >/dev/null; then
        apt-get update -qq >&2 && apt-get install -y -qq nodejs npm >/dev/null
    fi
    mkdir -p "$cache"
    npm install --silent --no-audit --no-fund --prefix "$cache" azurite@3 >&2
}

start() {
    local dir="$1" port="${2:-}"
    install
    mkdir -p "$dir"
    [[ -n "$port" ]] || port="$(free_port)"
    "$bin" --silent --loose --skipApiVersionCheck --blobHost "$listen_host" --blobPort "$port" \
        --location "$dir" >>"$dir/azurite.log" 2>&1 &
    local endpoint="http://$listen_host:$port/devstoreaccount1"
    await_ready azurite $! "$dir/azurite.log" "$endpoint" \
        python3 "$(dirname "$0")/azurite_container.py" "$endpoint" kvtier
}

case "${1:-}" in
    install) install ;;
    start) start "${2:?usage: azurite.sh start DIR [PORT]}" "${3:-}" ;;
    *) echo "usage: $0 install | start DIR [PORT]" >&2; exit 2 ;;
esac
