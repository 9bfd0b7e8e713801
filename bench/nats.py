#!/usr/bin/env python3
"""Cross-process fan-out through NATS JetStream (R1 and R3) against one process and against
the lossless Redis mode, in one room and in 100, in the same run; and the death of a
stream's leader, timed.

    python3 bench/nats.py                # 3 runs (~10 min after the build)
    python3 bench/nats.py --runs 1 --duration 4
    python3 bench/nats.py --rooms 100    # the closed loop in 100 rooms only

Configurations, measured interleaved (each run goes through all of them):

  one-1     one chat server, no backplane: the baseline
  redis-2   two chat servers, --redis on one redis-server (lossless, streams)
  nats-r1   two chat servers, --nats on one nats-server -js (R1 streams)
  nats-r3   two chat servers, --nats on a cluster of three, --nats-replicas 3

loadgen spreads its clients over the servers, so half of every broadcast's deliveries cross
the backplane. Closed loop, for each room count R of --rooms (default 1 and 100), window 8
per sender: deliveries/s and the chat servers' CPU per million deliveries. In one room, N
clients (default 1,000) and 10 senders, every broadcast reaching every client. In R rooms
(loadgen --rooms R), the N clients spread over them (10 a room at 100) and a sender in every
room (R senders; at least 10, a multiple of R), each broadcast reaching its room's clients
only, and every room's clients spread over both servers: the backplane carries 100 times as
many messages per delivery, which is what fan-out over many rooms costs (10 senders in 100
rooms would leave 90 rooms silent). Open loop, in one room, at --rate broadcasts/s
(default 1,000, 100 clients, 10 senders): p50 and p99 latency. Gaps, reordered, lost and
messages from another room must all be 0.

Then, per run, the leader's death: nats-r3 under an open loop of 300 broadcasts/s, the
server leading the rooms' stream killed (SIGKILL) a third into the measured phase.
loadgen's largest latency is the time from the leader's death (or just before it) to the
delivery of the first message sent after it; its gaps and reordered must be 0.

Every process it starts is stopped by its PID. Output: a Markdown summary on stdout and
bench/results/nats-<timestamp>.json (with the commit, the tools' versions and the load
average before each loadgen run: the machine may be shared).
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


def closed_loop(clients: int, rooms: int, duration: float) -> list[str]:
    """loadgen's closed loop in `rooms` rooms: 10 senders in one room; in more, a sender in
    every room (at least 10 in all, the same number in each room)."""
    senders = rooms * -(-10 // rooms)
    flags = ["--clients", str(clients), "--senders", str(senders), "--window", "8",
             "--duration", str(duration), "--warmup", "2"]
    return flags + (["--rooms", str(rooms)] if rooms > 1 else [])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rooms", type=lambda t: benchlib.int_list(t, positive=True),
                        default=[1, 100],
                        help="room counts for the closed loop, comma-separated (default 1,100)")
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=6)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    if max(args.rooms) > args.clients:
        parser.error("--rooms: at most --clients rooms")

    benchlib.raise_nofile_limit()
    benchlib.cargo_build(["chat", "loadgen"], features=["redis", "nats"])
    machine = benchlib.machine_info({"nats_server": ["nats-server", "--version"],
                                     "redis_server": ["redis-server", "--version"]})
    chat = benchlib.target_dir() / "release" / "examples" / "chat"
    opened = ["--clients", "100", "--senders", "10", "--rate", str(args.rate),
              "--duration", str(args.duration), "--warmup", "2"]
    loads = [("closed", rooms, closed_loop(args.clients, rooms, args.duration))
             for rooms in args.rooms] + [("open", 1, opened)]
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
                    for mode, rooms, lg_flags in loads:
                        servers = [Server(chat, ["--no-notices", *flags], work)
                                   for _ in range(count)]
                        try:
                            if name:
                                wait_connected(servers, name)
                            load = os.getloadavg()[0]
                            result = loadgen(servers, lg_flags, 120)
                        finally:
                            for server in servers:
                                server.stop()
                        record = {"run": run, "config": config, "mode": mode, "rooms": rooms,
                                  "deliveries_per_s": float(result["deliveries_per_s"]),
                                  "broadcasts_per_s": result["sent"] / args.duration,
                                  "cpu_s_per_million": result["cpu_s_per_million"],
                                  "p50_ms": result["latency_us"]["p50"] / 1000,
                                  "p99_ms": result["latency_us"]["p99"] / 1000,
                                  "gaps": result["gaps"], "reordered": result["reordered"],
                                  "lost": result["lost"],
                                  "wrong_room": result.get("wrong_room", 0),
                                  "window_stalls": result["window_stalls"],
                                  "errors": result["errors"], "load_avg_1m": load}
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
                load = os.getloadavg()[0]
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
                          "lost": result.get("lost"),
                          "loadgen_errors": result.get("errors", []), "load_avg_1m": load}
                log(json.dumps(record))
                runs.append(record)
            finally:
                for server in servers:
                    server.stop()
                nats.stop()

    def median(config: str, mode: str, key: str, rooms: int = 1) -> float | None:
        values = [r[key] for r in runs
                  if r["config"] == config and r.get("mode") == mode
                  and r.get("rooms") == rooms and r.get(key) is not None]
        return statistics.median(float(v) for v in values) if values else None

    def ms(value: float | None) -> str:
        if value is None:
            return "–"
        return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"

    lines = ["| rooms | config | deliveries/s (closed loop) | ÷ one-1 | broadcasts/s |"
             f" servers' CPU s/M | p50 at {args.rate}/s | p99 at {args.rate}/s |"
             " gaps / reordered / lost (closed loop) |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for rooms in args.rooms:
        base = median("one-1", "closed", "deliveries_per_s", rooms)
        for config in configs:
            dps = median(config, "closed", "deliveries_per_s", rooms)
            cpu = median(config, "closed", "cpu_s_per_million", rooms)
            mine = [r for r in runs if r["config"] == config and r.get("mode") == "closed"
                    and r.get("rooms") == rooms]
            bad = "/".join(str(sum(int(r[key]) for r in mine))
                           for key in ("gaps", "reordered", "lost"))
            wrong = sum(int(r["wrong_room"]) for r in mine)
            if wrong:
                bad += f" (+{wrong} from another room)"
            lines.append(f"| {rooms} | {config} | {benchlib.si(dps)} | "
                         f"{dps / base if dps and base else 0:.2f}x | "
                         f"{benchlib.si(median(config, 'closed', 'broadcasts_per_s', rooms))} | "
                         f"{'–' if cpu is None else f'{cpu:.2f}'} | "
                         f"{ms(median(config, 'open', 'p50_ms')) if rooms == 1 else '–'} | "
                         f"{ms(median(config, 'open', 'p99_ms')) if rooms == 1 else '–'} | "
                         f"{bad} |")
    opened_bad = [f"{r['config']} run {r['run']}: {r['gaps']}/{r['reordered']}/{r['lost']}"
                  for r in runs if r.get("mode") == "open"
                  and int(r["gaps"]) + int(r["reordered"]) + int(r["lost"]) > 0]
    loads_seen = [r["load_avg_1m"] for r in runs if "load_avg_1m" in r]
    lines.append("")
    lines.append("Open loop gaps/reordered/lost: "
                 + ("; ".join(opened_bad) if opened_bad else "0 everywhere") + ". "
                 + benchlib.machine_line(machine, f"{machine.get('nats_server')}, "
                                         f"{machine.get('redis_server')}",
                                         "Load average (1 min) before the loadgen runs: "
                                         f"{min(loads_seen):.1f} to {max(loads_seen):.1f}."
                                         if loads_seen else ""))
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
    benchlib.save({"machine": machine, "args": vars(args) | {"out": str(args.out)},
                   "runs": runs, "summary": summary}, args.out / f"nats-{stamp}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
