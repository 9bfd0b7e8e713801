#!/usr/bin/env python3
"""Fan-out of this tree's chat against the chat of another revision, interleaved in one run.

    python3 bench/fanout_ab.py --baseline-rev 70729c6              # ~10 min, builds aside
    python3 bench/fanout_ab.py --baseline-rev 70729c6 --baseline-tree ../base \
        --baseline-target ../target-base                             # build in a checkout of REV

The chat example (`--no-notices`) of this tree and of REV, started fresh on port 0 for every
measurement, in the order base, this tree, base, this tree, ... (run 1 of every scenario,
then run 2, ...), each loaded by this tree's `examples/loadgen.rs` at N clients, one sender
with 50 broadcasts in flight, for 8 s:

- plain, 64 B and 4 KiB (the fan-out scenarios of density.py and tls.py);
- permessage-deflate, 4 KiB of chat-like JSON (`--json --deflate`: the clients offer
  compression, as in compression.py's fan-out scenario).

Deliveries/s and server CPU seconds per million deliveries, their medians, and this tree's
over the base's. On a shared machine only the ratios within one run mean much.
Output: a Markdown summary on stdout and `bench/results/fanout-ab-<timestamp>.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib
from benchlib import ROOT, log, spread
from density import Server, build_baseline, loadgen

# (label, message size, extra loadgen flags)
SCENARIOS = [
    ("plain, 64 B", 64, []),
    ("plain, 4 KiB", 4096, []),
    ("permessage-deflate, 4 KiB JSON", 4096, ["--json", "--deflate"]),
]


def build_in_tree(rev: str, tree: Path, target: Path) -> Path:
    """The chat example of `tree`, an existing checkout that must be at `rev`."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, check=True,
                          capture_output=True, text=True).stdout.strip()
    want = subprocess.run(["git", "rev-parse", rev], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout.strip()
    if head != want:
        sys.exit(f"{tree} is at {head[:10]}, not at {rev} ({want[:10]})")
    log(f"building the chat example of {rev} in {tree}")
    subprocess.run(["cargo", "build", "--release", "--example", "chat"], cwd=tree, check=True,
                   env={**os.environ, "CARGO_TARGET_DIR": str(target)})
    return target / "release" / "examples" / "chat"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-rev", required=True, help="the chat of this git revision")
    parser.add_argument("--baseline-target", type=Path,
                        help="cargo target directory for the baseline (default: a temporary one)")
    parser.add_argument("--baseline-tree", type=Path,
                        help="an existing checkout of the revision to build in "
                             "(default: a temporary worktree)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    benchlib.raise_nofile_limit()
    benchlib.cargo_build(["chat", "loadgen"])
    examples = benchlib.target_dir() / "release" / "examples"
    base_name, main_name = f"chat@{args.baseline_rev}", "chat"
    records: list[dict] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        target = args.baseline_target or work / "target"
        temporary_tree = args.baseline_tree is None
        try:
            if temporary_tree:
                base_binary = build_baseline(args.baseline_rev, work, target)
            else:
                base_binary = build_in_tree(args.baseline_rev, args.baseline_tree, target)
            servers = [(base_name, base_binary), (main_name, examples / "chat")]
            for run in range(args.runs):
                for label, size, extra in SCENARIOS:
                    for name, binary in servers:
                        server = Server(binary, ["--no-notices"], work)
                        try:
                            flags = ["--clients", str(args.clients), "--senders", "1",
                                     "--window", "50", "--size", str(size),
                                     "--duration", f"{args.duration:g}", *extra]
                            result = loadgen(server, "/api/Chat", flags, 300)
                        finally:
                            server.stop()
                        if "--deflate" in extra and result.get("deflate_agreed") != args.clients:
                            log(f"warning: {name} agreed deflate with "
                                f"{result.get('deflate_agreed')} of {args.clients} clients")
                        log(f"run {run + 1} {label} {name}: "
                            f"{result['deliveries_per_s']:,.0f}/s, "
                            f"{result.get('cpu_s_per_million')} s/M "
                            f"({time.monotonic() - started:.0f} s)")
                        records.append({"run": run + 1, "scenario": label, "server": name,
                                        "result": result})
        finally:
            if temporary_tree:
                subprocess.run(["git", "worktree", "remove", "--force", str(work / "baseline")],
                               cwd=ROOT, capture_output=True)

    def values(label: str, name: str, key: str) -> list[float]:
        return [float(r["result"][key]) for r in records
                if r["scenario"] == label and r["server"] == name
                and r["result"].get(key) is not None]

    def ratio(label: str, key: str) -> float | None:
        a, b = values(label, main_name, key), values(label, base_name, key)
        return statistics.median(a) / statistics.median(b) if a and b else None

    lines = [benchlib.machine_line(benchlib.machine_info({}), "loadgen", "shared"), "",
             f"N = {args.clients}, 1 sender, window 50, {args.runs} runs, medians (min-max), "
             f"interleaved {base_name}, {main_name}, ...", "",
             f"| scenario | deliveries/s {base_name} | deliveries/s {main_name} | ratio | "
             f"CPU s/M {base_name} | CPU s/M {main_name} | ratio |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label, _, _ in SCENARIOS:
        lines.append(
            f"| {label} | {spread(values(label, base_name, 'deliveries_per_s'), '{:,.0f}')} | "
            f"{spread(values(label, main_name, 'deliveries_per_s'), '{:,.0f}')} | "
            f"{benchlib.ratio(ratio(label, 'deliveries_per_s'))} | "
            f"{spread(values(label, base_name, 'cpu_s_per_million'), '{:.2f}')} | "
            f"{spread(values(label, main_name, 'cpu_s_per_million'), '{:.2f}')} | "
            f"{benchlib.ratio(ratio(label, 'cpu_s_per_million'))} |")
    summary = "\n".join(lines)
    print(summary)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"fanout-ab-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"records": records, "summary": summary}, indent=1))
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
