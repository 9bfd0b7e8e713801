#!/usr/bin/env python3
"""Many idle connections: what one chat server holds, what holding them costs, and how long
one broadcast to all of them takes (issue 30, point 4).

    python3 bench/scale.py                        # ~4 min: 2,500 / 5,000 / 10,000 / the most
    python3 bench/scale.py --runs 2               # every step twice, interleaved (~7 min)
    python3 bench/scale.py --steps 2500,max --idle-window 16 --probes 3   # a quick look

It asks for `--clients` (default 100,000) idle connections to `examples/chat --no-notices`,
holds as many as the file-descriptor and port limits allow, and measures at each step
(`--steps`; `max` is the most possible), on a server started fresh for the step:

- memory: the server's RSS with the step's clients connected, less its RSS before, per
  connection; and the kernel's side of a socket, which RSS leaves out: the growth of the
  slab caches (/proc/slabinfo, machine-wide, so anything else running shows in it) over
  twice the connections, both ends being on this machine;
- keep-alive: the server's CPU per second while every client idles, over `--idle-window`
  seconds (default 32: the chat keeps the crate's defaults, a ping 15 s after a connection
  was last heard and a 30 s idle timeout, and its one sweep timer ticks every second, so
  every connection is pinged about twice in the window); the pings the clients had in it
  are counted, so the cost per ping is known too;
- broadcast: `--probes` times, one client sends one message (`--size` bytes) and the time
  until the last of the N clients has it (wall clock: sender and receivers may be in
  different loadgen processes), and the server's CPU for it.

The clients come from `loadgen --idle --control`, several processes of at most
`--per-process` clients each (each under its own descriptor limit), each spreading its
connections over `--source-addrs` loopback addresses (127.0.0.2, .3, ...) so that the
ephemeral ports of one address (about 28,000) do not cap a step. The script raises its
RLIMIT_NOFILE to the hard limit (the server and loadgen inherit it), tries to go beyond it
for `--clients` and says why it could not. The per-connection figures at every step show
whether the costs are linear; a least-squares line through the steps gives the figures at
100,000 and 1,000,000 connections.

Output: a Markdown summary on stdout and `bench/results/scale-<timestamp>.json` (every
loadgen line, the limits, the fits). Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import benchlib
from benchlib import ROOT, fit, log
from density import Server

# Descriptors a process keeps besides its connections (listener, epoll, eventfds, stdio,
# the allocator's and tokio's own): what is left of the limit is for sockets.
FD_MARGIN = 100
# The chat example keeps the crate's keep-alive defaults (src/engine/settings.rs).
PING_INTERVAL_S = 15.0
EXTRAPOLATE = [100_000, 1_000_000]


def read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def port_range() -> int:
    """How many ephemeral ports one local address has."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return high - low + 1
    except (OSError, ValueError):
        return 28232


def limits(asked: int, source_addrs: int) -> dict:
    """What caps the connections one server holds here, and why."""
    soft, hard = benchlib.raise_nofile_limit()
    wanted = asked + FD_MARGIN
    refused = None
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
        except (ValueError, OSError) as error:
            refused = f"setrlimit(RLIMIT_NOFILE, {wanted}) refused: {error}"
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ports = port_range() * max(1, source_addrs)
    by_fds = soft - FD_MARGIN
    possible = min(asked, by_fds, ports)
    if possible == asked:
        reason = "none: every connection asked for fits"
    elif possible == by_fds:
        reason = (f"the server's open-file limit: RLIMIT_NOFILE {soft} (hard {hard}), less "
                  f"{FD_MARGIN} for its own descriptors; "
                  + (refused or "raising it needs CAP_SYS_RESOURCE")
                  + "; one process holds one descriptor per socket")
    else:
        reason = (f"ephemeral ports: {port_range()} per source address x "
                  f"{max(1, source_addrs)} (--source-addrs)")
    return {"asked": asked, "possible": possible, "nofile": [soft, hard],
            "refused": refused, "reason": reason,
            "fs_nr_open": read_int("/proc/sys/fs/nr_open"),
            "fs_file_max": read_int("/proc/sys/fs/file-max"),
            "ports_per_address": port_range(), "source_addrs": source_addrs}


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def cpu_ns(pid: int) -> int | None:
    """The process's CPU time in nanoseconds: the sum over its threads of
    /proc/PID/task/TID/schedstat's first field (ns, where /proc/PID/stat has 10 ms ticks)."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue  # a thread that just ended
    except OSError:
        return None
    return total


def slab_bytes() -> int | None:
    """The kernel's slab caches, machine-wide, in bytes (/proc/slabinfo: objects x size):
    where a socket's kernel side lives (tcp_sock, the inode, the file...), which no RSS
    shows. None where slabinfo cannot be read."""
    try:
        total = 0
        for line in Path("/proc/slabinfo").read_text().splitlines()[2:]:
            words = line.split()
            total += int(words[2]) * int(words[3])
        return total
    except (OSError, ValueError, IndexError):
        return None


class Loadgen:
    """One `loadgen --idle --control` process: its JSON lines arrive on a queue."""

    def __init__(self, url: str, clients: int, first_id: int, args: argparse.Namespace,
                 work: Path):
        self.clients = clients
        self.stderr = tempfile.TemporaryFile(dir=work)
        self.cmd = [str(benchlib.target_dir() / "release" / "examples" / "loadgen"),
                    "--url", url, "--idle", "--control", "--quiet",
                    "--clients", str(clients), "--senders", "0", "--first-id", str(first_id),
                    "--size", str(args.size), "--connect-batch", str(args.connect_batch),
                    "--source-addrs", str(args.source_addrs)]
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True, bufsize=1)
        self.lines: queue.Queue[dict | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.lines.put(json.loads(line))
            except json.JSONDecodeError:
                continue
        self.lines.put(None)

    def next(self, timeout: float, what: str) -> dict:
        """The next JSON line; fails, saying what it waited for, at its end or timeout."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"loadgen gave no {what} within {timeout:g} s: {self.tail()}")
        if line is None:
            raise RuntimeError(f"loadgen ended (exit {self.proc.poll()}) before {what}: "
                               f"{self.tail()}")
        return line

    def command(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def tail(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode("utf-8", "replace")[-400:]

    def finish(self, timeout: float) -> dict | None:
        """quit, and loadgen's final report (None if it gave none); it is stopped by PID if
        it does not end in time."""
        report = None
        try:
            self.command("quit")
            self.proc.stdin.close()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                line = self.next(max(0.1, deadline - time.monotonic()), "its report")
                if "mode" in line:
                    report = line
                    break
        except (RuntimeError, OSError, ValueError) as error:
            log(f"loadgen {self.proc.pid}: {error}")
        benchlib.terminate(self.proc, grace=10)
        self.stderr.close()
        return report


def one_step(binary: Path, clients: int, args: argparse.Namespace, work: Path) -> dict:
    """A fresh server, `clients` idle connections, the three measurements, and the end."""
    record: dict = {"clients": clients, "ok": False, "error": None}
    server = Server(binary, ["--no-notices"], work)
    gens: list[Loadgen] = []
    try:
        record["server_pid"] = server.pid
        time.sleep(1.0)
        rss_before, slab_before = rss_kib(server.pid), slab_bytes()
        url = f"ws://{server.address}/api/Chat"
        started = time.monotonic()
        first = 0
        while first < clients:
            n = min(args.per_process, clients - first)
            gen = Loadgen(url, n, first, args, work)
            gens.append(gen)
            ready = gen.next(CONNECT_TIMEOUT + n / 500, "ready line")
            if ready.get("clients") != n:
                raise RuntimeError(f"loadgen connected {ready.get('clients')} of {n}")
            first += n
        record["connect_s"] = round(time.monotonic() - started, 2)
        record["loadgens"] = len(gens)
        time.sleep(args.settle)
        rss_connected, slab_connected = rss_kib(server.pid), slab_bytes()
        record["rss_kib_before"], record["rss_kib_connected"] = rss_before, rss_connected
        record["rss_per_conn_bytes"] = (rss_connected - rss_before) * 1024 / clients
        if slab_before is not None and slab_connected is not None:
            # Both ends of every connection are on this machine: half is the server's.
            record["kernel_slab_per_socket_bytes"] = (slab_connected - slab_before) / (2 * clients)

        # Keep-alive: nothing but the sweep, pings and pongs in this window.
        pings_before = sum_pings(gens)
        cpu0, t0 = cpu_ns(server.pid), time.monotonic()
        time.sleep(args.idle_window)
        cpu1, t1 = cpu_ns(server.pid), time.monotonic()
        pings = sum_pings(gens) - pings_before
        record["idle_window_s"] = round(t1 - t0, 3)
        record["idle_cpu_ms_per_s"] = (cpu1 - cpu0) / 1e6 / (t1 - t0)
        record["idle_cpu_us_per_conn_s"] = (cpu1 - cpu0) / 1e3 / (t1 - t0) / clients
        record["pings_in_window"] = pings
        record["idle_cpu_us_per_ping"] = (cpu1 - cpu0) / 1e3 / pings if pings else None
        record["rss_kib_after_window"] = rss_kib(server.pid)

        # Broadcasts: one at a time, each waited for at every client.
        probes = []
        for probe in range(1, args.probes + 1):
            time.sleep(0.2)
            cpu_a = cpu_ns(server.pid)
            gens[0].command(f"send {probe}")
            for gen in gens:
                gen.command(f"wait {probe} {int(args.probe_timeout * 1000)}")
            sent = gens[0].next(10, f"the send of probe {probe}")
            if sent.get("error"):
                raise RuntimeError(f"probe {probe}: {sent['error']}")
            answers = [gen.next(args.probe_timeout + 10, f"probe {probe}'s count")
                       for gen in gens]
            cpu_b = cpu_ns(server.pid)
            received = sum(a["received"] for a in answers)
            probes.append({
                "received": received,
                "all_ms": max(a["max_us"] or 0 for a in answers) / 1000,
                "p99_ms": max(a["p99_us"] or 0 for a in answers) / 1000,
                "server_cpu_ms": (cpu_b - cpu_a) / 1e6,
                "answers": answers,
            })
            if received != clients:
                raise RuntimeError(f"probe {probe} reached {received} of {clients} clients")
        record["probes"] = probes
        record["broadcast_ms"] = statistics.median(p["all_ms"] for p in probes)
        record["broadcast_cpu_ms"] = statistics.median(p["server_cpu_ms"] for p in probes)
        record["ok"] = True
    except RuntimeError as error:
        record["error"] = str(error)
    finally:
        reports = [gen.finish(30) for gen in gens]
        record["loadgen"] = reports
        errors = [e for r in reports if r for e in r.get("errors", [])]
        if errors:
            record["ok"] = False
            record["error"] = (record["error"] or "") + f" loadgen errors: {errors}"
        if server.proc.poll() is not None:
            record["ok"] = False
            record["error"] = (record["error"] or "") + (
                f" server exited with {server.proc.returncode}: {server.stderr_tail()}")
        server.stop()
    return record


CONNECT_TIMEOUT = 60.0


def sum_pings(gens: list[Loadgen]) -> int:
    total = 0
    for gen in gens:
        gen.command("stats")
        total += gen.next(10, "its stats")["pings"]
    return total


def steps_for(spec: list[str], possible: int) -> list[int]:
    out = []
    for item in spec:
        n = possible if item == "max" else min(int(item), possible)
        if n > 0 and n not in out:
            out.append(n)
    return sorted(out)


def summary(report: dict) -> str:
    lim, records = report["limits"], report["records"]
    ok = [r for r in records if r["ok"]]
    steps = sorted({r["clients"] for r in records})
    lines = [benchlib.machine_line(report["machine"], "loadgen",
                                   "The server and the loadgen processes share the machine."), "",
             f"Asked for {lim['asked']:,} idle connections; held at most {lim['possible']:,}. "
             f"Limit: {lim['reason']}.", "",
             "| idle clients | loadgens | RSS per connection, bytes | kernel slab per socket, bytes "
             "| idle server CPU, ms/s | µs/s per connection | pings in window | µs per ping "
             "| broadcast to all, ms | µs per client | server CPU per broadcast, ms |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def col(rs, key, fmt, scale=1.0):
        values = [r[key] * scale for r in rs if r.get(key) is not None]
        return benchlib.spread(values, fmt)

    for n in steps:
        rs = [r for r in ok if r["clients"] == n]
        if not rs:
            lines.append(f"| {n:,} | failed: {' / '.join(r['error'] or '' for r in records if r['clients'] == n)[:200]} "
                         "| | | | | | | | | |")
            continue
        lines.append(
            f"| {n:,} | {rs[0]['loadgens']} | {col(rs, 'rss_per_conn_bytes', '{:,.0f}')} "
            f"| {col(rs, 'kernel_slab_per_socket_bytes', '{:,.0f}')} "
            f"| {col(rs, 'idle_cpu_ms_per_s', '{:.2f}')} "
            f"| {col(rs, 'idle_cpu_us_per_conn_s', '{:.3f}')} "
            f"| {col(rs, 'pings_in_window', '{:,.0f}')} "
            f"| {col(rs, 'idle_cpu_us_per_ping', '{:.2f}')} "
            f"| {col(rs, 'broadcast_ms', '{:.1f}')} "
            f"| {col(rs, 'broadcast_ms', '{:.2f}', 1000 / n)} "
            f"| {col(rs, 'broadcast_cpu_ms', '{:.1f}')} |")
    lines += ["", f"Idle window {report['args']['idle_window']:g} s (ping interval "
              f"{PING_INTERVAL_S:g} s); broadcast: median of {report['args']['probes']} "
              f"messages of {report['args']['size']} B, the time until the last client had "
              "it; (min-max) over runs where there are several.", ""]
    per_conn = {
        "server RSS, bytes": lambda r: r["rss_per_conn_bytes"],
        "idle server CPU, µs/s": lambda r: r["idle_cpu_us_per_conn_s"],
        "server CPU per broadcast, µs": lambda r: r["broadcast_cpu_ms"] * 1000 / r["clients"],
        "broadcast to all, µs": lambda r: r["broadcast_ms"] * 1000 / r["clients"],
    }
    medians = {label: [statistics.median(value(r) for r in ok if r["clients"] == n)
                       for n in steps if any(r["clients"] == n for r in ok)]
               for label, value in per_conn.items()}
    if any(len(v) > 1 for v in medians.values()):
        lines += ["Linearity, per connection from the smallest step to the largest (medians): "
                  + "; ".join(f"{label} " + " / ".join(f"{v:,.0f}" if v >= 100 else f"{v:.3g}" for v in values)
                              for label, values in medians.items()) + ".", ""]
    fits = report.get("fits") or {}
    if fits:
        lines += ["| extrapolated (least squares over the steps) | per connection "
                  + "".join(f"| {n:,} connections " for n in EXTRAPOLATE) + "|",
                  "|---|---:" + "|---:" * len(EXTRAPOLATE) + "|"]
        names = {"memory_mib": ("server RSS, MiB", "{:,.0f} B"),
                 "kernel_mib": ("kernel slab of the server's sockets, MiB", "{:,.0f} B"),
                 "idle_cpu_ms_per_s": ("idle server CPU, ms per s", "{:.3f} µs/s"),
                 "broadcast_ms": ("broadcast to all, ms", "{:.2f} µs"),
                 "broadcast_cpu_ms": ("server CPU per broadcast, ms", "{:.2f} µs")}
        for key, (label, per_fmt) in names.items():
            f = fits.get(key)
            if not f:
                continue
            per = f["slope"] * (1048576 if key.endswith("_mib") else 1000)
            lines.append(f"| {label} | {per_fmt.format(per)} "
                         + "".join(f"| {f['at'][str(n)]:,.1f} " for n in EXTRAPOLATE) + "|")
        lines.append("")
    failed = [r for r in records if not r["ok"]]
    for r in failed:
        lines.append(f"- failed: {r['clients']:,} clients: {(r['error'] or '')[:300]}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100_000,
                        help="idle connections asked for; the limits may allow fewer")
    parser.add_argument("--steps", type=lambda t: [w.strip() for w in t.split(",") if w.strip()],
                        default=["2500", "5000", "10000", "max"],
                        help="client counts measured, `max` for the most possible")
    parser.add_argument("--runs", type=int, default=1, help="runs of every step, interleaved")
    parser.add_argument("--per-process", type=int, default=10_000,
                        help="clients per loadgen process (each has its own descriptor limit)")
    parser.add_argument("--source-addrs", type=int, default=4,
                        help="loopback source addresses each loadgen spreads its clients over")
    parser.add_argument("--idle-window", type=float, default=32.0,
                        help="seconds of idle CPU measured (at least one ping interval, 15 s)")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds between the last connect and the memory reading")
    parser.add_argument("--probes", type=int, default=5, help="broadcasts timed per step")
    parser.add_argument("--probe-timeout", type=float, default=30.0)
    parser.add_argument("--size", type=int, default=64, help="broadcast message bytes")
    parser.add_argument("--connect-batch", type=int, default=100)
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--summarize", type=Path, metavar="JSON",
                        help="measure nothing: fit and summarize a scale-*.json again")
    args = parser.parse_args(argv)
    if args.summarize:
        return finish(json.loads(args.summarize.read_text()), args.summarize)
    if any(s != "max" and not s.isdigit() for s in args.steps):
        parser.error("--steps: comma-separated counts or `max`")
    if args.idle_window < PING_INTERVAL_S:
        log(f"note: --idle-window {args.idle_window:g} s is shorter than the ping interval "
            f"({PING_INTERVAL_S:g} s): it may miss the pings")
    lim = limits(args.clients, args.source_addrs)
    args.per_process = min(args.per_process, lim["nofile"][0] - FD_MARGIN)
    steps = steps_for(args.steps, lim["possible"])
    log(f"asked {args.clients:,}, possible {lim['possible']:,} ({lim['reason']}); "
        f"steps {steps}")
    if not args.no_build:
        benchlib.cargo_build(["chat", "loadgen"])
    binary = benchlib.target_dir() / "release" / "examples" / "chat"
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"scale-{time.strftime('%Y%m%d-%H%M%S')}.json"
    report = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "machine": benchlib.machine_info({}), "limits": lim, "steps": steps,
              "records": []}
    with tempfile.TemporaryDirectory() as work:
        try:
            for run in range(args.runs):
                for n in steps:
                    record = one_step(binary, n, args, Path(work))
                    record["run"] = run
                    report["records"].append(record)
                    benchlib.save(report, path)
                    if record["ok"]:
                        log(f"run {run + 1}, {n:,} clients: "
                            f"{record['rss_per_conn_bytes']:,.0f} B/conn, "
                            f"idle {record['idle_cpu_ms_per_s']:.2f} ms/s "
                            f"({record['pings_in_window']} pings), "
                            f"broadcast {record['broadcast_ms']:.1f} ms "
                            f"(server CPU {record['broadcast_cpu_ms']:.1f} ms), "
                            f"connected in {record['connect_s']} s")
                    else:
                        log(f"run {run + 1}, {n:,} clients FAILED: {record['error']}")
        except KeyboardInterrupt:
            log("interrupted: writing what was measured so far")

    return finish(report, path)


def fits_of(records: list[dict]) -> dict:
    """The least-squares lines through the steps, and their values at EXTRAPOLATE."""
    fits = {}
    for key, value in {
        "memory_mib": lambda r: (r["rss_kib_connected"] - r["rss_kib_before"]) / 1024,
        "kernel_mib": lambda r: (r["kernel_slab_per_socket_bytes"] * r["clients"] / 1048576
                                 if r.get("kernel_slab_per_socket_bytes") is not None else None),
        "idle_cpu_ms_per_s": lambda r: r["idle_cpu_ms_per_s"],
        "broadcast_ms": lambda r: r["broadcast_ms"],
        "broadcast_cpu_ms": lambda r: r["broadcast_cpu_ms"],
    }.items():
        points = [(r["clients"], value(r)) for r in records if r["ok"]]
        line = fit([(x, y) for x, y in points if y is not None])
        if line:
            a, b = line
            fits[key] = {"intercept": a, "slope": b,
                         "at": {str(n): a + b * n for n in EXTRAPOLATE}}
    return fits


def finish(report: dict, path: Path) -> int:
    """Fits, summary, the JSON written; the exit status."""
    ok = [r for r in report["records"] if r["ok"]]
    report["fits"] = fits_of(report["records"])
    text = summary(report)
    report["summary"] = text
    benchlib.save(report, path)
    print(text)
    log(f"wrote {path}")
    return 0 if ok and len(ok) == len(report["records"]) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
