#!/usr/bin/env python3
"""Density: memory per idle connection and server CPU per delivery at small messages.

    python3 bench/density.py --baseline-rev d4ce6b1     # ~15 min
    python3 bench/density.py --skip-cpu --runs 1        # memory only, ~3 min

Every figure comes from `examples/loadgen.rs` against servers started fresh on port 0, in
interleaved order (run 1 of every server, then run 2, ...), so slow drift of the machine
hits them alike:

- idle: `loadgen --idle --clients N`: the server's RSS per connection once all are
  connected (`rss_per_conn_bytes`) and its RSS after every client has gone, for the chat
  with `--no-notices` (it keeps each connection in its room and in its user's collection),
  the chat with join notices, and `examples/echo.rs` (a bare connection); then the chat at
  `--max-clients` (what one process holds within the file-descriptor limit);
- cpu: deliveries per second of server CPU (`1e6 / cpu_s_per_million`) for one sender with
  at most 50 broadcasts in flight at N = 1000, 64 B and 4 KiB, at N = 5000, 64 B, and the
  ten-sender scenario of `bench/compare.py`; the axum baseline beside it at N = 1000, 64 B.

With `--baseline-rev`, the chat of that git revision (built in a temporary worktree) is
measured in the same run. When the uWebSockets chat of `../shared/peers/uws-chat` is there
(`--uws DIR` to name another copy), it is built with its `build.sh` into the output directory
and measured in the idle runs too, and the summary gives each server's bytes per connection
as a ratio to its, from the same run; the script says so when it is absent. Output: a Markdown summary on stdout and, with every raw
loadgen result, `bench/results/density-<timestamp>.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib
from benchlib import ROOT, log, spread

ECHO_READY = "Echo server listening on ws://"
UWS_NAME = benchlib.UWS_NAME


class Server(benchlib.ServerOutput):
    """A server binary started on port 0; its address from its first line."""

    def __init__(self, binary: Path, extra: list[str], work: Path):
        self.stderr = tempfile.TemporaryFile(dir=work)
        if binary.name == "uws-chat":
            cmd = benchlib.uws_command(binary)
        else:
            cmd = [str(binary), "--addr", "127.0.0.1:0", *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.stderr)
        self.address = self._address()

    def _address(self) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode("utf-8", "replace")
            if not line:
                break
            match = (benchlib.READY_LINE.search(line) or benchlib.SIGNALR_READY.search(line)
                     or benchlib.UWS_READY.search(line))
            if match:
                self.drain_stdout()
                return match.group(1)
            if ECHO_READY in line:
                self.drain_stdout()
                return line.split(ECHO_READY, 1)[1].strip()
        benchlib.terminate(self.proc)
        sys.exit(f"{self.proc.args[0]} did not announce its address: {self.stderr_tail()}")

    def stop(self) -> None:
        benchlib.terminate(self.proc)
        self.stderr.close()


def loadgen(server: Server, path: str, flags: list[str], timeout: float,
            scheme: str = "ws") -> dict:
    cmd = [str(benchlib.target_dir() / "release" / "examples" / "loadgen"),
           "--url", f"{scheme}://{server.address}{path}", "--server-pid", str(server.pid),
           "--quiet", *flags]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    result = benchlib.last_json(done.stdout)
    if result is None:
        sys.exit(f"loadgen failed ({done.returncode}): {done.stderr[-400:]}")
    result["command"] = " ".join(cmd[1:])
    return result


def build_baseline(rev: str, work: Path, target: Path, features: list[str] | None = None) -> Path:
    """The chat example of `rev`, built with those of `features` that revision has (TLS was
    built in before the crate's `tls` feature existed)."""
    tree = work / "baseline"
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=ROOT, check=True,
                   capture_output=True)
    manifest = (tree / "Cargo.toml").read_text()
    known = [f for f in features or [] if re.search(rf"^{re.escape(f)} = \[", manifest, re.M)]
    log(f"building the chat example of {rev} in {tree}")
    cmd = ["cargo", "build", "--release", "--example", "chat"]
    if known:
        cmd += ["--features", ",".join(known)]
    subprocess.run(cmd, cwd=tree, check=True,
                   env={**os.environ, "CARGO_TARGET_DIR": str(target)})
    return target / "release" / "examples" / "chat"


def uws_ratio(records: list[dict], record: dict) -> str:
    """A server's bytes per idle connection over uWebSockets', run by run (the i-th run of
    each was interleaved with the other's), as the median and (min-max); - without it."""
    def per_conn(server: str) -> list[float]:
        return [x["result"]["rss_per_conn_bytes"] for x in records
                if x["kind"] == "idle" and x["server"] == server
                and x["clients"] == record["clients"]]
    ours, theirs = per_conn(record["server"]), per_conn(UWS_NAME)
    ratios = [a / b for a, b in zip(ours, theirs) if b]
    if not ratios or record["server"] == UWS_NAME:
        return "-"
    return spread(ratios, "{:.2f}x")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-rev", help="also measure the chat of this git revision")
    parser.add_argument("--runs", type=int, default=2, help="idle runs per server")
    parser.add_argument("--cpu-runs", type=int, default=3, help="CPU runs per server and scenario")
    parser.add_argument("--idle-clients", type=int, default=10000)
    parser.add_argument("--max-clients", type=int, default=19900,
                        help="the largest idle run (0: none); needs as many file descriptors")
    parser.add_argument("--baseline-target", type=Path,
                        help="cargo target directory for the baseline (default: a temporary one)")
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--skip-notices", action="store_true",
                        help="leave out the idle run of the chat with join notices (N^2/2 "
                             "notices: the slowest run)")
    parser.add_argument("--uws", type=Path, default=benchlib.UWS_DEFAULT,
                        help="the uWebSockets chat's directory (build.sh, server.cpp)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    benchlib.raise_nofile_limit()
    args.out.mkdir(parents=True, exist_ok=True)
    benchlib.cargo_build(["chat", "echo", "baseline_axum", "loadgen"])
    examples = benchlib.target_dir() / "release" / "examples"
    records: list[dict] = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        chats = {"chat": examples / "chat"}
        if args.baseline_rev:
            target = args.baseline_target or work / "target"
            chats[f"chat@{args.baseline_rev}"] = build_baseline(args.baseline_rev, work, target)
        try:
            idle = []
            for name, binary in chats.items():
                idle.append((f"{name} --no-notices", binary, ["--no-notices"], "/api/Chat"))
            if not args.skip_notices:
                idle.append(("chat (notices)", examples / "chat", [], "/api/Chat"))
            idle.append(("echo", examples / "echo", [], "/"))
            uws = benchlib.build_uws(args.uws, args.out / "uws")
            if uws:
                idle.append((UWS_NAME, uws, [], "/api/Chat"))
            for run in range(args.runs):
                for name, binary, extra, path in idle:
                    server = Server(binary, extra, work)
                    try:
                        flags = ["--idle", "--clients", str(args.idle_clients), "--duration", "3"]
                        result = loadgen(server, path, flags, 300)
                    finally:
                        server.stop()
                    log(f"idle {name} run {run + 1}: {result['rss_per_conn_bytes']} B/conn, "
                        f"{result['server_rss_kib_after_close'] / 1024:.1f} MiB after")
                    records.append({"kind": "idle", "server": name, "clients": args.idle_clients,
                                    "result": result})
            if args.max_clients:
                server = Server(examples / "chat", ["--no-notices"], work)
                try:
                    flags = ["--idle", "--clients", str(args.max_clients), "--duration", "3"]
                    result = loadgen(server, "/api/Chat", flags, 600)
                finally:
                    server.stop()
                log(f"idle chat --no-notices at {args.max_clients}: "
                    f"{result['rss_per_conn_bytes']} B/conn")
                records.append({"kind": "idle", "server": "chat --no-notices",
                                "clients": args.max_clients, "result": result})
            if not args.skip_cpu:
                scenarios = [("N = 1000, 64 B, 1 sender, window 50", 1000, 1, 50, 64, True),
                             ("N = 1000, 4 KiB, 1 sender, window 50", 1000, 1, 50, 4096, False),
                             ("N = 5000, 64 B, 1 sender, window 50", 5000, 1, 50, 64, False),
                             ("N = 1000, 64 B, 10 senders, window 8", 1000, 10, 8, 64, False)]
                for run in range(args.cpu_runs):
                    for label, clients, senders, window, size, with_axum in scenarios:
                        servers = [(name, binary, ["--no-notices"]) for name, binary in chats.items()]
                        if with_axum:
                            servers.append(("axum", examples / "baseline_axum", []))
                        for name, binary, extra in servers:
                            server = Server(binary, extra, work)
                            try:
                                flags = ["--clients", str(clients), "--senders", str(senders),
                                         "--window", str(window), "--size", str(size),
                                         "--duration", "8"]
                                result = loadgen(server, "/api/Chat", flags, 300)
                            finally:
                                server.stop()
                            per_million = result.get("cpu_s_per_million")
                            log(f"cpu {label} {name} run {run + 1}: {per_million} s/M")
                            records.append({"kind": "cpu", "server": name, "scenario": label,
                                            "result": result})
        finally:
            if args.baseline_rev:
                subprocess.run(["git", "worktree", "remove", "--force", str(work / "baseline")],
                               cwd=ROOT, capture_output=True)

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"density-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"records": records}, indent=1))
    lines = [benchlib.machine_line(benchlib.machine_info({}), "loadgen", "shared"), "",
             "| idle | clients | RSS per connection, bytes | ÷ uWebSockets | RSS before | RSS after all left |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    seen = []
    for r in records:
        if r["kind"] != "idle":
            continue
        key = (r["server"], r["clients"])
        if key in seen:
            continue
        seen.append(key)
        same = [x["result"] for x in records if x["kind"] == "idle" and (x["server"], x["clients"]) == key]
        lines.append(f"| {key[0]} | {key[1]} | "
                     f"{spread([x['rss_per_conn_bytes'] for x in same], '{:,.0f}')} | "
                     f"{uws_ratio(records, r)} | "
                     f"{spread([x['server_rss_kib_before'] / 1024 for x in same], '{:.1f} MiB')} | "
                     f"{spread([x['server_rss_kib_after_close'] / 1024 for x in same], '{:.1f} MiB')} |")
    if not args.skip_cpu:
        lines += ["", "| scenario | server | deliveries per server CPU-second | server CPU s per million |",
                  "| --- | --- | ---: | ---: |"]
        seen = []
        for r in records:
            key = (r.get("scenario"), r["server"])
            if r["kind"] != "cpu" or key in seen:
                continue
            seen.append(key)
            same = [x["result"]["cpu_s_per_million"] for x in records
                    if x["kind"] == "cpu" and (x.get("scenario"), x["server"]) == key
                    and x["result"].get("cpu_s_per_million")]
            lines.append(f"| {key[0]} | {key[1]} | "
                         f"{spread([1e6 / v / 1e6 for v in same], '{:.2f}M')} | "
                         f"{spread(same, '{:.2f}')} |")
    summary = "\n".join(lines)
    print(summary)
    path.write_text(json.dumps({"records": records, "summary": summary}, indent=1))
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
