#!/usr/bin/env python3
"""Redis CPU per message of the lossless backplane's publish script, without the backplane.

    python3 bench/redis_script_cost.py --rev 7823ee6 --rev 70729c6   # ~2 min
    python3 bench/redis_script_cost.py --rooms 100 --batches 1,16,256 --runs 5

Takes the publish script of this tree (src/backplane/redis/streams.rs) and of each --rev,
loads it into a fresh redis-server of its own (no persistence, a free loopback port) and
sends it --messages messages of --size bytes, round-robin over --rooms rooms, as the
backplane would: pipelined through `redis-cli --pipe`, so that the client costs Redis
nothing but reading them. This tree's script publishes a topic's messages of one batch in
one run: it is measured at each --batches size (messages per run); older scripts publish
one message per run. Reads Redis's INFO cpu (user + sys) around the sending: Redis CPU
microseconds per message. The variants interleave, --runs times; medians (min-max).

Which script a revision has is told by its text: 7823ee6's `PUBLISH` (3 keys), the
per-message script with rooms of 70729c6 (10 keys), or the batched one.
Every redis-server it starts is stopped by its PID. Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = "src/backplane/redis/streams.rs"
TOPIC = "{websocket-handler:scale}"


def script_of(text: str) -> tuple[str, str]:
    """(layout, Lua text) of the publish script in a streams.rs."""
    old = re.search(r'const PUBLISH: &str = r#"(.*?)"#;', text, re.S)
    if old:
        return "single-3", old.group(1)
    functions = re.search(r'const FUNCTIONS: &str = r#"(.*?)"#;', text, re.S)
    body = re.search(r'fn publish_script\(\) -> String \{\s*format!\(\s*r#"(.*?)"#', text, re.S)
    if not functions or not body:
        sys.exit("no publish script found")
    lua = (body.group(1).replace("{FUNCTIONS}", functions.group(1))
           .replace("{{", "{").replace("}}", "}"))
    return ("batched" if "(#ARGV - 8) / 2" in lua else "single-10"), lua


def resp(*args) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(port: int, *args: str) -> str:
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True,
                          text=True, check=True).stdout


def redis_cpu(port: int) -> float:
    fields = dict(line.split(":", 1) for line in cli(port, "INFO", "cpu").splitlines()
                  if ":" in line)
    return float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])


def commands(layout: str, sha: str, run_id: str, args: argparse.Namespace,
             batch: int) -> bytes:
    envelope = b"x" * args.size
    t = TOPIC
    out = []
    for start in range(0, args.messages, batch):
        rooms = [f"r{n % args.rooms}" for n in range(start, min(start + batch, args.messages))]
        if layout == "single-3":
            out += [resp("EVALSHA", sha, 3, t, f"{t}:offset", f"{t}:epoch", envelope,
                         args.retention, 12345) for _ in rooms]
        elif layout == "single-10":
            for n, room in enumerate(rooms):
                out.append(resp(
                    "EVALSHA", sha, 10, t, f"{t}:offset", f"{t}:epoch", f"{t}:run",
                    f"{t}:bytes", f"{t}:chain", f"{t}:base", f"{t}:r:{room}",
                    f"{t}:r:{room}:bytes", f"{t}:r:{room}:floor", envelope, args.retention,
                    16 << 20, run_id, 12345, "", "", f"token{start + n}",
                    args.room_retention, 1 << 20, 86_400_000))
        else:
            distinct = list(dict.fromkeys(rooms))
            keys = [t, f"{t}:offset", f"{t}:epoch", f"{t}:run", f"{t}:bytes", f"{t}:base"]
            for room in distinct:
                keys += [f"{t}:r:{room}", f"{t}:m:{room}"]
            argv = [args.retention, 16 << 20, run_id, 12345, "", args.room_retention, 1 << 20,
                    86_400_000]
            for room in rooms:
                argv += [envelope, distinct.index(room) + 1]
            out.append(resp("EVALSHA", sha, len(keys), *keys, *argv))
    return b"".join(out)


def measure(layout: str, lua: str, args: argparse.Namespace, batch: int) -> float:
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if cli(port, "PING").strip() == "PONG":
                    break
            except subprocess.CalledProcessError:
                pass
            if time.monotonic() > deadline:
                sys.exit("redis-server did not start")
            time.sleep(0.05)
        sha = cli(port, "SCRIPT", "LOAD", lua).strip()
        run_id = next(line.split(":", 1)[1].strip()
                      for line in cli(port, "INFO", "server").splitlines()
                      if line.startswith("run_id:"))
        data = commands(layout, sha, run_id, args, batch)
        before = redis_cpu(port)
        done = subprocess.run(["redis-cli", "-p", str(port), "--pipe"], input=data,
                              capture_output=True, check=True)
        after = redis_cpu(port)
        summary = done.stdout.decode().strip().splitlines()[-1]
        if "errors: 0" not in summary:
            sys.exit(f"{layout}: {summary}")
        return (after - before) * 1e6 / args.messages
    finally:
        proc.terminate()
        proc.wait()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", action="append", default=[],
                        help="also the publish script of this git revision (repeatable)")
    parser.add_argument("--messages", type=int, default=51_200)
    parser.add_argument("--size", type=int, default=95,
                        help="envelope bytes (95: a 64-byte message in a room)")
    parser.add_argument("--rooms", type=int, default=1)
    parser.add_argument("--batches", default="1,16,256",
                        help="messages per run of the batched script")
    parser.add_argument("--retention", type=int, default=10_000)
    parser.add_argument("--room-retention", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    variants = []
    for rev in args.rev:
        text = subprocess.run(["git", "show", f"{rev}:{SOURCE}"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout
        layout, lua = script_of(text)
        variants += [(f"{rev} ({layout})", layout, lua, b)
                     for b in ([1] if layout != "batched" else
                               [int(b) for b in args.batches.split(",")])]
    layout, lua = script_of((ROOT / SOURCE).read_text())
    variants += [(f"this tree ({layout})", layout, lua, b)
                 for b in ([1] if layout != "batched" else
                           [int(b) for b in args.batches.split(",")])]
    results: dict[tuple[str, int], list[float]] = {}
    for run in range(args.runs):
        for name, layout, lua, batch in variants:
            us = measure(layout, lua, args, batch)
            results.setdefault((name, batch), []).append(us)
            print(f"run {run + 1}: {name}, {batch} per run: {us:.1f} µs", file=sys.stderr)
    print(f"Redis CPU per message, µs ({args.messages:,} messages of {args.size} B over "
          f"{args.rooms} room(s); median of {args.runs} (min-max)):\n")
    print("| script | messages per run | Redis CPU µs/message |\n|---|---:|---:|")
    for (name, batch), values in results.items():
        print(f"| {name} | {batch} | {statistics.median(values):.1f} "
              f"({min(values):.1f}-{max(values):.1f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
