#!/usr/bin/env bash
# A Redis Sentinel deployment on loopback, for trying the chat example's --redis-sentinel:
# a primary, a replica and three sentinels (quorum 2) watching them as master "mymaster",
# with Debian's redis-server (Sentinel is built in: `redis-server CONF --sentinel`).
#
#   scripts/redis-sentinel.sh [BASE_PORT]     # default 26000: data nodes BASE, BASE+1;
#                                             # sentinels BASE+10..BASE+12
#
# Prints the chat example's flags, then runs until Ctrl-C, which stops every process it
# started. Try a failover meanwhile: `redis-cli -p BASE+10 SENTINEL FAILOVER mymaster`, or
# kill the primary (`redis-cli -p BASE+10 SENTINEL get-master-addr-by-name mymaster` names it).
set -euo pipefail

base=${1:-26000}
master=mymaster
dir=$(mktemp -d)
pids=()
stop() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap stop EXIT
trap 'exit 0' INT TERM

node() { # PORT [PRIMARY_PORT]
    local args=(--port "$1" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir"
        --dbfilename "dump-$1.rdb" --logfile "$dir/node-$1.log")
    if [ $# -gt 1 ]; then args+=(--replicaof 127.0.0.1 "$2"); fi
    redis-server "${args[@]}" &
    pids+=($!)
}

node "$base"
node $((base + 1)) "$base"
sentinels=()
for i in 0 1 2; do
    port=$((base + 10 + i))
    # Each sentinel rewrites its own configuration file.
    cat >"$dir/sentinel-$port.conf" <<CONF
port $port
bind 127.0.0.1
dir $dir
logfile $dir/sentinel-$port.log
sentinel monitor $master 127.0.0.1 $base 2
sentinel down-after-milliseconds $master 1000
sentinel failover-timeout $master 5000
CONF
    redis-server "$dir/sentinel-$port.conf" --sentinel &
    pids+=($!)
    sentinels+=("redis://127.0.0.1:$port")
done

# Failover works once every sentinel knows the replica and the two others.
for _ in $(seq 1 100); do
    known=0
    for i in 0 1 2; do
        port=$((base + 10 + i))
        others=$(redis-cli -p "$port" SENTINEL sentinels "$master" 2>/dev/null | grep -c '^name$' || true)
        replicas=$(redis-cli -p "$port" SENTINEL replicas "$master" 2>/dev/null | grep -c '^name$' || true)
        if [ "$others" -ge 2 ] && [ "$replicas" -ge 1 ]; then known=$((known + 1)); fi
    done
    if [ "$known" -eq 3 ]; then break; fi
    sleep 0.2
done
if [ "$known" -ne 3 ]; then
    echo "the sentinels did not find each other within 20 s; logs in $dir" >&2
    exit 1
fi

list=$(IFS=,; echo "${sentinels[*]}")
echo "Sentinel deployment ready (logs in $dir):"
echo "  cargo run --example chat --features redis -- --redis-sentinel $list --redis-master $master"
echo "Ctrl-C stops it."
wait
