#!/usr/bin/env python3
"""Cross-process fan-out through the Redis backplane: one command reruns it.

    python3 bench/backplane.py            # 3 runs, 1000 clients, closed loop + 100, 1000 msg/s
    python3 bench/backplane.py --quick    # 1 run, 3 s each (~1 min)
    python3 bench/backplane.py --max-other-load 0.2   # shared machine: rerun disturbed runs

Configurations (all examples/chat/main.rs with --no-notices, built with --features redis):
  single      one chat process, no backplane: the figure the others are compared with
  pubsub-1    one chat process with --redis-pubsub: what the backplane costs local delivery
  pubsub-2    two chat processes with --redis-pubsub sharing one room: clients (and senders)
              spread round-robin over them, so half of every broadcast's deliveries cross Redis
  lossless-1  one chat process with --redis (a Redis stream per topic: every delivery, local
              ones included, comes back from Redis first)
  lossless-2  two chat processes with --redis sharing one room

After each lossless run, the room's stream is measured in Redis (MEMORY USAGE, XLEN): what
its retention costs per message.

The script starts its own redis-server on a free port (no persistence), then for every load
(closed loop, then each --rates value) and run index measures the configurations in
interleaved order (A B C A B C ...), each with fresh chat processes, loaded by
target/release/examples/loadgen and stopped again. Every process it starts is stopped by
its PID at the end, also on errors, Ctrl-C and SIGTERM.

Each run also records how many cores other processes kept busy meanwhile (machine busy time
from /proc/stat minus this benchmark's processes); --max-other-load reruns a run that was
disturbed more than that, up to --retries times, and keeps the least disturbed attempt.

Output: OUT/backplane-<timestamp>.json (every raw run, the aggregates and the machine) and
OUT/backplane.md (also printed).  Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import http.client
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from benchlib import (ROOT, ServerOutput, cargo_build, fmt_stat, int_list, last_json,
                      loadgen_flags, loadgen_timeout, log, machine_info, machine_line,
                      median_ratios, ms, name_list, raise_nofile_limit, ratio, record_loadgen,
                      save, si, summarize, target_dir, terminate)

ALL_CONFIGS = ["single", "pubsub-1", "pubsub-2", "lossless-1", "lossless-2"]
# config -> (chat processes, the chat's Redis flag or None)
CONFIGS = {
    "single": (1, None),
    "pubsub-1": (1, "--redis-pubsub"),
    "pubsub-2": (2, "--redis-pubsub"),
    "lossless-1": (1, "--redis"),
    "lossless-2": (2, "--redis"),
}
# The chat's rooms topic, as a lossless stream key (see src/backplane/redis/streams.rs).
ROOMS_STREAM = "{websocket-handler:chat-rooms}"
CONNECTED_LINE = "Redis backplane: Connected"
# Metrics aggregated per (load, config): key -> higher is better?
METRICS = {
    "deliveries_per_s": True,
    "p50_us": False,
    "p99_us": False,
    "p99_same_us": False,
    "p99_cross_us": False,
    "lost": False,
    "gaps": False,
    "reordered": False,
    "chat_cpu_s_per_million": False,
    "redis_cpu_s_per_million": False,
    "loadgen_cpu_s_per_million": False,
    "other_load_cores": False,
}


def rate_list(text: str) -> list[int]:
    """Empty is allowed: closed loop only."""
    return int_list(text, allow_empty=True, positive=True)


config_list = name_list(ALL_CONFIGS, "configuration")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure broadcast fan-out across chat processes sharing one Redis.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="1 run, 3 s each")
    parser.add_argument("--configs", type=config_list, default=ALL_CONFIGS,
                        help="configurations to measure; ratios need 'single'")
    parser.add_argument("--runs", type=int, default=None, help="runs per cell (default 3; quick 1)")
    parser.add_argument("--clients", type=int, default=1000, help="clients N, over all servers")
    parser.add_argument("--senders", type=int, default=10, help="clients that send")
    parser.add_argument("--window", type=int, default=8,
                        help="messages in flight per sender (closed loop)")
    parser.add_argument("--size", type=int, default=64, help="payload bytes")
    parser.add_argument("--rates", type=rate_list, default=[100, 1000],
                        help="open-loop rates (broadcasts/s, all senders together); "
                             "empty for closed loop only")
    parser.add_argument("--no-closed-loop", action="store_true",
                        help="skip the closed-loop (throughput) runs")
    parser.add_argument("--duration", type=float, default=None,
                        help="measured seconds per run (default 5; quick 3)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="loadgen warm-up seconds (default 1; quick 0.5)")
    parser.add_argument("--connect-batch", type=int, default=100,
                        help="concurrent connects (keep under the listen backlog of 128)")
    parser.add_argument("--max-other-load", type=float, default=None,
                        help="rerun a run (up to --retries times) when other processes kept "
                             "more than this many cores busy on average during it")
    parser.add_argument("--retries", type=int, default=2,
                        help="reruns per run for --max-other-load; the least disturbed "
                             "attempt is kept")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds before one loadgen call is killed (default: computed)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--no-build", action="store_true",
                        help="skip cargo build (the chat binary must have --features redis)")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs = 1 if args.runs is None else args.runs
        args.duration = 3.0 if args.duration is None else args.duration
        args.warmup = 0.5 if args.warmup is None else args.warmup
    args.runs = 3 if args.runs is None else args.runs
    args.duration = 5.0 if args.duration is None else args.duration
    args.warmup = 1.0 if args.warmup is None else args.warmup
    if args.runs < 1 or args.duration <= 0 or args.warmup < 0:
        parser.error("--runs must be >= 1, --duration > 0, --warmup >= 0")
    if args.clients < 2 or not 1 <= args.senders <= args.clients:
        parser.error("need --clients >= 2 and 1 <= --senders <= --clients")
    if args.no_closed_loop and not args.rates:
        parser.error("nothing to measure: --no-closed-loop and no --rates")
    if not args.out.is_absolute():
        args.out = Path.cwd() / args.out
    return args


# ---------------------------------------------------------------- environment


def build_and_copy(args: argparse.Namespace, into: Path) -> dict[str, Path]:
    """Builds chat (with Redis) and loadgen, and copies both into `into`, so that another
    build in the same target directory (say, chat without the feature) cannot swap a binary
    out from under a run."""
    if not args.no_build:
        cargo_build(["chat", "loadgen"], features=["redis"])
    binaries = {}
    for name in ["chat", "loadgen"]:
        built = target_dir() / "release" / "examples" / name
        if not built.exists():
            sys.exit(f"missing {built} (build it or drop --no-build)")
        copy = into / name
        shutil.copy2(built, copy)
        binaries[name] = copy
    return binaries


CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float | None:
    """CPU seconds the whole machine has spent not idle (steal counts as busy)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
        user, nice, system, idle, iowait, irq, softirq, steal = map(int, fields[1:9])
    except (OSError, ValueError, IndexError):
        return None
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def process_cpu_s(pid: int) -> float | None:
    """utime + stime of a live process, from /proc/PID/stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, ValueError, IndexError):
        return None


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class OtherLoad:
    """How many cores, on average, processes other than ours kept busy while it was open:
    machine busy time minus our servers' (live PIDs) and our reaped children's (loadgen)."""

    def __init__(self, pids: list[int]):
        self.pids = pids
        self.wall = time.monotonic()
        self.busy = machine_busy_s()
        self.ours = [process_cpu_s(pid) for pid in pids]
        self.children = children_cpu_s()

    def cores(self) -> float | None:
        """Call after the children measured have been waited for, before the servers stop."""
        busy, ours = machine_busy_s(), [process_cpu_s(pid) for pid in self.pids]
        wall = time.monotonic() - self.wall
        if busy is None or self.busy is None or wall <= 0 or None in ours + self.ours:
            return None
        mine = sum(ours) - sum(self.ours) + children_cpu_s() - self.children
        return max(0.0, busy - self.busy - mine) / wall


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- processes


class Processes:
    """Every process this script starts, so that each is stopped by its PID whatever happens."""

    def __init__(self) -> None:
        self.live: dict[int, subprocess.Popen] = {}

    def start(self, cmd: list[str], **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, **kwargs)
        self.live[proc.pid] = proc
        return proc

    def stop(self, proc: subprocess.Popen, grace: float = 3.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` s; returns the exit status."""
        try:
            return terminate(proc, grace)
        finally:
            self.live.pop(proc.pid, None)

    def stop_all(self) -> None:
        for proc in list(self.live.values()):
            try:
                self.stop(proc, grace=2.0)
            except (OSError, subprocess.TimeoutExpired) as error:
                log(f"could not stop PID {proc.pid}: {error}")


PROCS = Processes()


class Redis:
    """redis-server on a free loopback port, without persistence."""

    def __init__(self, work_dir: Path):
        self.log = tempfile.TemporaryFile(mode="w+b", dir=work_dir)
        last_error = ""
        for _attempt in range(5):
            self.port = free_port()
            self.proc = PROCS.start(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", str(work_dir)],
                stdout=self.log, stderr=subprocess.STDOUT,
            )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                if self.ping():
                    return
                time.sleep(0.05)
            PROCS.stop(self.proc)
            last_error = self.log_tail()
        raise RuntimeError(f"redis-server did not start: {last_error}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *args: str) -> int | str | None:
        """One command, RESP2; an integer, a string or None (nil). RuntimeError on an error
        reply."""
        request = f"*{len(args)}\r\n" + "".join(
            f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(request.encode())
            reply = s.makefile("rb")
            line = reply.readline().rstrip(b"\r\n")
            kind, rest = line[:1], line[1:].decode()
            if kind == b":":
                return int(rest)
            if kind == b"+":
                return rest
            if kind == b"$":
                if int(rest) < 0:
                    return None
                return reply.read(int(rest) + 2)[:-2].decode()
            raise RuntimeError(f"redis answered {line!r} to {args[0]}")

    def log_tail(self, chars: int = 400) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")[-chars:]

    def stop(self) -> None:
        PROCS.stop(self.proc)
        self.log.close()


class Chat(ServerOutput):
    """One chat process on port 0; with `redis_url`, ready only once subscribed and healthy."""

    def __init__(self, binary: Path, redis_url: str | None, flag: str | None, work_dir: Path):
        self.stderr = tempfile.TemporaryFile(mode="w+b", dir=work_dir)
        cmd = [str(binary), "--addr", "127.0.0.1:0", "--no-notices"]
        if redis_url:
            cmd += [flag or "--redis", redis_url]
        self.proc = PROCS.start(cmd, stdout=subprocess.PIPE, stderr=self.stderr)
        try:
            addr, seen = self.read_address(timeout=15.0)
            if addr is None:
                raise RuntimeError(f"chat did not print its address (stdout {seen[-300:]!r}, "
                                   f"stderr {self.stderr_tail()!r})")
            self.addr = addr
            self.drain_stdout()
            if redis_url:
                self._wait_connected(timeout=15.0)
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"ws://{self.addr}/api/Chat"

    def _wait_connected(self, timeout: float) -> None:
        """`Redis backplane: Connected` on stderr, and GET /health answering 200."""
        deadline = time.monotonic() + timeout
        status = None
        while time.monotonic() < deadline and self.proc.poll() is None:
            if CONNECTED_LINE in self.stderr_text():
                status = self.health()
                if status == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"chat did not connect to Redis (exit {self.proc.poll()}, "
                           f"/health {status}, stderr {self.stderr_tail()!r})")

    def health(self) -> int | None:
        host, _, port = self.addr.rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=2)
        try:
            conn.request("GET", "/health")
            return conn.getresponse().status
        except (OSError, http.client.HTTPException):
            return None
        finally:
            conn.close()

    def stop(self) -> int | None:
        try:
            return PROCS.stop(self.proc)
        finally:
            self.stderr_saved = self.stderr_text()
            self.stderr.close()


# ---------------------------------------------------------------- one run


def run_loadgen(cmd: list[str], timeout: float) -> tuple[int | None, str, str]:
    """Runs loadgen to the end (killed by PID after `timeout`); (exit, stdout, stderr)."""
    with tempfile.TemporaryFile(mode="w+") as out, tempfile.TemporaryFile(mode="w+") as err:
        proc = PROCS.start(cmd, stdout=out, stderr=err)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            PROCS.stop(proc, grace=1.0)
            return None, "", f"loadgen timed out after {timeout:g} s"
        finally:
            PROCS.stop(proc, grace=1.0)
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read(), err.read()


def stream_memory(redis: "Redis") -> dict | None:
    """The rooms stream's length and bytes in Redis; then it is deleted, so that every run
    starts from an empty stream."""
    try:
        entries = int(redis.command("XLEN", ROOMS_STREAM))
        used = int(redis.command("MEMORY", "USAGE", ROOMS_STREAM, "SAMPLES", "0") or 0)
        redis.command("DEL", ROOMS_STREAM, ROOMS_STREAM + ":offset", ROOMS_STREAM + ":epoch")
    except (OSError, ValueError, RuntimeError):
        return None
    if not entries:
        return None
    return {"entries": entries, "bytes": used, "bytes_per_entry": used / entries}


def run_one(args: argparse.Namespace, bins: dict[str, Path], redis: Redis, config: str,
            rate: int, run_index: int, work_dir: Path) -> dict:
    count, flag = CONFIGS[config]
    with_redis = flag is not None
    record = {"config": config, "rate": rate, "run": run_index, "ok": False, "error": None,
              "loadgen": None, "chat_pids": [], "redis_pid": redis.pid if with_redis else None}
    started = time.monotonic()
    if with_redis and not redis.ping():
        record["error"] = f"redis-server is not answering: {redis.log_tail()}"
        return record
    chats: list[Chat] = []
    try:
        try:
            for _ in range(count):
                chats.append(Chat(bins["chat"], redis.url if with_redis else None, flag,
                                  work_dir))
        except (OSError, RuntimeError) as error:
            record["error"] = f"chat start: {error}"
            return record
        record["chat_pids"] = [c.pid for c in chats]
        # Redis last: loadgen sums CPU over these PIDs and also reports each one.
        pids = [c.pid for c in chats] + ([redis.pid] if with_redis else [])
        cmd = [
            str(bins["loadgen"]),
            "--url", ",".join(c.url for c in chats),
            "--server-pid", ",".join(map(str, pids)),
            *loadgen_flags(args, args.clients, rate, args.size, args.duration, args.warmup),
            "--quiet",
        ]
        record["command"] = " ".join(cmd)
        other = OtherLoad(pids)
        code, stdout, stderr = run_loadgen(
            cmd, loadgen_timeout(args, args.clients, args.warmup, args.duration))
        record["other_load_cores"] = other.cores()
        record["loadgen_exit"] = code
        record["loadgen_stderr"] = stderr.strip()[-1500:]
        record_loadgen(record, last_json(stdout), code, stderr)
        for chat in chats:
            if chat.proc.poll() is not None:
                record["ok"] = False
                record["error"] = (record["error"] or "") + (
                    f" chat {chat.pid} exited early with {chat.proc.returncode}: "
                    f"{chat.stderr_tail()}")
        if with_redis and redis.proc.poll() is not None:
            record["ok"] = False
            record["error"] = (record["error"] or "") + " redis-server exited"
        if flag == "--redis" and redis.proc.poll() is None:
            record["stream"] = stream_memory(redis)
    finally:
        record["chat_exit"] = [c.stop() for c in chats]
        # Anything the chat processes said beyond their state changes (warnings of drops).
        noise = []
        for chat in chats:
            text = getattr(chat, "stderr_saved", "")
            noise += [line for line in text.splitlines()
                      if line.strip() and not line.startswith("Redis backplane: Connect")]
        record["chat_stderr"] = noise[-20:]
        record["wall_s"] = round(time.monotonic() - started, 2)
    return record


def flatten(record: dict) -> dict:
    """The metrics of one run (None where unknown). Chat CPU excludes redis-server's."""
    result = record.get("loadgen") or {}
    latency = result.get("latency_us") or {}
    same = result.get("latency_same_server_us") or {}
    cross = result.get("latency_cross_server_us") or {}
    deliveries = result.get("deliveries") or 0
    each = result.get("server_cpu_s_each") or []
    chats = len(record.get("chat_pids") or [])
    chat_cpu = redis_cpu = None
    if len(each) >= chats > 0 and all(isinstance(c, (int, float)) for c in each):
        chat_cpu = sum(each[:chats])
        redis_cpu = each[chats] if len(each) > chats else None
    loadgen_cpu = result.get("loadgen_cpu_s")

    def per_million(cpu: float | None) -> float | None:
        return cpu * 1e6 / deliveries if cpu is not None and deliveries else None

    return {
        "deliveries_per_s": result.get("deliveries_per_s"),
        "p50_us": latency.get("p50"),
        "p99_us": latency.get("p99"),
        "p99_same_us": same.get("p99") if cross.get("p99") is not None else None,
        "p99_cross_us": cross.get("p99"),
        "lost": result.get("lost"),
        "gaps": result.get("gaps"),
        "reordered": result.get("reordered"),
        "window_stalls": result.get("window_stalls"),
        "chat_cpu_s_per_million": per_million(chat_cpu),
        "redis_cpu_s_per_million": per_million(redis_cpu),
        "loadgen_cpu_s_per_million": per_million(loadgen_cpu),
        "other_load_cores": record.get("other_load_cores"),
    }


# ---------------------------------------------------------------- aggregates


def load_name(rate: int) -> str:
    return "closed loop" if rate == 0 else f"{rate} msg/s"


def aggregate(runs: list[dict], configs: list[str]) -> list[dict]:
    groups: dict[int, dict[str, list[dict]]] = {}
    for record in runs:
        groups.setdefault(record["rate"], {}).setdefault(record["config"], []).append(record)
    out = []
    for rate in sorted(groups):
        per_config = {name: summarize(groups[rate].get(name, []), METRICS, flatten)
                      for name in configs}
        # Each configuration's median divided by single's (deliveries/s: below 1 = slower).
        ratios: dict[str, dict[str, float | None]] = {}
        base = per_config.get("single")
        if base:
            for name, entry in per_config.items():
                ratios[name] = median_ratios(entry, base, METRICS)
        out.append({"rate": rate, "load": load_name(rate), "configs": per_config,
                    "over_single": ratios})
    return out


# ---------------------------------------------------------------- formatting


def count(v: float) -> str:
    return f"{v:.0f}"


def cpu(v: float) -> str:
    return f"{v:.3g}"


def markdown(report: dict) -> str:
    args, aggregates, machine = report["args"], report["aggregates"], report["machine"]
    lines = ["# Cross-process fan-out through Redis", ""]
    lines.append(machine_line(
        machine, (machine.get("redis") or "redis ?").split(" sha=")[0],
        "Chat servers, redis-server and the load generator share the machine."))
    lines.append("")
    lines.append(
        f"{args['clients']} clients, {args['senders']} senders, {args['size']}-byte messages; "
        f"median of {args['runs']} run(s), (min–max) when they differ; "
        f"{args['duration']:g} s measured after {args['warmup']:g} s warm-up; closed loop with "
        f"window {args['window']}, open loop at the given broadcasts/s (all senders together). "
        "single: one chat process; pubsub-N: N with --redis-pubsub; lossless-N: N with "
        "--redis (streams); with two, clients and senders are spread over them. ÷ single: the configuration's median divided "
        "by single's in the same run (deliveries/s: below 1 = slower; p99: above 1 = slower). "
        "CPU is per million deliveries over the measured phase; chat is summed over the chat "
        "processes, redis is redis-server's. Other load: cores that processes other than "
        "this benchmark's (kernel threads included) kept busy on average during the run "
        "(the machine is shared; "
        "runs with much of it are the noisy ones)."
    )
    discarded = report.get("discarded_runs") or []
    if discarded:
        lines += ["", f"{len(discarded)} run(s) were rerun because other processes kept more "
                  f"than {args['max_other_load']:g} cores busy (kept in the JSON as "
                  "`discarded_runs`)."]
    for note in report.get("notes", []):
        lines += ["", f"> {note}"]
    configs = args["configs"]
    lines += ["", "| load | config | deliveries/s | ÷ single | p50 ms | p99 ms | p99 ÷ single "
              "| lost | chat CPU s/M | redis CPU s/M | other load, cores |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for agg in aggregates:
        for name in configs:
            entry = agg["configs"].get(name) or {}
            over = agg["over_single"].get(name) or {}
            lines.append(
                f"| {agg['load']} | {name} "
                f"| {fmt_stat(entry.get('deliveries_per_s'), si)} "
                f"| {'' if name == 'single' else ratio(over.get('deliveries_per_s'))} "
                f"| {fmt_stat(entry.get('p50_us'), ms, False)} "
                f"| {fmt_stat(entry.get('p99_us'), ms)} "
                f"| {'' if name == 'single' else ratio(over.get('p99_us'))} "
                f"| {fmt_stat(entry.get('lost'), count)} "
                f"| {fmt_stat(entry.get('chat_cpu_s_per_million'), cpu, False)} "
                f"| {fmt_stat(entry.get('redis_cpu_s_per_million'), cpu, False)} "
                f"| {fmt_stat(entry.get('other_load_cores'), lambda v: f'{v:.2f}')} |"
            )
    for two in [name for name in configs if name.endswith("-2")]:
        lines += ["", f"{two}, p99 by path: deliveries by the sender's own server, and "
                  "those that crossed Redis to the other server.", "",
                  "| load | p99 ms, same server | p99 ms, through Redis |", "|---|---:|---:|"]
        for agg in aggregates:
            entry = agg["configs"].get(two) or {}
            lines.append(f"| {agg['load']} | {fmt_stat(entry.get('p99_same_us'), ms)} "
                         f"| {fmt_stat(entry.get('p99_cross_us'), ms)} |")
    streams = [r["stream"] for r in report["runs"] if r.get("stream")]
    if streams:
        per = sorted(s["bytes_per_entry"] for s in streams)
        entries = sorted(s["entries"] for s in streams)
        lines += ["", f"Lossless: the room's stream in Redis held {entries[len(entries) // 2]:,} "
                  f"entries (median of {len(streams)} runs; retention 10,000, trimmed "
                  f"approximately) at {per[len(per) // 2]:.0f} bytes each "
                  f"({per[0]:.0f}–{per[-1]:.0f}; {args['size']}-byte messages, MEMORY USAGE)."]
    odd = []
    for r in report["runs"]:
        m = flatten(r)
        problems = [f"{k} {m[k]}" for k in ("lost", "gaps", "reordered", "window_stalls")
                    if m.get(k)]
        if r.get("chat_stderr"):
            problems.append(f"chat stderr: {' | '.join(r['chat_stderr'])[:300]}")
        if problems:
            odd.append(f"- {r['config']} {load_name(r['rate'])} run {r['run'] + 1}: "
                       + "; ".join(problems))
    if odd:
        lines += ["", "Runs with losses, gaps or server warnings:", "", *odd]
    failed = [r for r in report["runs"] if not r["ok"]]
    if failed:
        lines += ["", f"Failed runs ({len(failed)}):", ""]
        for r in failed:
            lines.append(f"- {r['config']} {load_name(r['rate'])} run {r['run'] + 1}: "
                         f"{(r['error'] or '').strip()[:300]}")
    lines += ["", f"Raw runs: `{report['results_file']}`.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def plan(args: argparse.Namespace) -> list[tuple[int, int, str]]:
    """Every run in the order it happens: configurations interleaved within each run index."""
    rates = ([] if args.no_closed_loop else [0]) + list(args.rates)
    return [(rate, run, config)
            for rate in rates for run in range(args.runs) for config in args.configs]


def on_signal(signum: int, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if not shutil.which("redis-server"):
        sys.exit("redis-server is not installed (Debian: apt-get install redis-server)")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    nofile = raise_nofile_limit()
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    results_path = args.out / f"backplane-{stamp}.json"
    notes = []
    if nofile[0] < args.clients * 2 + 100:
        notes.append(f"RLIMIT_NOFILE is {nofile[0]}, below the ~{args.clients * 2 + 100} "
                     "descriptors a run needs; expect connect errors.")
    if "single" not in args.configs:
        notes.append("No 'single' configuration: no ratios.")

    steps = plan(args)
    public_args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "complete": False, "args": public_args,
        "machine": machine_info({"redis": ["redis-server", "--version"]}), "notes": notes,
        "results_file": str(results_path), "redis_port": None, "runs": [], "discarded_runs": [], "aggregates": [],
    }
    began = time.monotonic()
    redis = None
    try:
        with tempfile.TemporaryDirectory(prefix="backplane-bench-") as work:
            work_dir = Path(work)
            try:
                bins = build_and_copy(args, work_dir)
                redis = Redis(work_dir)
                report["redis_port"] = redis.port
                log(f"redis-server PID {redis.pid} on {redis.url}; {len(steps)} runs over "
                    f"{', '.join(args.configs)}; results in {results_path}")
                for i, (rate, run, config) in enumerate(steps, 1):
                    label = (f"[{i}/{len(steps)}] {load_name(rate):<12} run={run + 1} "
                             f"{config:<8}")
                    attempts = []
                    for attempt in range(args.retries + 1):
                        attempts.append(run_one(args, bins, redis, config, rate, run, work_dir))
                        busy = attempts[-1].get("other_load_cores")
                        if (args.max_other_load is None or busy is None
                                or busy <= args.max_other_load or attempt == args.retries):
                            break
                        log(f"{label} other processes kept {busy:.2f} cores busy: rerunning")
                    # The least disturbed attempt counts; the others are kept apart.
                    record = min(attempts, key=lambda r: r.get("other_load_cores") or 0.0)
                    for other_attempt in attempts:
                        if other_attempt is not record:
                            other_attempt["discarded"] = True
                            report["discarded_runs"].append(other_attempt)
                    m = flatten(record)
                    p99, chat_cpu, other = (m["p99_us"], m["chat_cpu_s_per_million"],
                                            m["other_load_cores"])
                    log(f"{label} {'ok ' if record['ok'] else 'FAIL'} "
                        f"{si(m['deliveries_per_s'])}/s "
                        f"p99={'–' if p99 is None else ms(p99) + 'ms'} lost={m['lost']} "
                        f"chat CPU/M={'–' if chat_cpu is None else cpu(chat_cpu)} "
                        f"other load={'–' if other is None else f'{other:.2f}'} cores "
                        f"({record['wall_s']}s)"
                        + (f"\n    {record['error'][:300]}" if record["error"] else ""))
                    report["runs"].append(record)
                    save(report, results_path)
            except KeyboardInterrupt:
                log("interrupted: stopping every process and writing what was measured")
                report["notes"].append("Interrupted before every run finished.")
            else:
                report["complete"] = True
            finally:
                if redis is not None:
                    redis.stop()
                PROCS.stop_all()
    finally:
        PROCS.stop_all()
    report["elapsed_s"] = round(time.monotonic() - began, 1)
    report["aggregates"] = aggregate(report["runs"], args.configs)
    save(report, results_path)
    summary = markdown(report)
    (args.out / "backplane.md").write_text(summary)
    print(summary, flush=True)
    log(f"done in {report['elapsed_s']:.0f} s: {results_path}, {args.out / 'backplane.md'}")
    return 0 if report["complete"] and all(r["ok"] for r in report["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
