#!/usr/bin/env bash
# A Redis Cluster on loopback, for trying the chat example's --redis-cluster: three
# primaries, each with one replica, with Debian's redis-server (7.0 or newer: sharded
# pub/sub) and redis-cli.
#
#   scripts/redis-cluster.sh [BASE_PORT]      # default 27000: nodes BASE..BASE+5 (the
#                                             # cluster bus on each port + 10000)
#
# Prints the chat example's flags, then runs until Ctrl-C, which stops every process it
# started. Try, meanwhile:
# - a failover: `redis-cli -p REPLICA_PORT CLUSTER FAILOVER` (`redis-cli -p BASE CLUSTER
#   NODES` names the replicas), or kill a primary;
# - a slot migration: `redis-cli --cluster reshard 127.0.0.1:BASE` (the chat's rooms are in
#   slot `redis-cli -p BASE CLUSTER KEYSLOT websocket-handler:chat-rooms`).
set -euo pipefail

base=${1:-27000}
dir=$(mktemp -d)
pids=()
stop() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap stop EXIT
trap 'exit 0' INT TERM

nodes=()
urls=()
for i in 0 1 2 3 4 5; do
    port=$((base + i))
    # A failed primary is noticed within a second; each node keeps its own cluster file.
    redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
        --cluster-config-file "nodes-$port.conf" --cluster-node-timeout 1000 \
        --save "" --appendonly no --dir "$dir" --dbfilename "dump-$port.rdb" \
        --logfile "$dir/node-$port.log" &
    pids+=($!)
    nodes+=("127.0.0.1:$port")
    urls+=("redis://127.0.0.1:$port")
done

# Every node answers before the cluster is made.
for port in "${nodes[@]#127.0.0.1:}"; do
    for _ in $(seq 1 50); do
        if redis-cli -p "$port" PING >/dev/null 2>&1; then break; fi
        sleep 0.1
    done
done
redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log"

# Ready once every node says the cluster is ok and every replica is in sync.
for _ in $(seq 1 100); do
    ready=0
    for port in "${nodes[@]#127.0.0.1:}"; do
        state=$(redis-cli -p "$port" CLUSTER INFO 2>/dev/null | tr -d '\r' | grep -c '^cluster_state:ok$' || true)
        link=$(redis-cli -p "$port" INFO replication 2>/dev/null | tr -d '\r')
        if [ "$state" -eq 1 ] && { ! grep -q '^role:slave$' <<<"$link" || grep -q '^master_link_status:up$' <<<"$link"; }; then
            ready=$((ready + 1))
        fi
    done
    if [ "$ready" -eq 6 ]; then break; fi
    sleep 0.2
done
if [ "$ready" -ne 6 ]; then
    echo "the cluster did not settle within 20 s; logs in $dir" >&2
    exit 1
fi

list=$(IFS=,; echo "${urls[*]}")
echo "Redis Cluster ready (logs in $dir):"
redis-cli -p "$base" CLUSTER NODES | awk '{ split($2, a, "@"); print "  " a[1], ($3 ~ /master/ ? "primary" : "replica"), $9 }'
echo "  cargo run --example chat --features redis -- --redis-cluster $list"
echo "Ctrl-C stops it."
wait
