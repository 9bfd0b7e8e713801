#!/usr/bin/env python3
"""SignalR against the raw WebSocket chat: server CPU per delivery of a group broadcast,
and memory per idle connection, interleaved in one run.

    python3 bench/signalr.py                          # ~6 min
    python3 bench/signalr.py --runs 1 --idle-runs 1   # a quick look, ~2 min

Both servers are examples of this tree, started fresh on port 0 for every measurement, in
the order chat, signalr, chat, signalr, ... (run 1 of every scenario, then run 2, ...), and
loaded by `examples/loadgen.rs`:

- fan-out: N clients (1,000) in one room, one sender with 50 broadcasts in flight (closed
  loop; `--rate R` for an open loop of R broadcasts/s instead), 64 B and 4 KiB of text, 8 s.
  The raw chat (`examples/chat --no-notices`): every client in the room `/api/Chat`, the
  sender's text broadcast as `NAME: text`. SignalR (`examples/signalr_chat`, `loadgen
  --signalr`): every client negotiates, does the JSON hub protocol's handshake and calls
  `JoinGroup("bench")`; the sender invokes `SendToGroup("bench", user, text)` and every
  member gets `ReceiveMessage(user, text)`, the same text in a record of some 60 bytes
  more. Deliveries/s and server CPU seconds per million deliveries, and SignalR's over the
  chat's;
- idle: 10,000 clients connected (SignalR ones negotiated, handshaken and in the group;
  chat ones in their room), the server's RSS per connection.

On a shared machine only the ratios within one run mean much. `--goal 1.2` (the default)
exits 1 if SignalR's median CPU per delivery is above that many times the chat's in any
fan-out scenario. Output: a Markdown summary on stdout and
`bench/results/signalr-<timestamp>.json` with every raw loadgen result.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import benchlib
from benchlib import ROOT, log, spread
from density import Server, loadgen

# (label, message size)
SCENARIOS = [("64 B", 64), ("4 KiB", 4096)]
RAW, SIGNALR = "chat", "signalr"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="fan-out runs per server and size")
    parser.add_argument("--idle-runs", type=int, default=2, help="idle runs per server")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--idle-clients", type=int, default=10000)
    parser.add_argument("--rate", type=float, default=0,
                        help="broadcasts/s (open loop); 0: closed loop, 50 in flight")
    parser.add_argument("--duration", type=float, default=8)
    parser.add_argument("--goal", type=float, default=1.2,
                        help="the most SignalR's CPU per delivery may be, times the chat's")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    benchlib.raise_nofile_limit()
    benchlib.cargo_build(["chat", "signalr_chat", "loadgen"], ["signalr"])
    examples = benchlib.target_dir() / "release" / "examples"
    # name: (binary, its flags, the path loadgen loads, loadgen's extra flags)
    servers = {
        RAW: (examples / "chat", ["--no-notices"], "/api/Chat", []),
        SIGNALR: (examples / "signalr_chat", [], "/hubs/chat", ["--signalr"]),
    }
    records: list[dict] = []
    started = time.monotonic()

    def measure(name: str, flags: list[str], timeout: float) -> dict:
        binary, server_flags, path, extra = servers[name]
        server = Server(binary, server_flags, work)
        try:
            return loadgen(server, path, [*flags, *extra], timeout)
        finally:
            server.stop()

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        for run in range(args.runs):
            for label, size in SCENARIOS:
                for name in servers:
                    flags = ["--clients", str(args.clients), "--senders", "1",
                             "--window", "50", "--rate", f"{args.rate:g}",
                             "--size", str(size), "--duration", f"{args.duration:g}"]
                    result = measure(name, flags, 300)
                    if result.get("lost"):
                        log(f"warning: {name} lost {result['lost']} deliveries")
                    log(f"run {run + 1} {label} {name}: "
                        f"{result['deliveries_per_s']:,.0f}/s, "
                        f"{result.get('cpu_s_per_million')} s/M "
                        f"({time.monotonic() - started:.0f} s)")
                    records.append({"kind": "fanout", "run": run + 1, "scenario": label,
                                    "server": name, "result": result})
        for run in range(args.idle_runs):
            for name in servers:
                flags = ["--idle", "--clients", str(args.idle_clients), "--duration", "3"]
                result = measure(name, flags, 600)
                log(f"idle run {run + 1} {name}: {result['rss_per_conn_bytes']} B/conn, "
                    f"{result['server_rss_kib_after_close'] / 1024:.1f} MiB after "
                    f"({time.monotonic() - started:.0f} s)")
                records.append({"kind": "idle", "run": run + 1, "server": name,
                                "result": result})

    def values(kind: str, name: str, key: str, label: str | None = None) -> list[float]:
        return [float(r["result"][key]) for r in records
                if r["kind"] == kind and r["server"] == name
                and (label is None or r["scenario"] == label)
                and r["result"].get(key) is not None]

    def ratio(kind: str, key: str, label: str | None = None) -> float | None:
        a, b = values(kind, SIGNALR, key, label), values(kind, RAW, key, label)
        return statistics.median(a) / statistics.median(b) if a and b else None

    loop = f"{args.rate:g} broadcasts/s" if args.rate else "closed loop, 50 in flight"
    lines = [benchlib.machine_line(benchlib.machine_info({}), "loadgen", "shared"), "",
             f"Fan-out: N = {args.clients} in one group, 1 sender, {loop}, {args.duration:g} s, "
             f"{args.runs} runs, medians (min-max), interleaved {RAW}, {SIGNALR}, ...", "",
             f"| message | deliveries/s {RAW} | deliveries/s {SIGNALR} | ratio | "
             f"CPU s/M {RAW} | CPU s/M {SIGNALR} | ratio |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    over_goal = []
    for label, _ in SCENARIOS:
        cpu_ratio = ratio("fanout", "cpu_s_per_million", label)
        if cpu_ratio is not None and cpu_ratio > args.goal:
            over_goal.append(f"{label}: {cpu_ratio:.2f}x")
        lines.append(
            f"| {label} | {spread(values('fanout', RAW, 'deliveries_per_s', label), '{:,.0f}')} | "
            f"{spread(values('fanout', SIGNALR, 'deliveries_per_s', label), '{:,.0f}')} | "
            f"{benchlib.ratio(ratio('fanout', 'deliveries_per_s', label))} | "
            f"{spread(values('fanout', RAW, 'cpu_s_per_million', label), '{:.3f}')} | "
            f"{spread(values('fanout', SIGNALR, 'cpu_s_per_million', label), '{:.3f}')} | "
            f"{benchlib.ratio(cpu_ratio)} |")
    if args.idle_runs:
        lines += ["", f"Idle: {args.idle_clients} clients, {args.idle_runs} runs", "",
                  "| server | RSS per connection, bytes | RSS after all left |",
                  "| --- | ---: | ---: |"]
        for name in servers:
            after = [v / 1024 for v in values("idle", name, "server_rss_kib_after_close")]
            lines.append(f"| {name} | "
                         f"{spread(values('idle', name, 'rss_per_conn_bytes'), '{:,.0f}')} | "
                         f"{spread(after, '{:.1f} MiB')} |")
        lines.append(f"| ratio | {benchlib.ratio(ratio('idle', 'rss_per_conn_bytes'))} | |")
    lines += ["", f"Goal: SignalR's CPU per delivery at most {args.goal:g}x the chat's: "
              + (f"missed ({', '.join(over_goal)})" if over_goal else "met")]
    summary = "\n".join(lines)
    print(summary)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"signalr-{time.strftime('%Y%m%d-%H%M%S')}.json"
    benchlib.save({"records": records, "summary": summary}, path)
    log(f"wrote {path}")
    return 1 if over_goal else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
