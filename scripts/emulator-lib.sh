# Shared by scripts/azurite.sh and scripts/moto.sh (sourced, not run): starting a local
# storage emulator in the background and waiting until it answers.

# The address emulators listen on: $KVTIER_LISTEN_HOST (a multi-host test's bridge, which
# nodes in network namespaces reach), else 127.0.0.1.
listen_host="${KVTIER_LISTEN_HOST:-127.0.0.1}"

# A free TCP port on $listen_host, below Linux's ephemeral range (32768 and up, where the
# OS puts every `:0` listener and outgoing connection): a port the OS handed out could be
# taken again by a test's node before the emulator binds it; one picked here only by
# another pick (1 in 12,000).
free_port() {
    python3 -c 'import random, socket, sys
while True:
    port = random.randrange(20000, 32000)
    try:
        socket.create_server((sys.argv[1], port)).close()
        print(port)
        break
    except OSError:
        pass' "$listen_host"
}

# await_ready NAME PID LOG ENDPOINT PROBE...: runs PROBE (which creates the container or
# bucket, exit 0 once it exists) until it succeeds, then prints "ENDPOINT PID". If the
# process dies or 10 s pass, kills it, prints its log and exits 1.
await_ready() {
    local name="$1" pid="$2" log="$3" endpoint="$4"
    shift 4
    for _ in $(seq 100); do
        if "$@" 2>/dev/null; then
            echo "$endpoint $pid"
            return
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill "$pid" 2>/dev/null || true
    echo "$name did not start; its log:" >&2
    cat "$log" >&2
    exit 1
}
