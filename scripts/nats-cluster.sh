#!/usr/bin/env bash
# NATS with JetStream on loopback, for trying the chat example's --nats, with Debian's
# nats-server (apt-get install -y nats-server):
#
#   scripts/nats-cluster.sh [BASE_PORT]           # one server: client port BASE (default 4222)
#   scripts/nats-cluster.sh --cluster [BASE_PORT] # three: client ports BASE..BASE+2, cluster
#                                                 # ports BASE+100..BASE+102, monitoring
#                                                 # BASE+200..BASE+202 (/jsz names leaders)
#
# Each server keeps its store in a temporary folder, removed at the end. Prints the chat
# example's flags, then runs until Ctrl-C, which stops every process it started. On a
# cluster, kill the server that leads a room stream meanwhile (see who in
# http://127.0.0.1:BASE+200/jsz?accounts=true&streams=true&config=true) and watch the chat
# carry on.
set -euo pipefail

cluster=0
if [ "${1:-}" = "--cluster" ]; then
    cluster=1
    shift
fi
base=${1:-4222}
dir=$(mktemp -d)
pids=()
stop() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap stop EXIT
trap 'exit 0' INT TERM

server() { # INDEX [ROUTES]
    local port=$((base + $1))
    local args=(-a 127.0.0.1 -p "$port" -n "n$1" -js -sd "$dir/n$1" -m $((base + 200 + $1))
        -l "$dir/n$1.log")
    if [ $# -gt 1 ]; then
        args+=(--cluster_name wsh --cluster "nats://127.0.0.1:$((base + 100 + $1))" --routes "$2")
    fi
    nats-server "${args[@]}" &
    pids+=($!)
}

urls=()
if [ "$cluster" = 1 ]; then
    routes="nats://127.0.0.1:$((base + 100)),nats://127.0.0.1:$((base + 101)),nats://127.0.0.1:$((base + 102))"
    for i in 0 1 2; do
        server "$i" "$routes"
        urls+=("nats://127.0.0.1:$((base + i))")
    done
    replicas=3
else
    server 0
    urls+=("nats://127.0.0.1:$base")
    replicas=1
fi

# Ready once every server answers on its client port and JetStream has a meta leader
# (monitoring's /jsz says which; a lone server leads itself).
for _ in $(seq 1 100); do
    ready=0
    for i in $(seq 0 $((${#urls[@]} - 1))); do
        jsz=$( (exec 3<>"/dev/tcp/127.0.0.1/$((base + 200 + i))" &&
            printf 'GET /jsz HTTP/1.0\r\n\r\n' >&3 && cat <&3) 2>/dev/null || true)
        if [ "$cluster" = 0 ] || printf '%s' "$jsz" | grep -q '"leader"'; then
            if printf '%s' "$jsz" | grep -q '"config"\|"memory"'; then ready=$((ready + 1)); fi
        fi
    done
    if [ "$ready" -eq "${#urls[@]}" ]; then break; fi
    sleep 0.2
done
if [ "$ready" -ne "${#urls[@]}" ]; then
    echo "NATS did not come up within 20 s; logs in $dir" >&2
    exit 1
fi

list=$(IFS=,; echo "${urls[*]}")
echo "NATS with JetStream ready (logs in $dir):"
echo "  cargo run --example chat --features nats -- --nats $list --nats-replicas $replicas"
echo "Ctrl-C stops it."
wait
