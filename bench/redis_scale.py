#!/usr/bin/env python3
"""The lossless Redis backplane at scale: Redis memory, rooms, throughput and resumes.

    python3 bench/redis_scale.py             # ~5 min: every measurement below, 3 runs of the timed ones
    python3 bench/redis_scale.py --runs 1    # ~3 min
    python3 bench/redis_scale.py --no-build  # the example is built already
    python3 bench/redis_scale.py --skip memory,resume --rooms 1,100 --baseline-rev 7823ee6
                                             # throughput against the lossless mode of 7823ee6

Every measurement runs examples/backplane_scale.rs (built with --features redis) against a
redis-server of its own (a fresh one each time: no persistence, on a free loopback port),
and reads Redis's own figures around it:

  memory      --messages (10,000) messages of 64 B, 4 KiB and 60 KiB spread over 1, 100
              and 10,000 rooms, kept whole (retention raised to hold them all, in the
              topic's stream and in each room's): INFO memory used_memory after the run
              minus before, per message and per room. Baseline, in the same run: 100 rooms
              with room_retention 0 (no room streams: the topic's stream alone).
  throughput  50,000 messages of 64 B over 1, 100 and 10,000 rooms, default retention:
              messages/s until the second server has received every one, the example's CPU
              (both servers) and Redis's CPU (INFO cpu, user + sys) per million messages.
              Baseline, in the same run: the pub/sub mode (`--pubsub`).
  baselines   with --baseline-rev REV (repeatable), the throughput runs also measure the
              lossless mode of each REV, interleaved with this tree's: REV is checked out in
              a temporary worktree and its examples/backplane_scale.rs built (with
              --baseline-target DIR, in DIR, kept for the next time); a REV older than the
              example gets this tree's copy, built with `--cfg backplane_scale_baseline`
              (throughput only). --room-streams-off adds this tree's lossless mode with
              room_retention 0 (the topic's stream alone).
  commands    every run also records Redis's INFO commandstats (calls and microseconds per
              command, those run inside scripts included): the throughput table's
              companion says which commands a message costs.
  resume      1,000 and 10,000 missed messages of 64 B and 4 KiB in one room, replayed from
              the room's stream in Redis to a WebSocket client of a server that never had
              the room (room_retention raised to keep them all): seconds.

Output: OUT/redis-scale-<timestamp>.json (every raw line, the machine) and
OUT/redis_scale.md (the tables, also printed). Every process it starts is stopped by its
PID, also on errors and Ctrl-C. Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from backplane import PROCS, OtherLoad, Redis
from benchlib import (ROOT, cargo_build, int_list, last_json, log, machine_info, machine_line,
                      save, si, spread, target_dir)

EXAMPLE = "backplane_scale"
HUGE = 1 << 40  # a byte bound that never trims


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Redis memory, rooms, throughput and resumes of the lossless backplane.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--runs", type=int, default=3,
                        help="runs of each throughput and resume cell (memory: 1)")
    parser.add_argument("--sizes", type=int_list, default=[64, 4096, 61440],
                        help="message sizes of the memory runs (bytes)")
    parser.add_argument("--rooms", type=int_list, default=[1, 100, 10000],
                        help="room counts of the memory and throughput runs")
    parser.add_argument("--memory-messages", type=int, default=10000,
                        help="messages per memory run")
    parser.add_argument("--throughput-messages", type=int, default=50000,
                        help="messages per throughput run")
    parser.add_argument("--throughput-size", type=int, default=64)
    parser.add_argument("--missed", type=int_list, default=[1000, 10000],
                        help="missed messages of the resume runs")
    parser.add_argument("--resume-sizes", type=int_list, default=[64, 4096])
    parser.add_argument("--skip", type=lambda t: [p for p in t.split(",") if p], default=[],
                        help="scenarios to leave out: memory,throughput,resume")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds before one run of the example is killed")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--baseline-rev", action="append", default=[],
                        help="also measure the throughput of this git revision's lossless "
                             "mode (repeatable)")
    parser.add_argument("--baseline-target", action="append", default=[], type=Path,
                        help="cargo target directory of the --baseline-rev in the same "
                             "position (default: a temporary one)")
    parser.add_argument("--room-streams-off", action="store_true",
                        help="also measure this tree's lossless mode with room_retention 0")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    if not args.out.is_absolute():
        args.out = Path.cwd() / args.out
    if len(args.baseline_target) > len(args.baseline_rev):
        parser.error("more --baseline-target than --baseline-rev")
    args.baseline_target = [t if t.is_absolute() else Path.cwd() / t
                            for t in args.baseline_target]
    return args


def info(redis: Redis, section: str) -> dict[str, str]:
    text = redis.command("INFO", section) or ""
    fields = {}
    for line in str(text).splitlines():
        if ":" in line and not line.startswith("#"):
            key, value = line.split(":", 1)
            fields[key] = value.strip()
    return fields


def redis_cpu_s(redis: Redis) -> float:
    cpu = info(redis, "cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def commandstats(redis: Redis) -> dict[str, dict[str, float]]:
    """INFO commandstats: by command, its calls and microseconds (scripts' commands
    included)."""
    stats = {}
    for key, value in info(redis, "commandstats").items():
        if not key.startswith("cmdstat_"):
            continue
        fields = dict(part.split("=", 1) for part in value.split(",") if "=" in part)
        stats[key[len("cmdstat_"):]] = {"calls": int(fields.get("calls", 0)),
                                        "usec": float(fields.get("usec", 0))}
    return stats


def run_one(binary: Path, work: Path, args: argparse.Namespace, kind: str,
            flags: list[str]) -> dict:
    """One run on a fresh redis-server: Redis memory and CPU before and after, its
    commandstats, and the example's JSON line."""
    record: dict = {"kind": kind, "flags": flags, "ok": False, "error": None}
    redis = Redis(work)
    try:
        record["redis_port"] = redis.port
        memory0 = int(info(redis, "memory")["used_memory"])
        cpu0 = redis_cpu_s(redis)
        cmd = [str(binary), "--redis", redis.url, *flags, "--timeout", f"{args.timeout:g}"]
        record["command"] = " ".join(cmd)
        other = OtherLoad([redis.pid])
        started = time.monotonic()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True,
                                  timeout=args.timeout + 30, cwd=ROOT)
            code, stdout, stderr = done.returncode, done.stdout, done.stderr
        except subprocess.TimeoutExpired as expired:
            code, stdout, stderr = None, str(expired.stdout or ""), "killed: timed out"
        record["wall_s"] = round(time.monotonic() - started, 2)
        record["other_load_cores"] = other.cores()
        record["redis_cpu_s"] = redis_cpu_s(redis) - cpu0
        memory = info(redis, "memory")
        record["redis_used_memory_before"] = memory0
        record["redis_used_memory_after"] = int(memory["used_memory"])
        record["redis_memory_delta"] = int(memory["used_memory"]) - memory0
        record["redis_keys"] = redis.command("DBSIZE")
        record["commandstats"] = commandstats(redis)
        result = last_json(stdout)
        record["result"] = result
        if result is None or code != 0:
            record["error"] = f"exit {code}: {stderr.strip()[-400:]}"
        elif not result.get("ok"):
            record["error"] = result.get("error") or "not ok"
        else:
            record["ok"] = True
    finally:
        redis.stop()
    return record


def retention_flags(messages: int, rooms: bool = True) -> list[str]:
    """Keep `messages` whole, in the topic's stream and (with `rooms`) in each room's."""
    flags = ["--retention", str(messages), "--retention-bytes", str(HUGE)]
    flags += ["--room-retention", str(messages if rooms else 0), "--room-retention-bytes",
              str(HUGE)]
    return flags


def lossless_modes(args: argparse.Namespace) -> list[str]:
    """The throughput table's lossless rows: this tree's, each baseline's, and this tree's
    without room streams."""
    return (["lossless"] + [f"lossless@{rev}" for rev in args.baseline_rev]
            + (["lossless-no-rooms"] if args.room_streams_off else []))


def plan(args: argparse.Namespace) -> list[tuple[str, dict, list[str]]]:
    """(kind, cell, flags) for every run, in order; a cell's `build` names the binary
    (None: this tree's)."""
    steps = []
    if "memory" not in args.skip:
        m = args.memory_messages
        # What any run leaves in Redis whatever it publishes (the scripts, the topic's
        # counters): one message, subtracted from the others.
        steps.append(("memory", {"size": 64, "rooms": 1, "room_streams": True, "fixed": True},
                      ["memory", "--rooms", "1", "--messages", "1", "--size", "64",
                       *retention_flags(1)]))
        for size in args.sizes:
            for rooms in args.rooms:
                steps.append(("memory", {"size": size, "rooms": rooms, "room_streams": True},
                              ["memory", "--rooms", str(rooms), "--messages", str(m),
                               "--size", str(size), *retention_flags(m)]))
            steps.append(("memory", {"size": size, "rooms": 100, "room_streams": False},
                          ["memory", "--rooms", "100", "--messages", str(m), "--size",
                           str(size), *retention_flags(m, rooms=False)]))
    if "throughput" not in args.skip:
        m, size = args.throughput_messages, args.throughput_size
        for run in range(args.runs):
            for rooms in args.rooms:
                for mode in lossless_modes(args) + ["pubsub"]:
                    flags = ["throughput", "--rooms", str(rooms), "--messages", str(m),
                             "--size", str(size)]
                    if mode == "pubsub":
                        flags.append("--pubsub")
                    if mode == "lossless-no-rooms":
                        flags += ["--room-retention", "0"]
                    build = mode.split("@", 1)[1] if "@" in mode else None
                    steps.append(("throughput", {"rooms": rooms, "mode": mode, "run": run,
                                                 "build": build}, flags))
    if "resume" not in args.skip:
        for run in range(args.runs):
            for size in args.resume_sizes:
                for missed in args.missed:
                    steps.append(("resume", {"missed": missed, "size": size, "run": run},
                                  ["resume", "--missed", str(missed), "--size", str(size),
                                   "--room-retention", str(missed), "--room-retention-bytes",
                                   str(HUGE)]))
    return steps


# ---------------------------------------------------------------- tables


def by(records: list[dict], kind: str, **cell) -> list[dict]:
    return [r for r in records if r["kind"] == kind and r["ok"]
            and all(r["cell"].get(k) == v for k, v in cell.items())]


def kib(v: float) -> str:
    return f"{v / 1024:.1f} KiB" if v >= 10 * 1024 else f"{v:.0f} B"


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2] if len(values) % 2 else (
        sum(sorted(values)[len(values) // 2 - 1:len(values) // 2 + 1]) / 2)


def run_ratios(records: list[dict], rooms: int, mode: str, first: str) -> str:
    """Redis CPU of `mode` over `first`'s, run by run (same run index), as a spread."""
    ratios = []
    for r in by(records, "throughput", rooms=rooms, mode=mode):
        other = by(records, "throughput", rooms=rooms, mode=first, run=r["cell"]["run"])
        if other and other[0]["redis_cpu_s"] > 0:
            ratios.append(r["redis_cpu_s"] / other[0]["redis_cpu_s"])
    return spread(ratios, "{:.2f}×")


def commands_table(records: list[dict], args: dict, modes: list[str]) -> list[str]:
    """Which commands a message costs Redis, by mode: calls and microseconds per message
    from INFO commandstats (the median run), the scripts' own commands included."""
    n = args["throughput_messages"]
    rows = []
    for rooms in args["rooms"]:
        for mode in modes:
            found = [r for r in by(records, "throughput", rooms=rooms, mode=mode)
                     if r.get("commandstats")]
            if not found:
                continue
            found.sort(key=lambda r: r["redis_cpu_s"])
            stats = found[len(found) // 2]["commandstats"]
            top = sorted(stats.items(), key=lambda kv: -kv[1]["usec"])
            calls = sum(v["calls"] for k, v in stats.items()
                        if k not in ("evalsha", "eval", "fcall", "info"))
            # A command that costs 0.05 µs a message or more, however rarely it runs (a
            # script run per batch, a trim).
            parts = [f"{k} {v['calls'] / n:.{3 if v['calls'] < n / 10 else 2}f}×/"
                     f"{v['usec'] / n:.{2 if v['usec'] < n / 10 else 1}f} µs"
                     for k, v in top if v["usec"] >= n * 0.05][:10]
            rows.append(f"| {rooms:,} | {mode} | {calls / n:.1f} | " + ", ".join(parts) + " |")
    if not rows:
        return []
    return ["", "Where Redis's time goes (INFO commandstats of the median run, per message): "
            "commands called (by clients and scripts; not counting the script calls "
            "themselves), then each command's calls and microseconds per message, "
            "most time first. A script's microseconds include its commands'.", "",
            "| rooms | mode | commands/message | per message: calls × / µs |",
            "|---:|---|---:|---|", *rows]


def markdown(report: dict) -> str:
    args, records, machine = report["args"], report["runs"], report["machine"]
    lines = ["# The lossless Redis backplane at scale", ""]
    lines.append(machine_line(
        machine, (machine.get("redis") or "redis ?").split(" sha=")[0],
        "redis-server and the example (two servers in one process) share the machine."))
    if any(r["kind"] == "memory" for r in records):
        m = args["memory_messages"]
        fixed_runs = by(records, "memory", fixed=True)
        fixed = fixed_runs[0]["redis_memory_delta"] if fixed_runs else 0
        lines += ["", f"**Redis memory** for {m:,} messages kept whole (retention raised to "
                  "hold them all, in the topic's stream and in each room's own), INFO "
                  "`used_memory` after minus before, on a fresh Redis, less the "
                  f"{fixed:,} B that a run of one message leaves (scripts, counters); "
                  "÷ payload: bytes per message over the message's size. The last row per "
                  "size has no room streams (`room_retention` 0): the topic's stream alone.",
                  "", "| size | rooms | room streams | Redis bytes/message | ÷ payload | keys |",
                  "|---:|---:|---|---:|---:|---:|"]
        for size in args["sizes"]:
            rows = [(rooms, True) for rooms in args["rooms"]] + [(100, False)]
            for rooms, streams in rows:
                found = by(records, "memory", size=size, rooms=rooms, room_streams=streams,
                           fixed=None)
                if not found:
                    continue
                per = (found[0]["redis_memory_delta"] - fixed) / m
                lines.append(f"| {size:,} B | {rooms:,} | {'yes' if streams else 'no'} "
                             f"| {kib(per)} | {per / size:.2f}× | {found[0]['redis_keys']:,} |")
        room_lines = []
        for size in args["sizes"]:
            one = by(records, "memory", size=size, rooms=1, room_streams=True, fixed=None)
            for rooms in args["rooms"]:
                many = by(records, "memory", size=size, rooms=rooms, room_streams=True,
                          fixed=None)
                if rooms > 1 and one and many:
                    extra = (many[0]["redis_memory_delta"] - one[0]["redis_memory_delta"])
                    room_lines.append(f"{size:,} B, {rooms:,} rooms: "
                                      f"{extra / (rooms - 1):,.0f} B")
            with_rooms = by(records, "memory", size=size, rooms=100, room_streams=True,
                            fixed=None)
            without = by(records, "memory", size=size, rooms=100, room_streams=False)
            if with_rooms and without and without[0]["redis_memory_delta"] > fixed:
                times = ((with_rooms[0]["redis_memory_delta"] - fixed)
                         / (without[0]["redis_memory_delta"] - fixed))
                room_lines.append(f"{size:,} B: room streams × {times:.2f} of the topic's "
                                  "stream alone (100 rooms)")
        if room_lines:
            lines += ["", "Per room beyond the first (same messages, more rooms), and what "
                      "the room streams multiply: " + "; ".join(room_lines) + "."]
    if any(r["kind"] == "throughput" for r in records):
        modes = lossless_modes(argparse.Namespace(**args)) + ["pubsub"]
        first = modes[1] if args.get("baseline_rev") else None
        lines += ["", f"**Throughput**: {args['throughput_messages']:,} messages of "
                  f"{args['throughput_size']} B from server A, round-robin over the rooms, "
                  "timed until server B received every one (default retention: 10,000 "
                  "messages per topic, 1,000 per room); median of the runs (min–max). CPU: "
                  "seconds per million messages, the example's (both servers, one process) "
                  "and redis-server's. ÷ pub/sub: lossless over the pub/sub mode in the same "
                  "run." + (f" Redis CPU ÷ {first}: the median of each run's Redis CPU "
                            f"over that of {first} in the same run (interleaved: "
                            "every mode of a run, then the next run)." if first else ""), "",
                  "| rooms | mode | messages/s | ÷ pub/sub | example CPU s/M | Redis CPU s/M "
                  + ("| Redis CPU ÷ base " if first else "")
                  + "| Redis memory after | missed |",
                  "|---:|---|---:|---:|---:|---:|" + ("---:|" if first else "") + "---:|---:|"]
        n = args["throughput_messages"]
        for rooms in args["rooms"]:
            base = [r["result"]["messages_per_s"]
                    for r in by(records, "throughput", rooms=rooms, mode="pubsub")]
            for mode in modes:
                found = by(records, "throughput", rooms=rooms, mode=mode)
                if not found:
                    continue
                rate = [r["result"]["messages_per_s"] for r in found]
                ratio = ""
                if mode != "pubsub" and base:
                    ratio = f"{median(rate) / median(base):.2f}×"
                cpu_ratio = ""
                if first:
                    cpu_ratio = "| " + run_ratios(records, rooms, mode, first) + " "
                lines.append(
                    f"| {rooms:,} | {mode} | {spread(rate, '{:,.0f}')} | {ratio} "
                    f"| {spread([r['result']['cpu_s_per_million'] for r in found], '{:.1f}')} "
                    f"| {spread([r['redis_cpu_s'] * 1e6 / n for r in found], '{:.1f}')} "
                    + cpu_ratio
                    + f"| {spread([r['redis_memory_delta'] / 1048576 for r in found], '{:.1f}')} MiB "
                    f"| {max(r['result']['b']['missed'] for r in found)} |")
        lines += commands_table(records, args, modes)
    if any(r["kind"] == "resume" for r in records):
        lines += ["", "**Resume**: a client resumes in a room from its first message on a "
                  "server that never had the room: the other messages are replayed from the "
                  "room's stream in Redis. Server: `Rooms::resume` until the whole replay is "
                  "queued (it waits for the client to read); client: connect to the last "
                  "replayed message read; median (min–max).", "",
                  "| size | missed | server s | client s | first message after, ms "
                  "| ms per 1,000 |", "|---:|---:|---:|---:|---:|---:|"]
        for size in args["resume_sizes"]:
            for missed in args["missed"]:
                found = by(records, "resume", missed=missed, size=size)
                if not found:
                    continue
                call = [r["result"]["resume_call_s"] for r in found]
                lines.append(
                    f"| {size:,} B | {missed:,} | {spread(call, '{:.3f}')} "
                    f"| {spread([r['result']['last_s'] for r in found], '{:.3f}')} "
                    f"| {spread([r['result']['first_s'] * 1e3 for r in found], '{:.1f}')} "
                    f"| {spread([c * 1e6 / missed for c in call], '{:.1f}')} |")
    failed = [r for r in records if not r["ok"]]
    if failed:
        lines += ["", f"Failed runs ({len(failed)}):", ""]
        lines += [f"- {r['kind']} {r['cell']}: {(r['error'] or '')[:300]}" for r in failed]
    busy = [r["other_load_cores"] for r in records if r.get("other_load_cores") is not None]
    if busy:
        lines += ["", f"Other load during the runs (cores kept busy by other processes): "
                  f"median {sorted(busy)[len(busy) // 2]:.2f}, max {max(busy):.2f}."]
    lines += ["", f"Raw runs: `{report['results_file']}`.", ""]
    return "\n".join(lines)


def build_baseline(rev: str, work: Path, target: Path, index: int) -> Path:
    """The example of `rev`, built in a temporary worktree into `target`, copied into
    `work`. A `rev` older than the example gets this tree's copy, built for an older crate
    (`--cfg backplane_scale_baseline`: throughput only)."""
    tree = work / f"baseline-{index}"
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=ROOT,
                   check=True, capture_output=True)
    try:
        env = {**os.environ, "CARGO_TARGET_DIR": str(target)}
        source = tree / "examples" / f"{EXAMPLE}.rs"
        if not source.exists():
            shutil.copy2(ROOT / "examples" / f"{EXAMPLE}.rs", source)
            env["RUSTFLAGS"] = (env.get("RUSTFLAGS", "") + " --cfg backplane_scale_baseline").strip()
        cmd = ["cargo", "build", "--release", "--features", "redis", "--example", EXAMPLE]
        log(f"$ {' '.join(cmd)}  # {rev} in {tree}, target {target}"
            + (f", RUSTFLAGS={env['RUSTFLAGS']!r}" if "RUSTFLAGS" in env else ""))
        done = subprocess.run(cmd, cwd=tree, env=env)
        if done.returncode != 0:
            sys.exit(f"cargo build of {rev} failed (exit {done.returncode})")
        binary = work / f"{EXAMPLE}-{index}"
        shutil.copy2(target / "release" / "examples" / EXAMPLE, binary)
        return binary
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT,
                       capture_output=True)


def on_signal(signum: int, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if not shutil.which("redis-server"):
        sys.exit("redis-server is not installed (Debian: apt-get install redis-server)")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    results_path = args.out / f"redis-scale-{stamp}.json"
    public_args = {k: (str(v) if isinstance(v, Path) else
                       [str(p) for p in v] if k == "baseline_target" else v)
                   for k, v in vars(args).items()}
    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "complete": False, "args": public_args,
        "machine": machine_info({"redis": ["redis-server", "--version"]}),
        "results_file": str(results_path), "runs": [],
    }
    steps = plan(args)
    began = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="redis-scale-") as work:
            work_dir = Path(work)
            if not args.no_build:
                cargo_build([EXAMPLE], features=["redis"])
            built = target_dir() / "release" / "examples" / EXAMPLE
            if not built.exists():
                sys.exit(f"missing {built} (build it or drop --no-build)")
            binaries = {None: work_dir / EXAMPLE}
            shutil.copy2(built, binaries[None])
            for i, rev in enumerate(args.baseline_rev):
                target = (args.baseline_target[i] if i < len(args.baseline_target)
                          else work_dir / f"target-{i}")
                binaries[rev] = build_baseline(rev, work_dir, target, i)
            report["builds"] = {rev or "this tree": str(path) for rev, path in binaries.items()}
            log(f"{len(steps)} runs; results in {results_path}")
            try:
                for i, (kind, cell, flags) in enumerate(steps, 1):
                    binary = binaries[cell.get("build")]
                    record = run_one(binary, work_dir, args, kind, flags)
                    record["cell"] = cell
                    report["runs"].append(record)
                    save(report, results_path)
                    result = record.get("result") or {}
                    summary = {
                        "memory": lambda: f"{record['redis_memory_delta'] / args.memory_messages:,.0f} B/message",
                        "throughput": lambda: f"{si(result.get('messages_per_s'))} msg/s, "
                                              f"Redis CPU {record['redis_cpu_s']:.2f} s",
                        "resume": lambda: f"{result.get('resume_call_s')} s",
                    }[kind]
                    log(f"[{i}/{len(steps)}] {kind} {cell} "
                        f"{'ok ' + summary() if record['ok'] else 'FAIL ' + str(record['error'])[:300]}"
                        f" ({record['wall_s']} s)")
            except KeyboardInterrupt:
                log("interrupted: stopping every process and writing what was measured")
            else:
                report["complete"] = True
    finally:
        PROCS.stop_all()
    report["elapsed_s"] = round(time.monotonic() - began, 1)
    save(report, results_path)
    summary = markdown(report)
    (args.out / "redis_scale.md").write_text(summary)
    print(summary, flush=True)
    log(f"done in {report['elapsed_s']:.0f} s: {results_path}, {args.out / 'redis_scale.md'}")
    return 0 if report["complete"] and all(r["ok"] for r in report["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
