#!/usr/bin/env python3
"""Cross-process fan-out through NATS JetStream (R1 and R3) against one process and against
the lossless Redis mode, in the same run; and the death of a stream's leader, timed.

    python3 bench/nats.py                # 3 runs (~5 min after the build)
    python3 bench/nats.py --runs 1 --duration 4

Configurations, measured interleaved (each run goes through all of them):

  one-1     one chat server, no backplane: the baseline
  redis-2   two chat servers, --redis on one redis-server (lossless, streams)
  nats-r1   two chat servers, --nats on one nats-server -js (R1 streams)
  nats-r3   two chat servers, --nats on a cluster of three, --nats-replicas 3

loadgen spreads its clients over the servers, so half of every broadcast's deliveries cross
the backplane. Closed loop (N clients, 10 senders, window 8): deliveries/s and the chat
servers' CPU per million deliveries. Open loop at --rate broadcasts/s (default 1,000, 100
clients): p50 and p99 latency, gaps and reordered (both must be 0).

Then, per run, the leader's death: nats-r3 under an open loop of 300 broadcasts/s, the
server leading the rooms' stream killed (SIGKILL) a third into the measured phase.
loadgen's largest latency is the time from the leader's death (or just before it) to the
delivery of the first message sent after it; its gaps and reordered must be 0.

Every process it starts is stopped by its PID. Output: a Markdown summary on stdout and
bench/results/nats-<timestamp>.json.
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
import urllib.request
from pathlib import Path

import benchlib
from benchlib import ROOT, log
from density import Server

ROOMS_STREAM = "websocket-handler-chat-rooms"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class NatsServers:
    """One nats-server -js, or a cluster of three, each with a monitoring port."""

    def __init__(self, count: int, work: Path) -> None:
        self.work = work
        self.nodes = [{"name": f"n{i}", "port": free_port(), "cluster": free_port(),
                       "monitor": free_port()} for i in range(count)]
        routes = ",".join(f"nats://127.0.0.1:{n['cluster']}" for n in self.nodes)
        self.procs: dict[str, subprocess.Popen] = {}
        for node in self.nodes:
            args = ["nats-server", "-a", "127.0.0.1", "-p", str(node["port"]), "-n",
                    node["name"], "-js", "-sd", str(work / node["name"]), "-m",
                    str(node["monitor"])]
            if count > 1:
                args += ["--cluster_name", "bench", "--cluster",
                         f"nats://127.0.0.1:{node['cluster']}", "--routes", routes]
            self.procs[node["name"]] = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all(self.jsz(n) is not None for n in self.nodes):
                return
            time.sleep(0.1)
        self.stop()
        sys.exit("nats-server did not start")

    def jsz(self, node: dict, query: str = "") -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{node['monitor']}/jsz{query}",
                                        timeout=2) as reply:
                return json.load(reply)
        except OSError:
            return None

    def urls(self) -> str:
        return ",".join(f"nats://127.0.0.1:{n['port']}" for n in self.nodes)

    def leader(self, stream: str) -> str | None:
        """The name of the server leading `stream`, as monitoring's /jsz says."""
        for node in self.nodes:
            if self.procs[node["name"]].poll() is not None:
                continue
            jsz = self.jsz(node, "?accounts=true&streams=true")
            for account in (jsz or {}).get("account_details", []):
                for detail in account.get("stream_detail", []):
                    if detail.get("name") == stream:
                        leader = (detail.get("cluster") or {}).get("leader")
                        if leader:
                            return leader
        return None

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait(timeout=10)

    def stop(self) -> None:
        for proc in self.procs.values():
            benchlib.terminate(proc)


def start_redis() -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    sys.exit("redis-server did not start")


def wait_connected(servers: list[Server], name: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if all(f"{name} backplane: Connected" in s.stderr_text() for s in servers):
            return
        time.sleep(0.05)
    sys.exit(f"a chat server did not connect ({name}): " + servers[0].stderr_tail())


def loadgen(servers: list[Server], flags: list[str], timeout: float) -> dict:
    urls = ",".join(f"ws://{s.address}/api/Chat" for s in servers)
    pids = ",".join(str(s.pid) for s in servers)
    cmd = [str(benchlib.target_dir() / "release" / "examples" / "loadgen"), "--url", urls,
           "--server-pid", pids, "--quiet", *flags]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    result = benchlib.last_json(done.stdout)
    if result is None:
        sys.exit(f"loadgen failed ({done.returncode}): {done.stderr[-400:]}")
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=6)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)

    benchlib.raise_nofile_limit()
    benchlib.cargo_build(["chat", "loadgen"], features=["redis", "nats"])
    chat = benchlib.target_dir() / "release" / "examples" / "chat"
    closed = ["--clients", str(args.clients), "--senders", "10", "--window", "8",
              "--duration", str(args.duration), "--warmup", "2"]
    opened = ["--clients", "100", "--senders", "10", "--rate", str(args.rate),
              "--duration", str(args.duration), "--warmup", "2"]
    configs = ["one-1", "redis-2", "nats-r1", "nats-r3"]
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for run in range(args.runs):
            for config in configs:
                store = work / f"{config}-{run}"
                store.mkdir()
                redis = nats = None
                if config == "one-1":
                    flags, count, name = [], 1, None
                elif config == "redis-2":
                    redis, port = start_redis()
                    flags, count, name = ["--redis", f"redis://127.0.0.1:{port}"], 2, "Redis"
                else:
                    replicas = 3 if config == "nats-r3" else 1
                    nats = NatsServers(replicas, store)
                    flags = ["--nats", nats.urls(), "--nats-replicas", str(replicas)]
                    count, name = 2, "NATS"
                try:
                    for mode, lg_flags in (("closed", closed), ("open", opened)):
                        servers = [Server(chat, ["--no-notices", *flags], work)
                                   for _ in range(count)]
                        try:
                            if name:
                                wait_connected(servers, name)
                            result = loadgen(servers, lg_flags, 120)
                        finally:
                            for server in servers:
                                server.stop()
                        record = {"run": run, "config": config, "mode": mode,
                                  "deliveries_per_s": float(result["deliveries_per_s"]),
                                  "cpu_s_per_million": result["cpu_s_per_million"],
                                  "p50_ms": result["latency_us"]["p50"] / 1000,
                                  "p99_ms": result["latency_us"]["p99"] / 1000,
                                  "gaps": result["gaps"], "reordered": result["reordered"]}
                        log(json.dumps(record))
                        runs.append(record)
                finally:
                    if nats:
                        nats.stop()
                    if redis:
                        benchlib.terminate(redis)

            # The leader's death, under 300 broadcasts/s.
            store = work / f"death-{run}"
            store.mkdir()
            nats = NatsServers(3, store)
            servers = [Server(chat, ["--no-notices", "--nats", nats.urls(), "--nats-replicas",
                                     "3"], work) for _ in range(2)]
            try:
                wait_connected(servers, "NATS")
                duration = 15.0
                lg = subprocess.Popen(
                    [str(benchlib.target_dir() / "release" / "examples" / "loadgen"),
                     "--url", ",".join(f"ws://{s.address}/api/Chat" for s in servers),
                     "--quiet", "--clients", "100", "--senders", "1", "--rate", "300",
                     "--duration", str(duration), "--warmup", "1"],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                time.sleep(1 + duration / 3)
                leader = nats.leader(ROOMS_STREAM)
                if leader is None:
                    sys.exit("no leader for the rooms' stream")
                killed_at = time.monotonic()
                nats.kill(leader)
                elected = None
                while time.monotonic() - killed_at < 30:
                    now = nats.leader(ROOMS_STREAM)
                    if now not in (None, leader):
                        elected = time.monotonic() - killed_at
                        break
                    time.sleep(0.05)
                out, err = lg.communicate(timeout=120)
                result = benchlib.last_json(out)
                if result is None:
                    sys.exit(f"loadgen failed: {err[-400:]}")
                record = {"run": run, "config": "leader-death",
                          "elected_after_s": round(elected, 2) if elected else None,
                          "max_latency_ms": result["latency_us"]["max"] / 1000,
                          "p99_ms": result["latency_us"]["p99"] / 1000,
                          "gaps": result["gaps"], "reordered": result["reordered"],
                          "lost": result.get("lost")}
                log(json.dumps(record))
                runs.append(record)
            finally:
                for server in servers:
                    server.stop()
                nats.stop()

    def median(config: str, mode: str, key: str) -> float | None:
        values = [r[key] for r in runs
                  if r["config"] == config and r.get("mode") == mode and r.get(key) is not None]
        return statistics.median(float(v) for v in values) if values else None

    base = median("one-1", "closed", "deliveries_per_s")
    lines = ["| config | deliveries/s (closed loop) | ÷ one-1 | servers' CPU s/M |"
             f" p50 at {args.rate}/s | p99 at {args.rate}/s | gaps, reordered |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for config in configs:
        dps = median(config, "closed", "deliveries_per_s")
        bad = sum(int(r["gaps"]) + int(r["reordered"]) for r in runs if r["config"] == config)
        lines.append(f"| {config} | {benchlib.si(dps)} | "
                     f"{dps / base if dps and base else 0:.2f}x | "
                     f"{median(config, 'closed', 'cpu_s_per_million')} | "
                     f"{median(config, 'open', 'p50_ms')} ms | "
                     f"{median(config, 'open', 'p99_ms')} ms | {bad} |")
    lines.append("")
    lines.append("| leader's death, run | new leader after | largest latency | p99 | gaps |"
                 " reordered |")
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in runs:
        if r["config"] == "leader-death":
            lines.append(f"| {r['run']} | {r['elected_after_s']} s | "
                         f"{r['max_latency_ms']:.0f} ms | {r['p99_ms']:.0f} ms | {r['gaps']} |"
                         f" {r['reordered']} |")
    summary = "\n".join(lines)
    print(summary)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    benchlib.save({"runs": runs, "summary": summary}, args.out / f"nats-{stamp}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
