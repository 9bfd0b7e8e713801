#!/usr/bin/env python3
"""Memory through a reconnect storm: N clients connect to the chat example at once, stay
idle, then all leave; the server's RSS before, once the storm has settled, and after
every client has gone.

    python3 bench/storm.py                      # 10,000 clients, notices on and off, 3 runs
    python3 bench/storm.py --clients 5000 --runs 1 --configs notices

A deploy that makes every client reconnect at once is exactly this. With join and leave
notices on (the chat as it starts), every join is broadcast to everyone already there, so
the storm also floods the queues: N^2 / 2 messages. The figures are medians over the runs,
per configuration, interleaved:

- RSS per idle connection: (RSS at the end of the idle hold - RSS before) / N, once the
  storm's memory has been given back;
- RSS after close: the RSS once every client has left and it stopped changing, and how far
  above the start that is.

Python 3.11 standard library only; builds the examples itself.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib
from benchlib import ROOT, ServerOutput, last_json, log

CONFIGS = {
    "notices": [],
    "no-notices": ["--no-notices"],
    "notices-no-trim": ["--no-trim"],
    "no-notices-no-trim": ["--no-notices", "--no-trim"],
}


class Chat(ServerOutput):
    """The chat example, started on a free port and stopped by its PID."""

    def __init__(self, flags: list[str], log_dir: Path):
        self.stderr = tempfile.TemporaryFile(mode="w+b", dir=log_dir)
        binary = benchlib.target_dir() / "release" / "examples" / "chat"
        self.proc = subprocess.Popen([str(binary), "--addr", "127.0.0.1:0", *flags], cwd=ROOT,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self.stderr)
        addr, seen = self.read_address(timeout=15.0)
        if addr is None:
            benchlib.terminate(self.proc)
            raise RuntimeError(f"the chat did not start: {seen!r} {self.stderr_tail()!r}")
        self.addr = addr
        self.drain_stdout()


def run_one(config: str, clients: int, hold: float, log_dir: Path) -> dict:
    chat = Chat(CONFIGS[config], log_dir)
    try:
        loadgen = benchlib.target_dir() / "release" / "examples" / "loadgen"
        cmd = [str(loadgen), "--url", f"ws://{chat.addr}/api/Chat", "--idle",
               "--clients", str(clients), "--duration", str(hold),
               "--server-pid", str(chat.pid), "--quiet"]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                              timeout=600)
        result = last_json(done.stdout)
        if done.returncode != 0 or result is None:
            raise RuntimeError(f"loadgen failed ({done.returncode}): {done.stderr[-400:]}")
        before = result["server_rss_kib_before"]
        return {
            "config": config,
            "connect_s": result["connect_s"],
            "rss_before_kib": before,
            "rss_connected_kib": result["server_rss_kib_connected"],
            "rss_settled_kib": result["server_rss_kib_end"],
            "rss_after_close_kib": result["server_rss_kib_after_close"],
            "idle_per_conn_kib": (result["server_rss_kib_end"] - before) / clients,
            "after_close_above_start_mib": (result["server_rss_kib_after_close"] - before)
            / 1024,
        }
    finally:
        benchlib.terminate(chat.proc)
        chat.stderr.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hold", type=float, default=8.0,
                        help="seconds the clients stay idle after connecting (default 8)")
    parser.add_argument("--configs", type=benchlib.name_list(list(CONFIGS), "config"),
                        default=list(CONFIGS))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    benchlib.raise_nofile_limit()
    benchlib.cargo_build(["chat", "loadgen"])
    args.out.mkdir(parents=True, exist_ok=True)
    records = []
    with tempfile.TemporaryDirectory() as log_dir:
        for run in range(args.runs):
            for config in args.configs:
                log(f"run {run + 1}/{args.runs}: {config}, {args.clients} clients")
                record = run_one(config, args.clients, args.hold, Path(log_dir))
                record["run"] = run
                log(f"  {record['idle_per_conn_kib']:.1f} KiB per idle connection, "
                    f"{record['rss_after_close_kib'] / 1024:.1f} MiB after close "
                    f"(+{record['after_close_above_start_mib']:.1f} MiB)")
                records.append(record)
    lines = [f"{args.clients} clients, median of {args.runs} "
             f"({benchlib.machine_line(benchlib.machine_info({}), 'loadgen', 'shared')})", "",
             "| chat | connect s | RSS before | RSS peak (1 s after connect) | per idle connection, settled | RSS after all left | above start |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for config in args.configs:
        mine = [r for r in records if r["config"] == config]
        med = lambda key: statistics.median(r[key] for r in mine)
        lines.append(
            f"| {config} | {med('connect_s'):.1f} | {med('rss_before_kib') / 1024:.1f} MiB | "
            f"{med('rss_connected_kib') / 1024:.1f} MiB | {med('idle_per_conn_kib'):.1f} KiB | "
            f"{med('rss_after_close_kib') / 1024:.1f} MiB | "
            f"+{med('after_close_above_start_mib'):.1f} MiB |")
    summary = "\n".join(lines)
    print(summary)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    benchlib.save({"records": records, "summary": summary}, args.out / f"storm-{stamp}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
