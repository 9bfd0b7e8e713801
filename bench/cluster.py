#!/usr/bin/env python3
"""The Redis backplane on a 3-primary Redis Cluster, against one Redis, and a failover timed.

    python3 bench/cluster.py                # 3 runs (~6 min after the build)
    python3 bench/cluster.py --runs 1 --duration 4 --messages 20000

Per run, a fresh redis-server and a fresh scripts/redis-cluster.sh (three primaries, each
with a replica, cluster-node-timeout 1000 ms), then:

  fan-out     two chat servers (examples/chat, --no-notices, lossless) share one room;
              loadgen spreads its clients over both, so half of every broadcast's
              deliveries cross Redis. redis-2 (--redis) and cluster-2 (--redis-cluster),
              closed loop, N clients, 10 senders: deliveries/s, the chat servers' CPU per
              million deliveries, Redis's CPU per thousand messages (the cluster's: summed
              over the primaries). The chat's rooms are one topic, so one slot, so one
              primary does the work.
  scale       examples/backplane_scale throughput (two backplanes in one process, lossless,
              100 rooms, --messages M of 64 bytes) with --topics 1 and --topics 100, on one
              Redis and on the cluster: messages/s, Redis CPU per thousand messages (summed
              over the primaries; the replicas' apart), and the busiest primary's share.
  failover    cluster-2 under an open-loop 300 broadcasts/s; the primary that owns the
              room's slot killed (SIGKILL) in the middle of the measured phase. "promoted
              after": until another node names a new owner of the slot. loadgen's largest
              latency is the time from the death (or just before it) to the delivery of the
              first message sent after it; its gaps and reordered counts must be 0.

Every process it starts is stopped by its PID (the cluster script stops its own nodes).
Output: a Markdown summary on stdout and bench/results/cluster-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib
from benchlib import ROOT, log
from backplane import OtherLoad
from sentinel import chat_pair, redis_cpu_s, run_loadgen, wait_connected

# The chat's stream key is `{websocket-handler:chat-rooms}`: its slot is this hash tag's.
CHAT_TAG = "websocket-handler:chat-rooms"


def free_ports(ports: list[int]) -> bool:
    try:
        for port in ports:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", port))
    except OSError:
        return False
    return True


def redis_cli(port: int, *args: str) -> str:
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True,
                          text=True, timeout=10).stdout


def pid_of(port: int) -> int:
    for line in redis_cli(port, "INFO", "server").splitlines():
        if line.startswith("process_id:"):
            return int(line.split(":", 1)[1])
    raise RuntimeError(f"no process_id from port {port}")


class Cluster:
    """scripts/redis-cluster.sh, running until stopped."""

    def __init__(self) -> None:
        for base in range(27100, 28000, 20):
            nodes = list(range(base, base + 6))
            if free_ports(nodes + [p + 10000 for p in nodes]):
                break
        else:
            sys.exit("no free ports for the cluster")
        self.ports = nodes
        self.proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "redis-cluster.sh"),
                                      str(base)], stdout=subprocess.PIPE, text=True,
                                     start_new_session=True)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 60
        self.flags: list[str] = []
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if "--redis-cluster" in line:
                words = line.split()
                at = words.index("--redis-cluster")
                self.flags = words[at:at + 2]
            if "Ctrl-C stops it" in line:
                return
        self.stop()
        sys.exit("the cluster did not start")

    def urls(self) -> str:
        return self.flags[1]

    def primaries(self) -> list[int]:
        """The ports of the nodes that are primaries now, as a live node sees them."""
        for port in self.ports:
            out = redis_cli(port, "CLUSTER", "NODES")
            if not out:
                continue
            found = []
            for line in out.splitlines():
                words = line.split()
                if len(words) > 2 and "master" in words[2] and "fail" not in words[2]:
                    found.append(int(words[1].split("@")[0].rsplit(":", 1)[1]))
            return sorted(found)
        return []

    def replicas(self) -> list[int]:
        return [p for p in self.ports if p not in self.primaries()]

    def owner(self, slot: int, ask: list[int] | None = None) -> int | None:
        """The port of the primary serving `slot`, as the first live node in `ask` says."""
        for port in ask or self.ports:
            out = redis_cli(port, "CLUSTER", "NODES")
            if not out:
                continue
            for line in out.splitlines():
                # id ip:port@bus flags primary ping pong epoch link slot-range...
                words = line.split()
                if len(words) < 9 or "master" not in words[2] or "fail" in words[2]:
                    continue
                for span in words[8:]:
                    if span.startswith("["):
                        continue  # a slot migrating
                    low, _, high = span.partition("-")
                    if int(low) <= slot <= int(high or low):
                        return int(words[1].split("@")[0].rsplit(":", 1)[1])
            return None
        return None

    def flush(self) -> None:
        for port in self.primaries():
            redis_cli(port, "FLUSHALL")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def cpu_by_port(ports: list[int]) -> dict[int, float]:
    return {port: redis_cpu_s(port) for port in ports}


def fanout(run: int, config: str, chat: Path, flags: list[str], cpu_ports: list[int],
           redis_pids: list[int], work: Path, loadgen_flags: list[str]) -> dict:
    servers = chat_pair(chat, flags, work)
    try:
        wait_connected(servers)
        cpu0 = cpu_by_port(cpu_ports)
        other = OtherLoad([s.pid for s in servers] + redis_pids)
        result = run_loadgen(servers, loadgen_flags, 120)
        other_cores = other.cores()
        cpu1 = cpu_by_port(cpu_ports)
    finally:
        for server in servers:
            server.stop()
    redis_cpu = sum(cpu1[p] - cpu0[p] for p in cpu_ports)
    messages = int(result["sent_total"])
    return {"run": run, "config": config,
            "deliveries_per_s": float(result["deliveries_per_s"]),
            "server_cpu_s_per_million": result["cpu_s_per_million"],
            "redis_cpu_ms_per_thousand": 1e6 * redis_cpu / messages if messages else None,
            "gaps": result["gaps"], "reordered": result["reordered"],
            "other_load_cores": other_cores}


def scale(run: int, target: str, topics: int, binary: Path, where: list[str],
          primaries: list[int], replicas: list[int], redis_pids: list[int],
          args: argparse.Namespace) -> dict:
    cmd = [str(binary), *where, "throughput", "--rooms", str(args.rooms), "--messages",
           str(args.messages), "--size", "64", "--topics", str(topics), "--timeout", "120"]
    cpu0 = cpu_by_port(primaries + replicas)
    other = OtherLoad(redis_pids)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    other_cores = other.cores()
    cpu1 = cpu_by_port(primaries + replicas)
    result = benchlib.last_json(done.stdout)
    if result is None or not result.get("ok"):
        sys.exit(f"backplane_scale failed ({done.returncode}): {done.stderr[-400:]} "
                 f"{json.dumps(result)[:400] if result else ''}")
    per_primary = [cpu1[p] - cpu0[p] for p in primaries]
    replica_cpu = sum(cpu1[p] - cpu0[p] for p in replicas)
    messages = args.messages
    return {"run": run, "config": f"scale-{target}-{topics}", "target": target,
            "topics": topics, "command": " ".join(cmd[1:]),
            "messages_per_s": result["messages_per_s"],
            "process_cpu_s_per_million": result["cpu_s_per_million"],
            "redis_cpu_ms_per_thousand": 1e6 * sum(per_primary) / messages,
            "replicas_cpu_ms_per_thousand": 1e6 * replica_cpu / messages if replicas else None,
            "busiest_primary_share": max(per_primary) / sum(per_primary)
            if sum(per_primary) > 0 else None,
            "other_load_cores": other_cores}


def failover(run: int, chat: Path, cluster: Cluster, work: Path) -> dict:
    slot = int(redis_cli(cluster.ports[0], "CLUSTER", "KEYSLOT", CHAT_TAG).strip())
    servers = chat_pair(chat, cluster.flags, work)
    try:
        wait_connected(servers)
        primary = cluster.owner(slot)
        if primary is None:
            sys.exit(f"no node owns slot {slot}")
        pid = pid_of(primary)
        others = [p for p in cluster.ports if p != primary]
        duration = 12.0
        loadgen = subprocess.Popen(
            [str(benchlib.target_dir() / "release" / "examples" / "loadgen"),
             "--url", ",".join(f"ws://{s.address}/api/Chat" for s in servers),
             "--quiet", "--clients", "100", "--senders", "1", "--rate", "300",
             "--duration", str(duration), "--warmup", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1 + duration / 3)
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        new_owner = None
        while time.monotonic() - killed_at < 30:
            new_owner = cluster.owner(slot, others)
            if new_owner not in (None, primary):
                break
            time.sleep(0.05)
        promoted_s = time.monotonic() - killed_at
        out, err = loadgen.communicate(timeout=120)
        result = benchlib.last_json(out)
        if result is None:
            sys.exit(f"loadgen failed: {err[-400:]}")
        return {"run": run, "config": "failover", "slot": slot, "killed_port": primary,
                "new_owner": new_owner, "promoted_after_s": round(promoted_s, 2),
                "max_latency_ms": result["latency_us"]["max"] / 1000,
                "p99_latency_ms": result["latency_us"]["p99"] / 1000,
                "gaps": result["gaps"], "reordered": result["reordered"],
                "lost": result["lost"],
                "loadgen_errors": result.get("errors", []),
                # What the chat servers said of the backplane: state changes, rewinds.
                "servers_said": [s.stderr_tail(1500) for s in servers]}
    finally:
        for server in servers:
            server.stop()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=6)
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--messages", type=int, default=50000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)

    benchlib.raise_nofile_limit()
    benchlib.cargo_build(["chat", "loadgen", "backplane_scale"], features=["redis"])
    examples = benchlib.target_dir() / "release" / "examples"
    chat, scale_bin = examples / "chat", examples / "backplane_scale"
    loadgen_flags = ["--clients", str(args.clients), "--senders", "10", "--window", "8",
                     "--duration", str(args.duration), "--warmup", "2"]
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for run in range(args.runs):
            redis_port = next(p for p in range(26900, 27000) if free_ports([p]))
            redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind",
                                      "127.0.0.1", "--save", "", "--appendonly", "no"],
                                     stdout=subprocess.DEVNULL)
            cluster = Cluster()
            try:
                deadline = time.monotonic() + 10
                while "PONG" not in redis_cli(redis_port, "PING"):
                    if time.monotonic() > deadline:
                        sys.exit("redis-server did not answer")
                    time.sleep(0.05)
                redis_url = f"redis://127.0.0.1:{redis_port}"
                primaries = cluster.primaries()
                replicas = [p for p in cluster.ports if p not in primaries]
                redis_pids = [redis.pid]
                cluster_pids = [pid_of(p) for p in cluster.ports]
                for config, flags, ports, pids in (
                        ("redis-2", ["--redis", redis_url], [redis_port], redis_pids),
                        ("cluster-2", cluster.flags, primaries, cluster_pids)):
                    record = fanout(run, config, chat, flags, ports, pids, work,
                                    loadgen_flags)
                    log(json.dumps(record))
                    runs.append(record)
                for topics in (1, 100):
                    for target in ("redis", "cluster"):
                        redis_cli(redis_port, "FLUSHALL")
                        cluster.flush()
                        if target == "redis":
                            record = scale(run, target, topics, scale_bin,
                                           ["--redis", redis_url], [redis_port], [],
                                           redis_pids, args)
                        else:
                            record = scale(run, target, topics, scale_bin,
                                           ["--cluster", cluster.urls()], primaries,
                                           replicas, cluster_pids, args)
                        log(json.dumps(record))
                        runs.append(record)
                record = failover(run, chat, cluster, work)
                log(json.dumps(record))
                runs.append(record)
            finally:
                cluster.stop()
                benchlib.terminate(redis)

    def values(config: str, key: str) -> list[float]:
        return [float(r[key]) for r in runs if r["config"] == config and r.get(key) is not None]

    def median(config: str, key: str) -> float | None:
        found = values(config, key)
        return statistics.median(found) if found else None

    def per_run(a: str, b: str, key: str) -> str:
        return ", ".join(f"{x / y:.2f}x" for x, y in zip(values(a, key), values(b, key)))

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    lines = ["| config | deliveries/s | chat servers' CPU s/M | Redis CPU ms per 1,000 messages |",
             "| --- | ---: | ---: | ---: |"]
    for config in ("redis-2", "cluster-2"):
        lines.append(f"| {config} | {benchlib.si(median(config, 'deliveries_per_s'))} | "
                     f"{fmt(median(config, 'server_cpu_s_per_million'), '.2f')} | "
                     f"{fmt(median(config, 'redis_cpu_ms_per_thousand'), '.1f')} |")
    lines += ["", "cluster-2 ÷ redis-2 deliveries/s, per run: "
              + per_run("cluster-2", "redis-2", "deliveries_per_s"), ""]
    lines += ["| backplane_scale | messages/s | process CPU s/M | Redis CPU ms per 1,000 "
              "(primaries) | replicas' | busiest primary's share |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for topics in (1, 100):
        for target in ("redis", "cluster"):
            config = f"scale-{target}-{topics}"
            lines.append(f"| {target}, {topics} topic{'s' if topics > 1 else ''} | "
                         f"{benchlib.si(median(config, 'messages_per_s'))} | "
                         f"{fmt(median(config, 'process_cpu_s_per_million'), '.2f')} | "
                         f"{fmt(median(config, 'redis_cpu_ms_per_thousand'), '.1f')} | "
                         f"{fmt(median(config, 'replicas_cpu_ms_per_thousand'), '.1f')} | "
                         f"{fmt(median(config, 'busiest_primary_share'), '.2f')} |")
    for topics in (1, 100):
        lines.append("")
        lines.append(f"{topics} topic(s), cluster ÷ one Redis, per run: messages/s "
                     + per_run(f"scale-cluster-{topics}", f"scale-redis-{topics}",
                               "messages_per_s")
                     + "; Redis CPU per message "
                     + per_run(f"scale-cluster-{topics}", f"scale-redis-{topics}",
                               "redis_cpu_ms_per_thousand"))
    lines += ["", "| failover run | promoted after | largest latency | p99 | gaps | reordered "
              "| lost |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in runs:
        if r["config"] == "failover":
            lines.append(f"| {r['run']} | {r['promoted_after_s']} s | "
                         f"{r['max_latency_ms']:.0f} ms | {r['p99_latency_ms']:.0f} ms | "
                         f"{r['gaps']} | {r['reordered']} | {r['lost']} |")
    others = [r["other_load_cores"] for r in runs if r.get("other_load_cores") is not None]
    if others:
        lines += ["", f"Other load during the measurements: median {statistics.median(others):.2f}"
                  f" cores, max {max(others):.2f} (machine busy time minus this benchmark's "
                  "processes)."]
    summary = "\n".join(lines)
    print(summary)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    benchlib.save({"runs": runs, "summary": summary}, args.out / f"cluster-{stamp}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
