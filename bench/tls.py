#!/usr/bin/env python3
"""TLS and HTTP/2: fan-out and idle memory over TLS, WebSockets as HTTP/1.1 Upgrades and as
HTTP/2 streams (RFC 8441), against the axum baseline over the same TLS in the same run.

    python3 bench/tls.py                          # ~40 min: 3 fan-out runs, 2 idle runs
    python3 bench/tls.py --baseline-rev 9dcfc7e   # also the chat of that revision (~70 min)
    python3 bench/tls.py --runs 1 --idle-runs 1 --sizes 64   # a quick look, ~8 min
    python3 bench/tls.py --runs 0 --idle-runs 1 --skip-axum  # idle memory only, ~3 min
    python3 bench/tls.py --baseline-binary /tmp/chat-old --baseline-name old   # built already

Every measurement waits for the server's memory to settle after its clients have gone
(`loadgen`'s RSS after close), which is most of the time.

The servers are the chat example (`--no-notices`) and `examples/baseline_axum.rs`, both
with `--tls-cert/--tls-key` (rustls with ring, HTTP/2 or HTTP/1.1 by ALPN on one port), on
a P-256 certificate made for the run with `openssl req`, started fresh on port 0 for every
measurement, in interleaved order (run 1 of every case, then run 2, ...).

- fan-out: `loadgen --clients N --senders 1 --window 50 --size S`, over `wss://` (HTTP/1.1
  Upgrade over TLS) and with `--http2 --streams 100` (each client a stream, 100 streams per
  HTTP/2 connection), and the chat over plain `ws://` for reference: deliveries/s, the
  chat's ratio to axum over the same transport, server CPU seconds per million deliveries,
  and deliveries per write system call of the server (`syscw` in /proc/PID/io: what shows
  whether a batch still goes out as one write through the TLS session).
- idle: `loadgen --idle --clients 10000` the same ways: the server's RSS per connection
  (per stream over HTTP/2).

`--goal X` (default 3) fails the run (exit status 1) unless, at 64 B, the chat's median
deliveries/s is at least X times axum's over TLS with HTTP/1.1 and over HTTP/2 alike.
`--idle-goal BYTES` (default 3,072, issue 30's target; 0: none) fails it too when the chat's
median RSS per idle connection over TLS with HTTP/1.1 is above BYTES.
Output: a Markdown summary on stdout and `bench/results/tls-<timestamp>.json`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib
from benchlib import ROOT, log, spread
from density import Server, build_baseline, loadgen

HTTP1, HTTP2 = "TLS, HTTP/1.1", "TLS, HTTP/2"


def make_certificate(work: Path) -> list[str]:
    """A self-signed certificate for 127.0.0.1; the server flags that serve it."""
    cert, key = work / "cert.pem", work / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-addext", "basicConstraints=critical,CA:FALSE",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return ["--tls-cert", str(cert), "--tls-key", str(key)]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="fan-out runs per case")
    parser.add_argument("--idle-runs", type=int, default=2)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--idle-clients", type=int, default=10000)
    parser.add_argument("--sizes", type=lambda t: benchlib.int_list(t, positive=True),
                        default=[64, 4096], help="message sizes, comma-separated")
    parser.add_argument("--goal", type=float, default=3.0)
    parser.add_argument("--idle-goal", type=int, default=3072,
                        help="most bytes of RSS per idle TLS (HTTP/1.1) chat connection "
                             "(0: no goal)")
    parser.add_argument("--baseline-rev", help="also measure the chat of this git revision")
    parser.add_argument("--baseline-target", type=Path,
                        help="cargo target directory for the baseline (default: a temporary one)")
    parser.add_argument("--baseline-binary", type=Path,
                        help="also measure this chat binary (of another revision, built already)")
    parser.add_argument("--baseline-name", default="baseline",
                        help="what to call --baseline-binary in the results (chat@NAME)")
    parser.add_argument("--skip-axum", action="store_true",
                        help="leave the axum baseline out (no goal is checked then)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    benchlib.raise_nofile_limit()
    # The chat serves TLS with the crate's `tls` feature.
    benchlib.cargo_build(["chat", "baseline_axum", "loadgen"], features=["tls"])
    examples = benchlib.target_dir() / "release" / "examples"
    records: list[dict] = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        tls = make_certificate(work)
        ca = ["--ca", tls[1]]
        h2 = ["--http2", "--streams", "100"]
        servers = {"chat": (examples / "chat", ["--no-notices"])}
        if not args.skip_axum:
            servers["axum"] = (examples / "baseline_axum", [])
        if args.baseline_binary:
            servers[f"chat@{args.baseline_name}"] = (args.baseline_binary, ["--no-notices"])
        if args.baseline_rev:
            target = args.baseline_target or work / "target"
            binary = build_baseline(args.baseline_rev, work, target, features=["tls"])
            servers[f"chat@{args.baseline_rev}"] = (binary, ["--no-notices"])
        # (server, transport, server flags, URL scheme, loadgen flags)
        cases = [("chat", "plain", [], "ws", [])]
        for name in servers:
            cases += [(name, HTTP1, tls, "wss", ca), (name, HTTP2, tls, "wss", ca + h2)]

        def measure(kind: str, name: str, transport: str, extra_server: list[str], scheme: str,
                    flags: list[str], size: int | None = None) -> None:
            binary, own = servers[name]
            server = Server(binary, own + extra_server, work)
            try:
                result = loadgen(server, "/api/Chat", flags, 300, scheme)
            finally:
                server.stop()
            records.append({"kind": kind, "server": name, "transport": transport, "size": size,
                            "result": result})
            if kind == "idle":
                log(f"idle {name} {transport}: {result['rss_per_conn_bytes']} B/conn")
            else:
                log(f"fan-out {size} B {name} {transport}: {result['deliveries_per_s']:,.0f}/s, "
                    f"{result['cpu_s_per_million']} s/M, "
                    f"{result['deliveries_per_server_write']} deliveries/write")

        try:
            for run in range(args.runs):
                for size in args.sizes:
                    for name, transport, extra_server, scheme, extra in cases:
                        flags = ["--clients", str(args.clients), "--senders", "1", "--window",
                                 "50", "--size", str(size), "--duration", "8", *extra]
                        measure("fanout", name, transport, extra_server, scheme, flags, size)
            for run in range(args.idle_runs):
                for name, transport, extra_server, scheme, extra in cases:
                    flags = ["--idle", "--clients", str(args.idle_clients), "--duration", "3",
                             *extra]
                    measure("idle", name, transport, extra_server, scheme, flags)
        finally:
            if args.baseline_rev:
                subprocess.run(["git", "worktree", "remove", "--force", str(work / "baseline")],
                               cwd=ROOT, capture_output=True)

    def values(kind: str, name: str, transport: str, key: str, size: int | None = None):
        return [float(r["result"][key]) for r in records
                if (r["kind"], r["server"], r["transport"], r["size"]) == (kind, name, transport, size)
                and r["result"].get(key) is not None]

    def median(kind: str, name: str, transport: str, key: str, size: int | None = None):
        found = values(kind, name, transport, key, size)
        return statistics.median(found) if found else None

    lines = [benchlib.machine_line(benchlib.machine_info({}), "loadgen", "shared"), ""]
    goals = []
    for size in args.sizes:
        lines += [f"| N = {args.clients}, {size} B, 1 sender, window 50 | deliveries/s | "
                  "x axum, same transport | server CPU s per million | deliveries per write |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for name, transport, *_ in cases:
            rate = median("fanout", name, transport, "deliveries_per_s", size)
            axum = median("fanout", "axum", transport, "deliveries_per_s", size)
            times = rate / axum if rate and axum and name != "axum" else None
            if name == "chat" and transport != "plain" and size == 64:
                goals.append((transport, times))
            lines.append(
                f"| {name}, {transport} | "
                f"{spread(values('fanout', name, transport, 'deliveries_per_s', size), '{:,.0f}')} | "
                f"{benchlib.ratio(times)} | "
                f"{spread(values('fanout', name, transport, 'cpu_s_per_million', size), '{:.2f}')} | "
                f"{spread(values('fanout', name, transport, 'deliveries_per_server_write', size), '{:.1f}')} |")
        lines.append("")
    lines += [f"| idle, {args.idle_clients:,} clients | RSS per connection, bytes |", "| --- | ---: |"]
    for name, transport, *_ in cases:
        lines.append(f"| {name}, {transport} | "
                     f"{spread(values('idle', name, transport, 'rss_per_conn_bytes'), '{:,.0f}')} |")
    met = bool(goals) and all(times is not None and times >= args.goal for _, times in goals)
    if args.skip_axum:
        lines += ["", "goal: not checked (--skip-axum)"]
    else:
        lines += ["", "goal (64 B, chat >= {:g}x axum over TLS, HTTP/1.1 and HTTP/2): {}".format(
            args.goal, "met" if met else "MISSED") + " (" + ", ".join(
            f"{transport} {benchlib.ratio(times)}" for transport, times in goals) + ")"]
    idle_met = True
    if args.idle_goal and args.idle_runs:
        idle = median("idle", "chat", HTTP1, "rss_per_conn_bytes")
        idle_met = idle is not None and idle <= args.idle_goal
        lines += ["", "idle goal (chat, TLS, HTTP/1.1, RSS per connection <= {:,} bytes): {}".format(
            args.idle_goal, "met" if idle_met else "MISSED") + (
            f" ({idle:,.0f})" if idle is not None else " (not measured)")]
    summary = "\n".join(lines)
    print(summary)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"tls-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"records": records, "summary": summary}, indent=1))
    log(f"wrote {path}")
    return 0 if (met or args.skip_axum) and idle_met else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
