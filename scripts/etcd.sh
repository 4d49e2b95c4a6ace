#!/usr/bin/env bash
# etcd (Debian `etcd-server`) for the cluster-membership tests: members register under a
# lease and watch each other there.
#
#   scripts/etcd.sh install        apt-installs etcd-server when /usr/bin/etcd is missing
#   scripts/etcd.sh start DIR      starts a one-member etcd on free ports (data and log in
#                                  DIR) and prints one line: "<endpoint> <pid>", e.g.
#                                  "http://127.0.0.1:41235 12345" (on $KVTIER_LISTEN_HOST
#                                  instead of 127.0.0.1 when set)
#
# Stop it with kill PID. The Debian package may start its own service on 2379 where systemd
# runs; ours never uses that port.
set -euo pipefail
source "$(dirname "$0")/emulator-lib.sh"

install() {
    [[ -x /usr/bin/etcd ]] && return
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >&2
}

start() {
    local dir="$1"
    install
    mkdir -p "$dir"
    local client peer
    client="$(free_port)"
    peer="$(free_port)"
    local endpoint="http://$listen_host:$client"
    /usr/bin/etcd --name kvtier-test --data-dir "$dir/etcd" \
        --listen-client-urls "$endpoint" --advertise-client-urls "$endpoint" \
        --listen-peer-urls "http://$listen_host:$peer" --initial-advertise-peer-urls "http://$listen_host:$peer" \
        --initial-cluster "kvtier-test=http://$listen_host:$peer" >"$dir/etcd.log" 2>&1 &
    local probe='import sys, urllib.request, json
assert json.load(urllib.request.urlopen(sys.argv[1] + "/health", timeout=1))["health"] == "true"'
    await_ready etcd $! "$dir/etcd.log" "$endpoint" python3 -c "$probe" "$endpoint"
}

case "${1:-}" in
    install) install ;;
    start) start "${2:?usage: etcd.sh start DIR}" ;;
    *) echo "usage: $0 install | start DIR" >&2; exit 2 ;;
esac
