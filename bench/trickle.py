#!/usr/bin/env python3
"""Hostile clients trickling messages they never finish, against the chat example: the
server's RSS while they are at it and after they are gone.

    python3 bench/trickle.py                         # 500 and 2000 attackers, 45 s each
    python3 bench/trickle.py --clients 500 --seconds 60 --baseline-rev 565acce

Each attacker does what RFC 6455 allows and nothing ends: it opens a WebSocket, sends the
first fragment of a text message (59,000 bytes, FIN clear), then a one-byte continuation
every second, and answers every ping. The server's RSS is read before, every second
during the attack (the peak is reported, and the value once every attacker has either been
dropped or is still holding on), and after all attackers have closed. With
`--baseline-rev`, the chat example of that git revision (built in a temporary worktree) is
measured the same way in the same run, interleaved.

Python 3.11 standard library only; builds the chat example itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib
from benchlib import ROOT, ServerOutput, log

FIRST_FRAGMENT = 59_000
HANDSHAKE = ("GET /api/Chat?username=t{n} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\n"
             "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
MASK = bytes([0x12, 0x34, 0x56, 0x78])


def frame(fin: bool, opcode: int, payload: bytes) -> bytes:
    """A masked client frame."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


class Chat(ServerOutput):
    def __init__(self, binary: Path, log_dir: Path):
        self.stderr = tempfile.TemporaryFile(mode="w+b", dir=log_dir)
        self.proc = subprocess.Popen([str(binary), "--addr", "127.0.0.1:0", "--no-notices"],
                                     cwd=ROOT, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=self.stderr)
        addr, seen = self.read_address(timeout=15.0)
        if addr is None:
            benchlib.terminate(self.proc)
            raise RuntimeError(f"the chat did not start: {seen!r} {self.stderr_tail()!r}")
        self.addr = addr
        self.drain_stdout()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def attacker(n: int, host: str, port: int, stop: asyncio.Event, alive: list[int]) -> None:
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return
    counted = False
    try:
        writer.write(HANDSHAKE.format(n=n, host=host).encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            return
        writer.write(frame(False, 0x1, b"x" * FIRST_FRAGMENT))
        alive[0] += 1
        counted = True

        async def answer_pings() -> None:
            buffer = b""
            while True:
                chunk = await reader.read(4096)
                if not chunk:
                    return
                buffer += chunk
                while len(buffer) >= 2:
                    length = buffer[1] & 0x7F
                    start = 2 + {126: 2, 127: 8}.get(length, 0)
                    if len(buffer) < start:
                        break
                    if length == 126:
                        length = int.from_bytes(buffer[2:4], "big")
                    elif length == 127:
                        length = int.from_bytes(buffer[2:10], "big")
                    if len(buffer) < start + length:
                        break
                    opcode, payload = buffer[0] & 0x0F, buffer[start:start + length]
                    buffer = buffer[start + length:]
                    if opcode == 0x9:
                        writer.write(frame(True, 0xA, payload))
                    elif opcode == 0x8:
                        return

        pings = asyncio.create_task(answer_pings())
        while not stop.is_set() and not pings.done():
            writer.write(frame(False, 0x0, b"y"))
            try:
                await asyncio.wait_for(writer.drain(), 5)
            except (OSError, asyncio.TimeoutError):
                break
            await asyncio.sleep(1.0)
        pings.cancel()
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        pass
    finally:
        if counted:
            alive[0] -= 1
        writer.close()


async def attack(chat: Chat, clients: int, seconds: float) -> dict:
    host, port = chat.addr.rsplit(":", 1)
    before = rss_kib(chat.pid)
    stop = asyncio.Event()
    alive = [0]
    tasks = []
    for n in range(clients):
        tasks.append(asyncio.create_task(attacker(n, host, int(port), stop, alive)))
        if n % 100 == 99:
            await asyncio.sleep(0.05)
    samples = []
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        await asyncio.sleep(1.0)
        samples.append((round(time.monotonic() - started, 1), rss_kib(chat.pid), alive[0]))
    at_end = rss_kib(chat.pid)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    # The server lets the attackers' sockets go, then may give memory back.
    await asyncio.sleep(8.0)
    after = rss_kib(chat.pid)
    peak = max(rss for _, rss, _ in samples)
    return {"clients": clients, "rss_before_kib": before, "rss_peak_kib": peak,
            "rss_end_of_attack_kib": at_end, "rss_after_kib": after,
            "attackers_holding_at_end": samples[-1][2] if samples else 0,
            "held_per_attacker_kib": (peak - before) / clients,
            "samples": samples}


def build_baseline(rev: str, work: Path) -> Path:
    tree = work / "baseline"
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=ROOT, check=True,
                   capture_output=True)
    log(f"building the chat example of {rev} in {tree}")
    subprocess.run(["cargo", "build", "--release", "--example", "chat"], cwd=tree, check=True,
                   env={**os.environ, "CARGO_TARGET_DIR": str(work / "target")})
    return work / "target" / "release" / "examples" / "chat"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=benchlib.int_list, default=[500, 2000])
    parser.add_argument("--seconds", type=float, default=45.0)
    parser.add_argument("--baseline-rev", help="also measure the chat of this git revision")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    benchlib.raise_nofile_limit()
    benchlib.cargo_build(["chat"])
    args.out.mkdir(parents=True, exist_ok=True)
    servers = {"chat": benchlib.target_dir() / "release" / "examples" / "chat"}
    records = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        if args.baseline_rev:
            servers[f"chat@{args.baseline_rev}"] = build_baseline(args.baseline_rev, work)
        try:
            for clients in args.clients:
                for name, binary in servers.items():
                    log(f"{name}: {clients} attackers for {args.seconds:g} s")
                    chat = Chat(binary, work)
                    try:
                        record = asyncio.run(attack(chat, clients, args.seconds))
                    finally:
                        benchlib.terminate(chat.proc)
                        chat.stderr.close()
                    record["server"] = name
                    log(f"  peak {record['rss_peak_kib'] / 1024:.1f} MiB "
                        f"({record['held_per_attacker_kib']:.1f} KiB each), "
                        f"{record['attackers_holding_at_end']} still holding at the end, "
                        f"{record['rss_after_kib'] / 1024:.1f} MiB after")
                    records.append(record)
        finally:
            if args.baseline_rev:
                subprocess.run(["git", "worktree", "remove", "--force", str(work / "baseline")],
                               cwd=ROOT, capture_output=True)
    lines = [f"{args.seconds:g} s of attack ({benchlib.machine_line(benchlib.machine_info({}), 'python attackers', 'shared')})",
             "", "| server | attackers | RSS before | peak RSS | per attacker | still holding at the end | RSS after they left |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in records:
        lines.append(f"| {r['server']} | {r['clients']} | {r['rss_before_kib'] / 1024:.1f} MiB | "
                     f"{r['rss_peak_kib'] / 1024:.1f} MiB | {r['held_per_attacker_kib']:.1f} KiB | "
                     f"{r['attackers_holding_at_end']} | {r['rss_after_kib'] / 1024:.1f} MiB |")
    summary = "\n".join(lines)
    print(summary)
    benchlib.save({"records": records, "summary": summary},
                  args.out / f"trickle-{time.strftime('%Y%m%d-%H%M%S')}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
