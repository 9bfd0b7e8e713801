#!/usr/bin/env python3
"""Cross-process fan-out through Redis Sentinel, against one Redis, and a failover timed.

    python3 bench/sentinel.py               # 3 runs (~4 min after the build)
    python3 bench/sentinel.py --runs 1 --duration 4

Two chat servers (examples/chat, --no-notices, lossless Redis mode) share one room; loadgen
spreads its clients over both, so half of every broadcast's deliveries cross Redis:

  redis-2     both with --redis on one redis-server: the baseline
  sentinel-2  both with --redis-sentinel through scripts/redis-sentinel.sh's deployment (a
              primary, a replica, three sentinels): what finding the primary through
              Sentinel, and a replica to feed, cost

measured interleaved (A B A B ...), closed loop, N clients, 10 senders; deliveries/s,
servers' CPU per million deliveries and the primary's CPU per thousand messages.

Then, per run, the failover: sentinel-2 under an open-loop 300 broadcasts/s, the primary
killed (SIGKILL) in the middle of the measured phase. Sentinel is set to
down-after-milliseconds 1000. loadgen's largest latency is the time from the primary's death
(or just before it) to the delivery of the first message sent after it; its `gaps` and
`reordered` counts must be 0: nothing lost, nothing twice, nothing out of order.

Every process it starts is stopped by its PID. Output: a Markdown summary on stdout and
bench/results/sentinel-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib
from backplane import OtherLoad
from benchlib import ROOT, log
from density import Server


def free_base() -> int:
    """A base port whose neighbours (base..base+1, base+10..base+12) are free now."""
    import socket

    for base in range(26200, 27000, 20):
        ports = [base, base + 1, base + 10, base + 11, base + 12]
        try:
            for port in ports:
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    sys.exit("no free ports for the Sentinel deployment")


class Deployment:
    """scripts/redis-sentinel.sh, running until stopped."""

    def __init__(self) -> None:
        self.base = free_base()
        self.proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "redis-sentinel.sh"),
                                      str(self.base)], stdout=subprocess.PIPE, text=True,
                                     start_new_session=True)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 60
        self.flags: list[str] = []
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if "--redis-sentinel" in line:
                words = line.split()
                at = words.index("--redis-sentinel")
                self.flags = words[at:at + 4]
            if "Ctrl-C stops it" in line:
                return
        self.stop()
        sys.exit("the Sentinel deployment did not start")

    def redis_cli(self, port: int, *args: str) -> str:
        return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True,
                              text=True, timeout=10).stdout

    def primary(self) -> int:
        lines = self.redis_cli(self.base + 10, "SENTINEL", "get-master-addr-by-name",
                               "mymaster").split()
        return int(lines[-1])

    def pid_of(self, port: int) -> int:
        for line in self.redis_cli(port, "INFO", "server").splitlines():
            if line.startswith("process_id:"):
                return int(line.split(":", 1)[1])
        raise RuntimeError(f"no process_id from port {port}")

    def pids(self) -> list[int]:
        """The data nodes' and the sentinels' PIDs."""
        ports = [self.base, self.base + 1, self.base + 10, self.base + 11, self.base + 12]
        return [self.pid_of(port) for port in ports]

    def stop(self) -> None:
        # The script stops its own redis-servers on SIGTERM.
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def redis_cpu_s(port: int) -> float:
    """used_cpu_sys + used_cpu_user of the Redis server on `port`."""
    info = subprocess.run(["redis-cli", "-p", str(port), "INFO", "cpu"], capture_output=True,
                          text=True, timeout=10).stdout
    return sum(float(line.split(":", 1)[1]) for line in info.splitlines()
               if line.startswith(("used_cpu_sys:", "used_cpu_user:")))


def chat_pair(binary: Path, flags: list[str], work: Path) -> list[Server]:
    return [Server(binary, ["--no-notices", *flags], work) for _ in range(2)]


def run_loadgen(servers: list[Server], flags: list[str], timeout: float) -> dict:
    urls = ",".join(f"ws://{s.address}/api/Chat" for s in servers)
    pids = ",".join(str(s.pid) for s in servers)
    cmd = [str(benchlib.target_dir() / "release" / "examples" / "loadgen"), "--url", urls,
           "--server-pid", pids, "--quiet", *flags]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    result = benchlib.last_json(done.stdout)
    if result is None:
        sys.exit(f"loadgen failed ({done.returncode}): {done.stderr[-400:]}")
    return result


def wait_connected(servers: list[Server]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if all("Redis backplane: Connected" in s.stderr_text() for s in servers):
            return
        time.sleep(0.05)
    sys.exit("a chat server did not connect to Redis: " + servers[0].stderr_tail())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=6)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)

    benchlib.raise_nofile_limit()
    benchlib.cargo_build(["chat", "loadgen"], features=["redis"])
    chat = benchlib.target_dir() / "release" / "examples" / "chat"
    fanout_flags = ["--clients", str(args.clients), "--senders", "10", "--window", "8",
                    "--duration", str(args.duration), "--warmup", "2"]
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for run in range(args.runs):
            # One Redis, the baseline.
            redis_port = free_base() + 5
            redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind",
                                      "127.0.0.1", "--save", "", "--appendonly", "no"],
                                     stdout=subprocess.DEVNULL)
            time.sleep(0.3)
            deployment = Deployment()
            try:
                for config in ("redis-2", "sentinel-2"):
                    if config == "redis-2":
                        flags, port = ["--redis", f"redis://127.0.0.1:{redis_port}"], redis_port
                    else:
                        flags, port = deployment.flags, deployment.primary()
                    servers = chat_pair(chat, flags, work)
                    try:
                        wait_connected(servers)
                        cpu0 = redis_cpu_s(port)
                        redis_pids = ([redis.pid] if config == "redis-2"
                                      else deployment.pids())
                        other = OtherLoad([s.pid for s in servers] + redis_pids)
                        result = run_loadgen(servers, fanout_flags, 120)
                        other_cores = other.cores()
                        redis_cpu = redis_cpu_s(port) - cpu0
                    finally:
                        for server in servers:
                            server.stop()
                    messages = int(result["sent_total"])
                    record = {"run": run, "config": config,
                              "deliveries_per_s": float(result["deliveries_per_s"]),
                              "server_cpu_s_per_million": result["cpu_s_per_million"],
                              "redis_cpu_ms_per_thousand":
                                  1e6 * redis_cpu / messages if messages else None,
                              "gaps": result["gaps"], "reordered": result["reordered"],
                              "other_load_cores": other_cores}
                    log(json.dumps(record))
                    runs.append(record)

                # The failover, under 300 broadcasts/s.
                servers = chat_pair(chat, deployment.flags, work)
                try:
                    wait_connected(servers)
                    primary = deployment.primary()
                    pid = deployment.pid_of(primary)
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
                    new_primary = None
                    while time.monotonic() - killed_at < 30:
                        try:
                            new_primary = deployment.primary()
                        except (ValueError, IndexError):
                            new_primary = None
                        if new_primary not in (None, primary):
                            break
                        time.sleep(0.05)
                    promoted_s = time.monotonic() - killed_at
                    out, err = loadgen.communicate(timeout=120)
                    result = benchlib.last_json(out)
                    if result is None:
                        sys.exit(f"loadgen failed: {err[-400:]}")
                    record = {"run": run, "config": "failover",
                              "promoted_after_s": round(promoted_s, 2),
                              "max_latency_ms": result["latency_us"]["max"] / 1000,
                              "p99_latency_ms": result["latency_us"]["p99"] / 1000,
                              "gaps": result["gaps"], "reordered": result["reordered"],
                              "lost": result["lost"],
                              "loadgen_errors": result.get("errors", []),
                              "servers_said": [s.stderr_tail(1500) for s in servers]}
                    log(json.dumps(record))
                    runs.append(record)
                finally:
                    for server in servers:
                        server.stop()
            finally:
                deployment.stop()
                benchlib.terminate(redis)

    def median(config: str, key: str) -> float | None:
        values = [r[key] for r in runs if r["config"] == config and r.get(key) is not None]
        return statistics.median(float(v) for v in values) if values else None

    lines = ["| config | deliveries/s | servers' CPU s/M | primary's CPU ms per 1,000 messages |",
             "| --- | ---: | ---: | ---: |"]
    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for config in ("redis-2", "sentinel-2"):
        lines.append(f"| {config} | {benchlib.si(median(config, 'deliveries_per_s'))} | "
                     f"{fmt(median(config, 'server_cpu_s_per_million'), '.2f')} | "
                     f"{fmt(median(config, 'redis_cpu_ms_per_thousand'), '.1f')} |")
    sentinel = [x for x in runs if x["config"] == "sentinel-2"]
    redis = [x for x in runs if x["config"] == "redis-2"]
    for key, what in (("deliveries_per_s", "deliveries/s"),
                      ("redis_cpu_ms_per_thousand", "primary's CPU per message")):
        ratio = [s[key] / r[key] for s, r in zip(sentinel, redis) if s[key] and r[key]]
        lines.append("")
        lines.append(f"sentinel-2 ÷ redis-2 {what}, per run: "
                     + ", ".join(f"{x:.2f}x" for x in ratio))
    failovers = [r for r in runs if r["config"] == "failover"]
    lines.append("")
    lines.append("| failover run | promoted after | largest latency | p99 | gaps | reordered "
                 "| lost |")
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in failovers:
        lines.append(f"| {r['run']} | {r['promoted_after_s']} s | {r['max_latency_ms']:.0f} ms"
                     f" | {r['p99_latency_ms']:.0f} ms | {r['gaps']} | {r['reordered']} | {r['lost']} |")
    others = [r["other_load_cores"] for r in runs if r.get("other_load_cores") is not None]
    if others:
        lines += ["", f"Other load during the fan-out runs: median {statistics.median(others):.2f}"
                  f" cores, max {max(others):.2f} (machine busy time minus this benchmark's "
                  "processes)."]
    summary = "\n".join(lines)
    print(summary)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    benchlib.save({"runs": runs, "summary": summary}, args.out / f"sentinel-{stamp}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
