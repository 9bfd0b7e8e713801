"""What the benchmark scripts in bench/ (compare.py, density.py, scale.py, backplane.py...)
share, so that they record the machine, build, start and stop servers (the uWebSockets peer
too), read loadgen and report in one way.

The scripts run as `python3 bench/<script>.py`, which puts this directory on sys.path.
Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import resource
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Callable

ROOT = Path(__file__).resolve().parent.parent
# The line every chat server (the example, the baselines) prints once it listens.
READY_LINE = re.compile(r"Chat server running\. Open https?://(\S+)/chat\.htm")
# The line examples/signalr_chat prints once it listens.
SIGNALR_READY = re.compile(r"listening on http://(\S+?)/ \(hub at")
# The uWebSockets chat of ../shared/peers/uws-chat (the peer issue 30 measures against):
# where it is, the name the summaries give it, and the line it prints once it listens.
UWS_DEFAULT = ROOT.parent / "shared" / "peers" / "uws-chat"
UWS_NAME = "uWebSockets"
UWS_READY = re.compile(r"uws-chat listening on ws://([^/\s]+)")


def log(message: str) -> None:
    """Progress goes to stderr, so that stdout carries only the summary."""
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- arguments


def int_list(text: str, allow_empty: bool = False, positive: bool = False) -> list[int]:
    """Comma-separated integers for argparse, none negative (none zero when `positive`)."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers: {error}")
    minimum = 1 if positive else 0
    if (not values and not allow_empty) or any(v < minimum for v in values):
        raise argparse.ArgumentTypeError(
            f"expected {'positive' if positive else 'non-negative'} comma-separated integers"
        )
    return values


def name_list(choices: list[str], noun: str) -> Callable[[str], list[str]]:
    """An argparse type for a comma-separated selection from `choices`, kept in the order
    given, since that is the order in which the runs interleave."""

    def parse(text: str) -> list[str]:
        names = [part.strip() for part in text.split(",") if part.strip()]
        unknown = [name for name in names if name not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {noun}(s) {unknown}; choose from {','.join(choices)}"
            )
        return names

    return parse


# ---------------------------------------------------------------- environment


def raise_nofile_limit() -> tuple[int, int]:
    """Raise this process's (and so its children's) open-file limit to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as error:
            log(f"note: could not raise RLIMIT_NOFILE to {target}: {error}")
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def command_output(cmd: list[str]) -> str | None:
    """A command's stdout, or None when it is missing or fails: the facts are optional."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def machine_info(versions: dict[str, list[str]]) -> dict:
    """What the numbers depend on; `versions` names the commands that print the versions
    of the script's own tools (node, redis-server), recorded after rustc's."""
    info: dict = {
        "nproc": os.cpu_count(),
        "cpu_model": None,
        "mem_total_kib": None,
        "kernel": platform.release(),
        "rustc": command_output(["rustc", "--version"]),
        **{name: command_output(cmd) for name, cmd in versions.items()},
        "python": platform.python_version(),
        "git_commit": command_output(["git", "rev-parse", "HEAD"]),
        "git_dirty": bool(command_output(["git", "status", "--porcelain"])),
        "nofile_limit": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
    }
    try:
        info["nproc"] = int(command_output(["nproc"]) or info["nproc"])
    except (TypeError, ValueError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["mem_total_kib"] = int(line.split()[1])
                break
    except (OSError, ValueError, IndexError):
        pass
    return info


def machine_line(machine: dict, tools: str, sharing: str) -> str:
    """The summary's sentence on machine_info(): `tools` names the script's own tool
    versions and `sharing` says what ran beside the servers."""
    return (
        f"{machine.get('cpu_model') or '?'}, {machine.get('nproc')} CPUs, "
        f"{(machine.get('mem_total_kib') or 0) / 1048576:.1f} GiB, Linux {machine.get('kernel')}, "
        f"{machine.get('rustc') or 'rustc ?'}, {tools}; "
        f"commit {(machine.get('git_commit') or '?')[:10]}"
        f"{' (dirty)' if machine.get('git_dirty') else ''}. {sharing}"
    )


def target_dir() -> Path:
    """Where cargo puts the binaries, honouring CARGO_TARGET_DIR as cargo does."""
    configured = os.environ.get("CARGO_TARGET_DIR")
    return Path(configured) if configured else ROOT / "target"


def cargo_build(examples: list[str], features: list[str] | None = None) -> None:
    """cargo build --release of the examples; a failed build ends the script."""
    cmd = ["cargo", "build", "--release"]
    if features:
        cmd += ["--features", ",".join(features)]
    for example in examples:
        cmd += ["--example", example]
    log("$ " + " ".join(cmd))
    done = subprocess.run(cmd, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"cargo build failed (exit {done.returncode})")


# ---------------------------------------------------------------- servers


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now (for servers that take no port 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def build_uws(source: Path, out: Path) -> Path | None:
    """The uWebSockets chat built by its own build.sh into `out` (once per run), or None,
    said why on stderr, when its sources are not there or it does not build."""
    script = source / "build.sh"
    if not script.is_file():
        log(f"NOTICE: uWebSockets: no {script}; measuring without it")
        return None
    log(f"building the uWebSockets chat of {source} into {out}")
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["bash", str(script)], env={**os.environ, "OUT": str(out)},
                          capture_output=True, text=True)
    binary = out / "uws-chat"
    if done.returncode != 0 or not binary.is_file():
        log(f"NOTICE: uWebSockets: build.sh failed ({done.returncode}); measuring without it: "
            f"{done.stderr[-400:]}")
        return None
    return binary


def uws_command(binary: Path) -> list[str]:
    """The uWebSockets chat on a free port, one thread (its normal mode: with more, each
    thread has its own topic tree and a broadcast reaches one thread's clients only). It
    takes no port 0, but prints the port it listens on (UWS_READY)."""
    return [str(binary), str(free_port()), "1"]


def terminate(proc: subprocess.Popen, grace: float = 3.0) -> int | None:
    """SIGTERM, then SIGKILL after `grace` s; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


class ServerOutput:
    """Reading a started server: its address from READY_LINE on stdout (a pipe), its stderr
    from a temporary file. Subclasses set `proc` and `stderr`, and decide what a server that
    never announces itself means."""

    proc: subprocess.Popen
    stderr: IO[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read_address(self, timeout: float) -> tuple[str | None, bytes]:
        """The announced address, or None if stdout ends or `timeout` s pass first; with the
        stdout read so far, for the error message."""
        assert self.proc.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        seen = b""
        try:
            while time.monotonic() < deadline:
                if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                    continue
                line = self.proc.stdout.readline()
                if not line:
                    break
                seen += line
                text = line.decode("utf-8", "replace")
                match = READY_LINE.search(text) or UWS_READY.search(text)
                if match:
                    return match.group(1), seen
        finally:
            selector.close()
        return None, seen

    def drain_stdout(self) -> None:
        """Keep reading stdout in a thread, so a chatty server never blocks on a full pipe."""
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        try:
            while self.proc.stdout.read(65536):
                pass
        except (OSError, ValueError):
            pass

    def stderr_text(self) -> str:
        self.stderr.flush()
        self.stderr.seek(0)
        return self.stderr.read().decode("utf-8", "replace")

    def stderr_tail(self, chars: int = 400) -> str:
        return self.stderr_text()[-chars:]


# ---------------------------------------------------------------- loadgen


def loadgen_flags(args: argparse.Namespace, clients: int, rate: int, size: int,
                  duration: float, warmup: float) -> list[str]:
    """The flags that shape the load, in one order, so that recorded commands compare."""
    return [
        "--clients", str(clients),
        "--senders", str(min(args.senders, clients)),
        "--rate", str(rate),
        "--window", str(args.window),
        "--size", str(size),
        "--duration", f"{duration:g}",
        "--warmup", f"{warmup:g}",
        "--connect-batch", str(args.connect_batch),
    ]


def loadgen_timeout(args: argparse.Namespace, clients: int, warmup: float,
                    duration: float) -> float:
    """--timeout, or the run's length with room to spare: connecting is the slow,
    client-count-dependent part, so ~3 ms per client on top."""
    if args.timeout:
        return args.timeout
    return 30.0 + warmup + duration + clients / 1000.0 * 3.0


def last_json(stdout: str) -> dict | None:
    """loadgen's result: the last line of its stdout that parses as JSON."""
    for line in reversed(stdout.splitlines()):
        if line.strip().startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def record_loadgen(record: dict, result: dict | None, code: int | None, stderr: str) -> None:
    """Stores loadgen's result in the run record; the run is ok only with a result and
    exit status 0."""
    record["loadgen"] = result
    if result is None:
        record["error"] = f"no JSON from loadgen (exit {code}): {stderr.strip()[-400:]}"
    elif code != 0:
        record["error"] = f"loadgen exit {code}: {stderr.strip()[-400:]}"
    else:
        record["ok"] = True


# ---------------------------------------------------------------- aggregates


def summarize(records: list[dict], metrics: dict, flatten: Callable[[dict], dict]) -> dict:
    """Run counts, and median, min, max and n of each metric over the records.  Failed runs
    still count if loadgen reported numbers; their errors are listed."""
    entry = {"runs": len(records), "ok_runs": sum(r["ok"] for r in records)}
    flat = [flatten(r) for r in records]
    for metric in metrics:
        values = [v for v in (m[metric] for m in flat)
                  if isinstance(v, (int, float)) and math.isfinite(v)]
        entry[metric] = ({"median": statistics.median(values), "min": min(values),
                          "max": max(values), "n": len(values)} if values else None)
    return entry


def fit(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """Least squares y = a + b x: (a, b), or None with fewer than two distinct x."""
    if len({x for x, _ in points}) < 2:
        return None
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx
    return my - b * mx, b


def median_ratios(a: dict, b: dict, metrics: dict) -> dict[str, float | None]:
    """a's median over b's, metric by metric: the comparison within one run that holds up
    on a shared machine (None where either is missing or b's is 0)."""
    out: dict[str, float | None] = {}
    for metric in metrics:
        x, y = a.get(metric), b.get(metric)
        out[metric] = x["median"] / y["median"] if x and y and y["median"] else None
    return out


# ---------------------------------------------------------------- formatting


def spread(values: list[float], fmt: str) -> str:
    """The median of `values` in `fmt`, with (min-max) when there are several; - for none."""
    if not values:
        return "-"
    text = fmt.format(statistics.median(values))
    if len(values) > 1:
        text += f" ({fmt.format(min(values))}-{fmt.format(max(values))})"
    return text


def si(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    value = float(f"{value:.{digits}g}")  # round first, so 999.96k shows as 1M
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.{digits}g}{suffix}"
    return f"{value:.{digits}g}"


def fmt_stat(stat: dict | None, fmt, spread: bool = True, equal_spread: bool = False) -> str:
    """The median, and (min–max) over several runs unless both ends format alike;
    `equal_spread` shows it then too, as compare.py's tables always have."""
    if not stat:
        return "–"
    text = fmt(stat["median"])
    low, high = fmt(stat["min"]), fmt(stat["max"])
    if spread and stat["n"] > 1 and (equal_spread or low != high):
        text += f" ({low}–{high})"
    return text


def ms(us: float) -> str:
    return f"{us / 1000:.2f}" if us < 100_000 else f"{us / 1000:.0f}"


def ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def save(report: dict, path: Path) -> None:
    """Write through a temporary file, so an interrupted run never leaves half a JSON."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(path)
