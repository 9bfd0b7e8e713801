#!/usr/bin/env python3
"""End-to-end chat-server comparison: one command reruns it.

    python3 bench/compare.py            # full run (~15 min on 2 cores)
    python3 bench/compare.py --quick    # 1 run, N=100,1000, 3 s (~2 min)

Servers (all speak the chat protocol of examples/chat/main.rs, started on port 0):
  chat         examples/chat/main.rs            (this crate)
  axum         examples/baseline_axum.rs        (axum + tokio::sync::broadcast)
  tungstenite  examples/baseline_tungstenite.rs (tokio-tungstenite + per-client mpsc)
  node         bench/node-baseline/server.js    (Node http + ws; skipped without node/npm)
  uws          ../shared/peers/uws-chat         (uWebSockets, C++, one thread; built with its
                                                 build.sh into OUT/uws, skipped when absent)

For every (payload size, client count) and run index the servers are measured in
interleaved order (A B C D A B C D ...), each one started fresh, loaded by
target/release/examples/loadgen and stopped again.  Then, at --latency-clients clients,
open-loop latency runs at each --rates value, and --idle-runs idle memory runs per server at
each of the --idle-clients connection counts (a count's runs alternate between the
servers; the counts come one after the other). With two counts or more, each server's RSS per
added connection is given too (the least-squares slope over the counts):
what one more connection costs, without what the first ones fault in once (code, the
allocator's first pages), which the RSS per connection at one count carries.

With uWebSockets measured, a section gives every server's deliveries per second of server
CPU and server CPU seconds per million deliveries over uWebSockets' (medians of the
interleaved runs, and run by run), and a goal line: the chat's deliveries per server
CPU-second at 64 B over uWebSockets', which must be at least --goal (issue 30: 1.2), or
the exit status is 1. With two idle counts or more, the chat's RSS per added connection
must be at most --idle-goal bytes (issue 30: 1024), or the exit status is 1 too.

Output: OUT/results-<timestamp>.json (every raw run, the aggregates and the machine),
OUT/summary.md (also printed) and OUT/fanout.svg (deliveries/s against N, one panel per
payload size).  Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from xml.sax.saxutils import escape

import benchlib
from benchlib import (ROOT, ServerOutput, cargo_build, fit, int_list, last_json, loadgen_flags,
                      loadgen_timeout, log, machine_info, machine_line, median_ratios, ms,
                      name_list, raise_nofile_limit, ratio, record_loadgen, save, si,
                      summarize, target_dir)

NODE_DIR = ROOT / "bench" / "node-baseline"
ALL_SERVERS = ["chat", "axum", "tungstenite", "node", "uws"]
# `chat-deflate`: the chat, its clients offering permessage-deflate (loadgen --deflate).
# Not among the defaults; with `--json` every server gets chat-like JSON to compress.
# `chat-1t`: the chat on one tokio worker thread (TOKIO_WORKER_THREADS=1), as uWebSockets
# runs on one.
EXTRA_SERVERS = ["chat-deflate", "chat-1t"]
RUST_EXAMPLES = {"chat": "chat", "chat-deflate": "chat", "chat-1t": "chat",
                 "axum": "baseline_axum", "tungstenite": "baseline_tungstenite"}
# Environment a server starts with, beside this script's.
SERVER_ENV = {"chat-1t": {"TOKIO_WORKER_THREADS": "1"}}
# Metrics aggregated per group: (key in the run record, higher is better?)
METRICS = {
    "deliveries_per_s": True,
    "deliveries_per_cpu_s": True,
    "p50_us": False,
    "p99_us": False,
    "rss_per_conn_bytes": False,
    "cpu_s_per_million": False,
    "lost": False,
}
COLORS = {"chat": "#1f5fbf", "chat-deflate": "#5fa8ff", "chat-1t": "#0b2f6b", "axum": "#e07b00",
          "tungstenite": "#2a9d3a", "node": "#8e44ad", "uws": "#c0392b"}
MARKERS = {"chat": "circle", "chat-deflate": "circle", "chat-1t": "circle", "axum": "square",
           "tungstenite": "triangle", "node": "diamond", "uws": "square"}
# The server the CPU-cost section compares against, and what issue 30 asks of the chat:
# at 64 B, at least this many times uWebSockets' deliveries per second of server CPU.
PEER = "uws"
GOAL = 1.2
# Issue 30: an idle chat connection at 1 KiB, as RSS per added connection.
IDLE_GOAL = 1024


def int_list_or_empty(text: str) -> list[int]:
    return int_list(text, allow_empty=True)


server_list = name_list(ALL_SERVERS + EXTRA_SERVERS, "server")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare the chat example against baseline servers with loadgen.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true",
                        help="1 run, N=100,1000, 3 s each")
    parser.add_argument("--servers", type=server_list, default=ALL_SERVERS)
    parser.add_argument("--clients", type=int_list, default=None,
                        help="client counts N (default 100,1000,5000; quick 100,1000)")
    parser.add_argument("--sizes", type=int_list, default=[64, 4096], help="payload bytes")
    parser.add_argument("--runs", type=int, default=None, help="runs per cell (default 3; quick 1)")
    parser.add_argument("--duration", type=float, default=None,
                        help="measured seconds per run (default 5; quick 3)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="loadgen warm-up seconds (default 1; quick 0.5)")
    parser.add_argument("--senders", type=int, default=10, help="clients that send")
    parser.add_argument("--window", type=int, default=8,
                        help="messages in flight per sender (closed loop)")
    parser.add_argument("--connect-batch", type=int, default=100,
                        help="concurrent connects; keep it under the servers' listen backlog "
                             "(128 for Rust's std/tokio listeners), or dropped SYNs cost 1 s each")
    parser.add_argument("--rates", type=int_list_or_empty, default=[100, 1000],
                        help="open-loop rates (messages/s) for the latency runs; empty to skip")
    parser.add_argument("--latency-clients", type=int, default=1000)
    parser.add_argument("--latency-sizes", type=int_list_or_empty, default=None,
                        help="payload sizes for the latency runs (default: the first of --sizes)")
    parser.add_argument("--latency-duration", type=float, default=None,
                        help="measured seconds per latency run (default: --duration; quick 2)")
    parser.add_argument("--latency-runs", type=int, default=None,
                        help="runs per latency cell (default: --runs)")
    parser.add_argument("--idle-clients", type=int_list_or_empty, default=[10000],
                        help="connection counts for the idle memory runs (empty or 0 skips "
                             "them; two or more also give the RSS per added connection)")
    parser.add_argument("--idle-runs", type=int, default=1,
                        help="idle memory runs per server and count (alternating between the "
                             "servers)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds before one loadgen call is killed (default: computed)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--uws", type=Path, default=benchlib.UWS_DEFAULT,
                        help="the uWebSockets chat's directory (build.sh), built into OUT/uws")
    parser.add_argument("--goal", type=float, default=GOAL,
                        help="exit 1 unless the chat's deliveries per server CPU-second at 64 B "
                             "are at least this many times uWebSockets' (when it is measured; "
                             "0: no goal)")
    parser.add_argument("--idle-goal", type=float, default=IDLE_GOAL,
                        help="exit 1 unless the chat's RSS per added idle connection (the slope, "
                             "with two idle counts or more) is at most this many bytes (0: no "
                             "goal)")
    parser.add_argument("--json", action="store_true",
                        help="pad messages with chat-like JSON (for chat-deflate), not x's")
    parser.add_argument("--no-build", action="store_true", help="skip cargo build")
    parser.add_argument("--dry-run", action="store_true",
                        help="start and stop the real servers but fake loadgen's numbers "
                             "(checks the plumbing; needs no loadgen)")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs = 1 if args.runs is None else args.runs
        args.clients = [100, 1000] if args.clients is None else args.clients
        args.duration = 3.0 if args.duration is None else args.duration
        args.warmup = 0.5 if args.warmup is None else args.warmup
        args.latency_duration = 2.0 if args.latency_duration is None else args.latency_duration
    args.warmup = 1.0 if args.warmup is None else args.warmup
    if args.latency_sizes is None:
        args.latency_sizes = args.sizes[:1]
    args.runs = 3 if args.runs is None else args.runs
    args.clients = [100, 1000, 5000] if args.clients is None else args.clients
    args.duration = 5.0 if args.duration is None else args.duration
    args.latency_runs = args.runs if args.latency_runs is None else args.latency_runs
    if args.latency_duration is None:
        args.latency_duration = args.duration
    if args.runs < 1 or args.latency_runs < 1 or args.duration <= 0 or args.latency_duration <= 0:
        parser.error("--runs and --latency-runs must be >= 1, durations > 0")
    if not args.out.is_absolute():
        args.out = Path.cwd() / args.out
    return args


# ---------------------------------------------------------------- environment


def build(servers: list[str], with_loadgen: bool) -> None:
    examples = [RUST_EXAMPLES[s] for s in servers if s in RUST_EXAMPLES]
    if with_loadgen:
        examples.append("loadgen")
    if examples:
        cargo_build(examples)


def prepare_node() -> str | None:
    """Returns None when Node can run, else the reason to skip it."""
    if not shutil.which("node"):
        return "node is not installed"
    if (NODE_DIR / "node_modules" / "ws").is_dir():
        return None
    if not shutil.which("npm"):
        return "npm is not installed and bench/node-baseline/node_modules is missing"
    # No lockfile: it would record the registry's address, and the range in package.json
    # is all this baseline needs.
    cmd = ["npm", "install", "--no-audit", "--no-fund", "--no-package-lock"]
    log(f"$ (cd {NODE_DIR.relative_to(ROOT)} && {' '.join(cmd)})")
    try:
        done = subprocess.run(cmd, cwd=NODE_DIR, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"npm install failed: {error}"
    if done.returncode != 0 or not (NODE_DIR / "node_modules" / "ws").is_dir():
        return f"npm install failed (exit {done.returncode})"
    return None


def server_command(name: str, uws: Path | None = None) -> list[str]:
    """How to start `name`; `uws` is the uWebSockets chat's binary, when it was built."""
    addr = ["--addr", "127.0.0.1:0"]
    if name == PEER:
        if uws is None:
            raise RuntimeError("the uWebSockets chat was not built")
        return benchlib.uws_command(uws)
    if name == "node":
        return ["node", str(NODE_DIR / "server.js"), *addr]
    command = [str(target_dir() / "release" / "examples" / RUST_EXAMPLES[name]), *addr]
    if name in ("chat", "chat-deflate", "chat-1t"):
        # The baselines announce nothing; the chat's join and leave notices would make it
        # do extra work (a join storm of N clients is N*N/2 notices).
        command.append("--no-notices")
    return command


# ---------------------------------------------------------------- one run


class Server(ServerOutput):
    """A server process started on port 0, stopped by its PID."""

    def __init__(self, name: str, log_dir: Path, uws: Path | None = None):
        self.name = name
        self.stderr = tempfile.TemporaryFile(mode="w+b", dir=log_dir)
        self.proc = subprocess.Popen(
            server_command(name, uws),
            cwd=ROOT,
            env={**os.environ, **SERVER_ENV.get(name, {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
        )
        addr, seen = self.read_address(timeout=15.0)
        if addr is None:
            self.stop()
            raise RuntimeError(
                f"{self.name} did not print its address (stdout {seen[-300:]!r}, "
                f"stderr {self.stderr_tail()!r})"
            )
        self.addr = addr
        self.drain_stdout()

    def stop(self) -> int | None:
        return benchlib.terminate(self.proc)


def loadgen_command(args: argparse.Namespace, url: str, pid: int, params: dict) -> list[str]:
    cmd = [
        str(target_dir() / "release" / "examples" / "loadgen"),
        "--url", url,
        *loadgen_flags(args, params["clients"], params["rate"], params["size"],
                       params["duration"], params["warmup"]),
        "--server-pid", str(pid),
        "--quiet",
    ]
    if params["kind"] == "idle":
        cmd.append("--idle")
    if params.get("server") == "chat-deflate":
        cmd.append("--deflate")
    if args.json:
        cmd.append("--json")
    return cmd


def fake_loadgen(server: Server, params: dict, run_index: int) -> dict:
    """Plausible numbers for --dry-run, with a visible per-server difference."""
    base = {"chat": 1.0, "chat-deflate": 0.9, "chat-1t": 0.8, "axum": 0.55, "tungstenite": 0.6,
            "node": 0.45, "uws": 0.85}[server.name]
    wiggle = 1.0 + 0.04 * ((run_index * 7 + len(server.name)) % 5 - 2)
    n, size = params["clients"], params["size"]
    idle = params["kind"] == "idle"
    rate = (0 if idle else 2.5e6 * base * wiggle * (1.0 if size <= 1024 else 0.35)
            * min(1.0, math.log10(max(n, 10)) / 3))
    if params["rate"]:
        rate = min(rate, params["rate"] * n)
    deliveries = int(rate * params["duration"])
    p99 = 2000.0 / base * (n / 1000) ** 0.5 * wiggle
    rss_per_conn = (12000 if server.name == "node" else 6000 / base ** 0.5) * wiggle
    cpu = 0.4 / base * wiggle
    return {
        "server_url": server.addr, "clients": n, "senders": 10, "rate": params["rate"],
        "window": 8, "size": size, "duration_s": params["duration"], "connect_s": n / 5000,
        "sent": None if idle else deliveries // max(n, 1), "expected_deliveries": deliveries,
        "deliveries": deliveries, "lost": 0, "deliveries_per_s": rate,
        "latency_us": None if idle else {"p50": p99 / 4, "p90": p99 / 2, "p99": p99,
                                         "p999": p99 * 2, "max": p99 * 4},
        "server_rss_kib_before": 4000,
        "server_rss_kib_connected": 4000 + rss_per_conn * n / 1024,
        "server_rss_kib_end": 4000 + rss_per_conn * n / 1024,
        "rss_per_conn_bytes": rss_per_conn, "server_cpu_s": cpu * deliveries / 1e6,
        "cpu_s_per_million": None if idle else cpu, "errors": [],
    }


def skipped_by_server(stderr_text: str) -> int | None:
    """Messages the axum baseline reported as skipped by lagging receivers."""
    counts = [int(m) for m in re.findall(r"skipped (\d+) messages", stderr_text)]
    return sum(counts) if counts else None


def run_one(args: argparse.Namespace, name: str, params: dict, run_index: int,
            log_dir: Path) -> dict:
    record = {"server": name, "kind": params["kind"], "size": params["size"],
              "clients": params["clients"], "rate": params["rate"], "run": run_index,
              "ok": False, "error": None, "loadgen": None}
    started = time.monotonic()
    try:
        server = Server(name, log_dir, args.uws_binary)
    except (OSError, RuntimeError) as error:
        record["error"] = f"server start: {error}"
        return record
    try:
        record["server_pid"] = server.pid
        url = f"ws://{server.addr}/api/Chat"
        if args.dry_run:
            time.sleep(0.05)
            result, code, stderr = fake_loadgen(server, params, run_index), 0, ""
        else:
            cmd = loadgen_command(args, url, server.pid, {**params, "server": name})
            record["command"] = " ".join(cmd)
            timeout = loadgen_timeout(args, params["clients"], params["warmup"],
                                      params["duration"])
            try:
                done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                                      timeout=timeout)
            except subprocess.TimeoutExpired:
                record["error"] = f"loadgen timed out after {timeout:g} s"
                return record
            code, stderr = done.returncode, done.stderr
            result = last_json(done.stdout)
        record["loadgen_exit"] = code
        record_loadgen(record, result, code, stderr)
        if server.proc.poll() is not None:
            record["ok"] = False
            record["error"] = (record["error"] or "") + (
                f" server exited early with {server.proc.returncode}: {server.stderr_tail()}"
            )
    finally:
        record["server_exit"] = server.stop()
        record["server_skipped"] = skipped_by_server(server.stderr_text())
        server.stderr.close()
        record["wall_s"] = round(time.monotonic() - started, 2)
    return record


def flatten(record: dict) -> dict:
    """The metrics of one run, taken from loadgen's JSON (None where unknown)."""
    result = record.get("loadgen") or {}
    latency = result.get("latency_us") or {}
    return {
        "deliveries_per_s": result.get("deliveries_per_s"),
        "p50_us": latency.get("p50"),
        "p99_us": latency.get("p99"),
        "rss_per_conn_bytes": result.get("rss_per_conn_bytes"),
        "cpu_s_per_million": result.get("cpu_s_per_million"),
        "deliveries_per_cpu_s": (1e6 / result["cpu_s_per_million"]
                                 if result.get("cpu_s_per_million") else None),
        "lost": result.get("lost"),
    }


# ---------------------------------------------------------------- aggregates


def group_key(record: dict) -> tuple:
    return (record["kind"], record["size"], record["clients"], record["rate"])


def aggregate(runs: list[dict], servers: list[str]) -> list[dict]:
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for record in runs:
        groups.setdefault(group_key(record), {}).setdefault(record["server"], []).append(record)
    out = []
    for key in sorted(groups, key=lambda k: (["throughput", "latency", "idle"].index(k[0]),
                                             k[1], k[2], k[3])):
        kind, size, clients, rate = key
        per_server = {name: summarize(groups[key].get(name, []), METRICS, flatten)
                      for name in servers}
        ratios: dict[str, dict[str, float | None]] = {}
        chat = per_server.get("chat")
        if chat:
            for name, entry in per_server.items():
                if name != "chat":
                    ratios[name] = median_ratios(chat, entry, METRICS)
        agg = {"kind": kind, "size": size, "clients": clients, "rate": rate,
               "servers": per_server, "chat_over": ratios}
        peer = per_server.get(PEER)
        if kind == "throughput" and peer and peer["ok_runs"]:
            agg["over_peer"] = over_peer(groups[key], per_server)
        out.append(agg)
    return out


def over_peer(by_server: dict[str, list[dict]], per_server: dict[str, dict]) -> dict:
    """Each server's CPU cost against uWebSockets' in one cell: the ratio of the medians,
    and run by run (run i of each was measured next to the other's run i)."""
    peer_runs = {r["run"]: flatten(r) for r in by_server.get(PEER, []) if r["ok"]}
    out = {}
    for name, entry in per_server.items():
        ratios = median_ratios(entry, per_server[PEER], METRICS)
        per_run: dict[str, list[float]] = {"deliveries_per_cpu_s": [], "cpu_s_per_million": []}
        for record in sorted(by_server.get(name, []), key=lambda r: r["run"]):
            theirs = peer_runs.get(record["run"])
            if not record["ok"] or not theirs:
                continue
            ours = flatten(record)
            for metric, values in per_run.items():
                if ours[metric] and theirs[metric]:
                    values.append(ours[metric] / theirs[metric])
        out[name] = {
            "deliveries_per_cpu_s": ratios["deliveries_per_cpu_s"],
            "cpu_s_per_million": ratios["cpu_s_per_million"],
            "per_run": per_run,
        }
    return out


def peer_goal(aggregates: list[dict], goal: float) -> list[dict]:
    """Issue 30's target, cell by cell at 64 B: the chat's deliveries per server CPU-second
    over uWebSockets' (medians), and whether it reaches `goal`."""
    out = []
    for agg in aggregates:
        ratios = (agg.get("over_peer") or {}).get("chat")
        if agg["kind"] != "throughput" or agg["size"] != 64 or not ratios:
            continue
        value = ratios["deliveries_per_cpu_s"]
        out.append({"clients": agg["clients"], "ratio": value,
                    "per_run": ratios["per_run"]["deliveries_per_cpu_s"],
                    "met": value is not None and value >= goal})
    return out


# ---------------------------------------------------------------- formatting


# These tables have always shown (min–max) over several runs, even when both ends round
# alike; backplane.py's leave it out then.
fmt_stat = functools.partial(benchlib.fmt_stat, equal_spread=True)


def kib(b: float) -> str:
    return f"{b / 1024:.1f}"


def markdown(report: dict) -> str:
    args, aggregates, machine = report["args"], report["aggregates"], report["machine"]
    lines = []
    title = "# Chat server comparison"
    if report["dry_run"]:
        title += " — DRY RUN (fake loadgen numbers, plumbing check only)"
    lines += [title, ""]
    lines.append(machine_line(machine, f"node {machine.get('node') or '–'}",
                              "Servers and load generator share the machine."))
    lines.append("")
    lines.append(
        f"Median of {args['runs']} run(s), (min–max) when more than one; "
        f"{args['duration']:g} s measured after {args['warmup']:g} s warm-up; "
        f"{args['senders']} senders, window {args['window']}; "
        f"idle memory: median of {args.get('idle_runs', 1)} run(s). "
        "Ratio columns: chat's median ÷ that server's median "
        "(deliveries/s: above 1 = chat faster; p99, memory, CPU: below 1 = chat better)."
    )
    for note in report.get("notes", []):
        lines += ["", f"> {note}"]
    servers = [s for s in args["servers"] if s not in report.get("skipped_servers", {})]

    thr = [a for a in aggregates if a["kind"] == "throughput"]
    if thr:
        lines += ["", "## Fan-out throughput (closed loop)", "",
                  "| size | N | server | deliveries/s | p99 ms | CPU s / M deliveries | lost "
                  "| chat ÷ server (deliveries/s) |",
                  "|---:|---:|---|---:|---:|---:|---:|---:|"]
        for agg in thr:
            for name in servers:
                entry = agg["servers"].get(name) or {}
                r = (agg["chat_over"].get(name) or {}).get("deliveries_per_s")
                lines.append(
                    f"| {agg['size']} | {agg['clients']} | {name} "
                    f"| {fmt_stat(entry.get('deliveries_per_s'), si)} "
                    f"| {fmt_stat(entry.get('p99_us'), ms)} "
                    f"| {fmt_stat(entry.get('cpu_s_per_million'), lambda v: f'{v:.3g}', False)} "
                    f"| {fmt_stat(entry.get('lost'), lambda v: f'{v:.0f}', False)} "
                    f"| {'' if name == 'chat' else ratio(r)} |"
                )
    peer = [a for a in thr if a.get("over_peer")]
    if peer:
        lines += ["", "## CPU cost against uWebSockets", "",
                  "Deliveries per second of server CPU (`1e6 / CPU s per million`) and server "
                  "CPU seconds per million deliveries, each server's ÷ uWebSockets': the ratio "
                  "of the medians, then run by run (run i of each server beside run i of "
                  "uWebSockets). Deliveries per CPU-second above 1× and CPU per million below "
                  "1× = cheaper than uWebSockets.", "",
                  "| size | N | server | deliveries per server CPU-s | ÷ uWS | per run "
                  "| CPU s / M deliveries | ÷ uWS | per run |",
                  "|---:|---:|---|---:|---:|---|---:|---:|---|"]
        for agg in peer:
            for name in servers:
                entry = agg["servers"].get(name) or {}
                r = agg["over_peer"].get(name) or {}
                per_run = r.get("per_run") or {}
                runs = lambda values: " ".join(f"{v:.2f}" for v in values) or "–"
                lines.append(
                    f"| {agg['size']} | {agg['clients']} | {name} "
                    f"| {fmt_stat(entry.get('deliveries_per_cpu_s'), si)} "
                    f"| {'' if name == PEER else ratio(r.get('deliveries_per_cpu_s'))} "
                    f"| {'' if name == PEER else runs(per_run.get('deliveries_per_cpu_s', []))} "
                    f"| {fmt_stat(entry.get('cpu_s_per_million'), lambda v: f'{v:.3g}')} "
                    f"| {'' if name == PEER else ratio(r.get('cpu_s_per_million'))} "
                    f"| {'' if name == PEER else runs(per_run.get('cpu_s_per_million', []))} |"
                )
    goal = report.get("goal")
    if goal:
        lines.append("")
        for cell in goal["cells"]:
            lines.append(
                f"**Goal (issue 30): chat ÷ uWebSockets, deliveries per server CPU-second, "
                f"64 B, N = {cell['clients']}: {ratio(cell['ratio'])}** (runs: "
                f"{' '.join(f'{v:.2f}' for v in cell['per_run']) or '–'}); "
                f"wanted ≥ {goal['goal']:g}×: {'met' if cell['met'] else 'MISSED'}.")
        if not goal["cells"]:
            lines.append(f"Goal (issue 30, ≥ {goal['goal']:g}× uWebSockets at 64 B): not "
                         "checked: uWebSockets or 64 B not measured.")
    lat = [a for a in aggregates if a["kind"] == "latency"]
    if lat:
        lines += ["", "## Latency (open loop)", "",
                  "| size | N | rate msg/s | server | p50 ms | p99 ms | deliveries/s | lost "
                  "| chat ÷ server (p99) |",
                  "|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
        for agg in lat:
            for name in servers:
                entry = agg["servers"].get(name) or {}
                r = (agg["chat_over"].get(name) or {}).get("p99_us")
                lines.append(
                    f"| {agg['size']} | {agg['clients']} | {agg['rate']} | {name} "
                    f"| {fmt_stat(entry.get('p50_us'), ms, False)} "
                    f"| {fmt_stat(entry.get('p99_us'), ms)} "
                    f"| {fmt_stat(entry.get('deliveries_per_s'), si, False)} "
                    f"| {fmt_stat(entry.get('lost'), lambda v: f'{v:.0f}', False)} "
                    f"| {'' if name == 'chat' else ratio(r)} |"
                )
    idle = [a for a in aggregates if a["kind"] == "idle"]
    if idle:
        lines += ["", "## Idle memory", "",
                  "| N idle | server | server RSS per connection, KiB | chat ÷ server |",
                  "|---:|---|---:|---:|"]
        for agg in idle:
            for name in servers:
                entry = agg["servers"].get(name) or {}
                r = (agg["chat_over"].get(name) or {}).get("rss_per_conn_bytes")
                lines.append(
                    f"| {agg['clients']} | {name} "
                    f"| {fmt_stat(entry.get('rss_per_conn_bytes'), kib)} "
                    f"| {'' if name == 'chat' else ratio(r)} |"
                )
        lines += idle_slopes(idle, servers)
    idle_goal = report.get("idle_goal")
    if idle_goal:
        value = idle_goal["bytes"]
        lines += ["", f"**Goal (issue 30): the chat's RSS per added idle connection: "
                  f"{'–' if value is None else f'{value:,.0f}'} bytes**; wanted ≤ "
                  f"{idle_goal['goal']:,.0f}: {'met' if idle_goal['met'] else 'MISSED'}."]
    failed = [r for r in report["runs"] if not r["ok"]]
    if failed:
        lines += ["", f"## Failed runs ({len(failed)})", ""]
        for r in failed:
            lines.append(f"- {r['server']} {r['kind']} size={r['size']} N={r['clients']} "
                         f"rate={r['rate']} run={r['run']}: {(r['error'] or '').strip()[:300]}")
    skipped = report.get("skipped_servers") or {}
    for name, reason in skipped.items():
        lines += ["", f"Skipped {name}: {reason}."]
    lines += ["", f"Raw runs: `{report['results_file']}`; plot: `{report['plot_file']}`.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- SVG


def nice_ceiling(value: float) -> tuple[float, float]:
    """A round axis maximum at or above value, and its tick step."""
    if value <= 0:
        return 1.0, 0.2
    exponent = math.floor(math.log10(value))
    for mantissa in (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0):
        top = mantissa * 10 ** exponent
        if top >= value * 1.02:
            break
    for step_mantissa in (0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0):
        step = step_mantissa * 10 ** exponent
        if 4 <= top / step <= 8:
            return top, step
    return top, top / 5


def text_width(text: str, font_px: float = 12.0) -> float:
    """A rough width of sans-serif text, enough to space legend entries."""
    narrow, wide = set("fijlrt()[] .,:;'|!1"), set("mwMW@")
    em = sum(0.3 if c in narrow else 0.9 if c in wide else 0.58 for c in text)
    return em * font_px


def marker(shape: str, x: float, y: float, color: str) -> str:
    r = 4.5
    if shape == "square":
        return (f'<rect x="{x - r:.1f}" y="{y - r:.1f}" width="{2 * r:.1f}" height="{2 * r:.1f}" '
                f'fill="{color}" stroke="white" stroke-width="1"/>')
    if shape == "triangle":
        points = f"{x:.1f},{y - r - 1:.1f} {x - r - 0.5:.1f},{y + r:.1f} {x + r + 0.5:.1f},{y + r:.1f}"
        return f'<polygon points="{points}" fill="{color}" stroke="white" stroke-width="1"/>'
    if shape == "diamond":
        points = f"{x:.1f},{y - r - 1:.1f} {x + r + 1:.1f},{y:.1f} {x:.1f},{y + r + 1:.1f} {x - r - 1:.1f},{y:.1f}"
        return f'<polygon points="{points}" fill="{color}" stroke="white" stroke-width="1"/>'
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" fill="{color}" stroke="white" stroke-width="1"/>'


def svg_panel(agg_by_n: dict[int, dict], servers: list[str], size: int, runs: int,
              ox: float, oy: float, width: float, height: float) -> list[str]:
    left, right, top, bottom = 78, 20, 76, 56
    pw, ph = width - left - right, height - top - bottom
    x0, y0 = ox + left, oy + top
    ns = sorted(agg_by_n)
    out = [f'<g font-family="Helvetica, Arial, sans-serif" font-size="12" fill="#222">']
    out.append(f'<text x="{ox + width / 2:.1f}" y="{oy + 22}" text-anchor="middle" '
               f'font-size="15" font-weight="bold">Broadcast fan-out, {size}-byte messages</text>')
    spread = f"median of {runs} runs, bars = min–max" if runs > 1 else "1 run"
    out.append(f'<text x="{ox + width / 2:.1f}" y="{oy + 38}" text-anchor="middle" '
               f'font-size="11" fill="#666">{escape(spread)}; higher is better</text>')

    ymax_data = 0.0
    for n in ns:
        for name in servers:
            stat = (agg_by_n[n]["servers"].get(name) or {}).get("deliveries_per_s")
            if stat:
                ymax_data = max(ymax_data, stat["max"])
    ymax, ystep = nice_ceiling(ymax_data)

    # x: log10(N) spacing, padded so the end points are not on the frame.
    logs = [math.log10(max(n, 1)) for n in ns]
    lo, hi = (min(logs), max(logs)) if logs else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    pad = (hi - lo) * 0.08

    def px(n: int) -> float:
        return x0 + (math.log10(max(n, 1)) - lo + pad) / (hi - lo + 2 * pad) * pw

    def py(v: float) -> float:
        return y0 + ph - v / ymax * ph

    out.append(f'<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="#fbfbfb" stroke="none"/>')
    ticks = int(round(ymax / ystep))
    for i in range(ticks + 1):
        v = i * ystep
        y = py(v)
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + pw}" y2="{y:.1f}" '
                   f'stroke="{"#999" if i == 0 else "#e2e2e2"}" stroke-width="1"/>')
        out.append(f'<text x="{x0 - 8}" y="{y + 4:.1f}" text-anchor="end">{si(v)}</text>')
    for n in ns:
        x = px(n)
        out.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y0 + ph}" '
                   f'stroke="#eeeeee" stroke-width="1"/>')
        out.append(f'<line x1="{x:.1f}" y1="{y0 + ph}" x2="{x:.1f}" y2="{y0 + ph + 5}" stroke="#999"/>')
        out.append(f'<text x="{x:.1f}" y="{y0 + ph + 19}" text-anchor="middle">{n:,}</text>')
    out.append(f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y0 + ph}" stroke="#999"/>')
    out.append(f'<text x="{x0 + pw / 2:.1f}" y="{oy + height - 12}" text-anchor="middle">'
               f'connected clients N (log scale)</text>')
    out.append(f'<text transform="translate({ox + 18},{y0 + ph / 2:.1f}) rotate(-90)" '
               f'text-anchor="middle">deliveries per second</text>')

    offsets = {name: (i - (len(servers) - 1) / 2) * 5 for i, name in enumerate(servers)}
    for name in servers:
        color = COLORS.get(name, "#444")
        points = []
        for n in ns:
            stat = (agg_by_n[n]["servers"].get(name) or {}).get("deliveries_per_s")
            if stat:
                points.append((px(n) + offsets[name], stat))
        if not points:
            continue
        width_line = 2.6 if name == "chat" else 1.8
        path = " ".join(f"{x:.1f},{py(s['median']):.1f}" for x, s in points)
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" '
                   f'stroke-width="{width_line}" stroke-linejoin="round"/>')
        for x, s in points:
            if s["n"] > 1 and s["max"] > s["min"]:
                out.append(f'<g stroke="{color}" stroke-width="1.3">'
                           f'<line x1="{x:.1f}" y1="{py(s["min"]):.1f}" x2="{x:.1f}" y2="{py(s["max"]):.1f}"/>'
                           f'<line x1="{x - 4:.1f}" y1="{py(s["min"]):.1f}" x2="{x + 4:.1f}" y2="{py(s["min"]):.1f}"/>'
                           f'<line x1="{x - 4:.1f}" y1="{py(s["max"]):.1f}" x2="{x + 4:.1f}" y2="{py(s["max"]):.1f}"/></g>')
            out.append(marker(MARKERS.get(name, "circle"), x, py(s["median"]), color))

    # Legend: one row between the subtitle and the plot.
    labels = [("chat (this crate)" if name == "chat" else name) for name in servers]
    item_w = [30 + text_width(label) for label in labels]
    lx = x0 + (pw - sum(item_w) - 22 * (len(servers) - 1)) / 2
    ly = oy + 58
    for name, label, w in zip(servers, labels, item_w):
        color = COLORS.get(name, "#444")
        out.append(f'<line x1="{lx:.1f}" y1="{ly}" x2="{lx + 24:.1f}" y2="{ly}" stroke="{color}" '
                   f'stroke-width="{2.6 if name == "chat" else 1.8}"/>')
        out.append(marker(MARKERS.get(name, "circle"), lx + 12, ly, color))
        out.append(f'<text x="{lx + 30:.1f}" y="{ly + 4}">{escape(label)}</text>')
        lx += w + 22
    out.append("</g>")
    return out


def write_svg(path: Path, aggregates: list[dict], servers: list[str], runs: int,
              dry_run: bool) -> bool:
    by_size: dict[int, dict[int, dict]] = {}
    for agg in aggregates:
        if agg["kind"] == "throughput":
            by_size.setdefault(agg["size"], {})[agg["clients"]] = agg
    if not by_size:
        return False
    panel_w, panel_h = 560, 430
    width, height = panel_w * len(by_size), panel_h + (24 if dry_run else 0)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}">',
             f'<rect width="{width}" height="{height}" fill="white"/>']
    for i, size in enumerate(sorted(by_size)):
        parts += svg_panel(by_size[size], servers, size, runs, i * panel_w, 0, panel_w, panel_h)
    if dry_run:
        parts.append(f'<text x="{width / 2}" y="{height - 8}" text-anchor="middle" '
                     f'font-family="Helvetica, Arial, sans-serif" font-size="13" fill="#c00">'
                     f'DRY RUN: fake numbers, plumbing check only</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")
    return True


# ---------------------------------------------------------------- main


def plan(args: argparse.Namespace, servers: list[str]) -> list[tuple[dict, int, str]]:
    """Every run in the order it happens: servers interleaved within each run index."""
    steps = []
    for size in args.sizes:
        for clients in args.clients:
            for run in range(args.runs):
                params = {"kind": "throughput", "size": size, "clients": clients, "rate": 0,
                          "duration": args.duration, "warmup": args.warmup}
                steps += [(params, run, name) for name in servers]
    for size in args.latency_sizes:
        for rate in args.rates:
            for run in range(args.latency_runs):
                params = {"kind": "latency", "size": size, "clients": args.latency_clients,
                          "rate": rate, "duration": args.latency_duration,
                          "warmup": args.warmup}
                steps += [(params, run, name) for name in servers]
    for clients in idle_counts(args):
        params = {"kind": "idle", "size": args.sizes[0], "clients": clients,
                  "rate": 0, "duration": 1.0, "warmup": 0.0}
        for run in range(args.idle_runs):
            steps += [(params, run, name) for name in servers]
    return steps


def idle_counts(args: argparse.Namespace) -> list[int]:
    """The idle runs' connection counts, smallest first (0s dropped)."""
    return sorted({n for n in args.idle_clients if n > 0})


def idle_slope(idle: list[dict], name: str) -> float | None:
    """`name`'s RSS per added idle connection: the least-squares slope of the RSS its idle
    connections added (medians) against their count; None with fewer than two counts."""
    stats = [(agg["clients"], (agg["servers"].get(name) or {}).get("rss_per_conn_bytes"))
             for agg in idle]
    line = fit([(n, stat["median"] * n) for n, stat in stats if stat])
    return line[1] if line and len(idle) >= 2 else None


def idle_slopes(idle: list[dict], servers: list[str]) -> list[str]:
    """Markdown rows: each server's RSS per added connection (the least-squares slope of
    the RSS its idle connections added, from the medians, against their count), and the
    chat's over each."""
    if len(idle) < 2:
        return []
    low, high = idle[0], idle[-1]

    slopes = {name: idle_slope(idle, name) for name in servers}
    rows = ["", f"RSS per connection added from {low['clients']} to {high['clients']} idle "
            "connections (the slope, fitted over every count: without what the first "
            "connections cost once):", "",
            "| server | bytes per added connection | chat ÷ server |", "|---|---:|---:|"]
    chat = slopes.get("chat")
    for name, value in slopes.items():
        text = "–" if value is None else f"{value:,.0f}"
        # A slope at or below 0 is noise (or a server that freed memory): no ratio.
        r = chat / value if chat is not None and value and value > 0 else None
        rows.append(f"| {name} | {text} | {'' if name == 'chat' else ratio(r)} |")
    return rows


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    nofile = raise_nofile_limit()
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    results_path = args.out / f"results-{stamp}.json"
    svg_path = args.out / "fanout.svg"

    servers = list(args.servers)
    skipped: dict[str, str] = {}
    args.uws_binary = None
    if PEER in servers:
        args.uws_binary = benchlib.build_uws(args.uws, args.out / "uws")
        if args.uws_binary is None:
            reason = f"the uWebSockets chat is not at {args.uws} or did not build"
            print(f"NOTICE: skipping uWebSockets: {reason}.", flush=True)
            skipped[PEER] = reason
            servers.remove(PEER)
    if "node" in servers:
        reason = prepare_node()
        if reason:
            print(f"NOTICE: skipping the Node baseline: {reason}.", flush=True)
            skipped["node"] = reason
            servers.remove("node")
    if not args.no_build:
        build(servers, with_loadgen=not args.dry_run)
    missing = [str(p) for p in
               [Path(server_command(s)[0]) for s in servers if s in RUST_EXAMPLES]
               + ([] if args.dry_run else [target_dir() / "release" / "examples" / "loadgen"])
               if not p.exists()]
    if missing:
        sys.exit(f"missing binaries (build them or drop --no-build): {', '.join(missing)}")
    needed = max([*args.clients, args.latency_clients, *idle_counts(args)]) + 100
    notes = []
    if nofile[0] < needed:
        notes.append(f"RLIMIT_NOFILE is {nofile[0]}, below the ~{needed} descriptors the "
                     "largest run needs; expect connect errors there.")

    steps = plan(args, servers)
    public_args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    public_args["servers"] = args.servers
    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "complete": False, "dry_run": args.dry_run, "args": public_args,
        "machine": machine_info({"node": ["node", "--version"]}),
        "skipped_servers": skipped, "notes": notes,
        "results_file": str(results_path), "plot_file": str(svg_path),
        "runs": [], "aggregates": [],
    }
    log(f"{len(steps)} runs over {', '.join(servers)}; results in {results_path}")
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="compare-logs-") as log_dir:
        try:
            for i, (params, run, name) in enumerate(steps, 1):
                label = (f"[{i}/{len(steps)}] {params['kind']:<10} size={params['size']:<5} "
                         f"N={params['clients']:<6} rate={params['rate']:<5} run={run + 1} {name:<11}")
                record = run_one(args, name, params, run, Path(log_dir))
                m = flatten(record)
                p99 = m["p99_us"]
                rss = m["rss_per_conn_bytes"]
                log(f"{label} {'ok ' if record['ok'] else 'FAIL'} "
                    f"{si(m['deliveries_per_s'])}/s p99={'–' if p99 is None else ms(p99) + 'ms'} "
                    f"rss/conn={'–' if rss is None else kib(rss) + 'KiB'} "
                    f"lost={m['lost']} ({record['wall_s']}s)"
                    + (f"\n    {record['error'][:300]}" if record["error"] else ""))
                report["runs"].append(record)
                save(report, results_path)
        except KeyboardInterrupt:
            log("interrupted: writing what was measured so far")
            report["notes"].append("Interrupted before every run finished.")
        else:
            report["complete"] = True
    report["elapsed_s"] = round(time.monotonic() - began, 1)
    report["aggregates"] = aggregate(report["runs"], servers)
    if args.goal and PEER in args.servers and "chat" in servers:
        report["goal"] = {"goal": args.goal, "cells": peer_goal(report["aggregates"], args.goal)}
    idle = [a for a in report["aggregates"] if a["kind"] == "idle"]
    if args.idle_goal and "chat" in servers and len(idle) >= 2:
        value = idle_slope(idle, "chat")
        report["idle_goal"] = {"goal": args.idle_goal, "bytes": value,
                               "met": value is not None and value <= args.idle_goal}
    if not write_svg(svg_path, report["aggregates"], servers, args.runs, args.dry_run):
        report["plot_file"] = None
    save(report, results_path)
    summary = markdown(report)
    (args.out / "summary.md").write_text(summary)
    print(summary, flush=True)
    log(f"done in {report['elapsed_s']:.0f} s: {results_path}, {args.out / 'summary.md'}"
        + (f", {svg_path}" if report["plot_file"] else ""))
    missed = [c for c in (report.get("goal") or {}).get("cells", []) if not c["met"]]
    if missed:
        log(f"goal missed: the chat's deliveries per server CPU-second at 64 B are under "
            f"{args.goal:g}x uWebSockets' at N = {', '.join(str(c['clients']) for c in missed)}")
    idle_missed = report.get("idle_goal") and not report["idle_goal"]["met"]
    if idle_missed:
        log(f"goal missed: the chat's RSS per added idle connection is above "
            f"{args.idle_goal:,.0f} bytes")
    ok = all(r["ok"] for r in report["runs"])
    return 0 if ok and not missed and not idle_missed else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
