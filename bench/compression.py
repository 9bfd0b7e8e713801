#!/usr/bin/env python3
"""permessage-deflate: fan-out with and without compression, and idle memory with it.

    python3 bench/compression.py            # ~8 min: 3 runs, N = 1000, 4 KiB JSON-like

One run, interleaved (run 1 of every case, then run 2, ...), servers fresh on port 0:

- fan-out: `loadgen --clients N --senders 1 --window 50 --size 4096 --json` (messages of
  chat-like JSON) against the chat example, whose server offers permessage-deflate,
  with `--deflate` (the clients offer it, as browsers do: every broadcast goes compressed,
  compressed once) and without (the same server, plain frames); and against the axum
  baseline (no compression). Deliveries/s, server CPU seconds per million deliveries, and
  the bytes the clients read from their sockets per delivery.
- idle: `loadgen --idle --clients 10000`, with and without `--deflate`: the server's RSS
  per connection with compression agreed next to without.

Output: a Markdown summary on stdout and `bench/results/compression-<timestamp>.json`.
The load generator inflates what it receives, on the same cores as the server: compare
server CPU per delivery and bytes on the wire, not deliveries/s, across the cases.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import benchlib
from benchlib import ROOT, log, spread
from density import Server, loadgen


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--idle-clients", type=int, default=10000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    benchlib.raise_nofile_limit()
    benchlib.cargo_build(["chat", "baseline_axum", "loadgen"])
    examples = benchlib.target_dir() / "release" / "examples"
    cases = [
        ("chat, clients offer permessage-deflate", examples / "chat", ["--deflate"]),
        ("chat, clients do not", examples / "chat", []),
        ("axum (no compression)", examples / "baseline_axum", []),
    ]
    records: list[dict] = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        for run in range(args.runs):
            for name, binary, extra in cases:
                extra_server = ["--no-notices"] if binary.name == "chat" else []
                server = Server(binary, extra_server, work)
                try:
                    flags = ["--clients", str(args.clients), "--senders", "1", "--window", "50",
                             "--size", str(args.size), "--json", "--duration", "8", *extra]
                    result = loadgen(server, "/api/Chat", flags, 300)
                finally:
                    server.stop()
                log(f"fan-out {name} run {run + 1}: {result['deliveries_per_s']:.0f}/s, "
                    f"{result['cpu_s_per_million']} s/M, "
                    f"{result['wire_bytes_per_delivery']} B/delivery")
                records.append({"kind": "fanout", "case": name, "result": result})
        for run in range(min(args.runs, 2)):
            for name, extra in [("compression agreed", ["--deflate"]), ("plain", [])]:
                server = Server(examples / "chat", ["--no-notices"], work)
                try:
                    flags = ["--idle", "--clients", str(args.idle_clients), "--duration", "3",
                             *extra]
                    result = loadgen(server, "/api/Chat", flags, 300)
                finally:
                    server.stop()
                log(f"idle {name} run {run + 1}: {result['rss_per_conn_bytes']} B/conn "
                    f"({result['deflate_agreed']} agreed)")
                records.append({"kind": "idle", "case": name, "result": result})

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"compression-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"records": records}, indent=1))

    def values(kind: str, case: str, key: str) -> list[float]:
        return [float(r["result"][key]) for r in records
                if r["kind"] == kind and r["case"] == case and r["result"].get(key) is not None]

    lines = [benchlib.machine_line(benchlib.machine_info({}), "loadgen", "shared"), "",
             f"| N = {args.clients}, {args.size} B JSON-like, 1 sender, window 50 | deliveries/s "
             "| server CPU s per million | bytes on the wire per delivery |",
             "| --- | ---: | ---: | ---: |"]
    for name, _, _ in cases:
        lines.append(f"| {name} | {spread(values('fanout', name, 'deliveries_per_s'), '{:,.0f}')} | "
                     f"{spread(values('fanout', name, 'cpu_s_per_million'), '{:.2f}')} | "
                     f"{spread(values('fanout', name, 'wire_bytes_per_delivery'), '{:,.0f}')} |")
    lines += ["", f"| idle, {args.idle_clients} clients | RSS per connection, bytes |",
              "| --- | ---: |"]
    for name in ["compression agreed", "plain"]:
        lines.append(f"| {name} | {spread(values('idle', name, 'rss_per_conn_bytes'), '{:,.0f}')} |")
    summary = "\n".join(lines)
    print(summary)
    path.write_text(json.dumps({"records": records, "summary": summary}, indent=1))
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
