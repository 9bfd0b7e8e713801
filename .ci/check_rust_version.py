#!/usr/bin/env python3
"""Checks that Cargo.toml's `rust-version` is at least what the locked dependencies of the
library (every feature, no dev-dependencies) declare, from `cargo metadata`: no toolchain
download needed. Exits 1 with the dependencies that need more."""

import json
import subprocess
import sys


def version(text):
    return tuple(int(part) for part in text.split("."))[:3] + (0,) * (3 - len(text.split(".")))


def main():
    metadata = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--all-features", "--locked"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    packages = {package["id"]: package for package in metadata["packages"]}
    nodes = {node["id"]: node for node in metadata["resolve"]["nodes"]}
    root = metadata["resolve"]["root"]
    ours = packages[root].get("rust_version")
    if not ours:
        sys.exit("Cargo.toml declares no rust-version")
    # The library's dependencies: normal and build edges only, from the root down.
    seen, stack = set(), [root]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        for dep in nodes[current]["deps"]:
            if any(kind["kind"] in (None, "build") for kind in dep["dep_kinds"]):
                stack.append(dep["pkg"])
    needing_more = sorted(
        (packages[id]["name"], packages[id]["version"], packages[id]["rust_version"])
        for id in seen
        if packages[id].get("rust_version")
        and version(packages[id]["rust_version"]) > version(ours)
    )
    if needing_more:
        for name, locked, needs in needing_more:
            print(f"{name} {locked} needs Rust {needs}", file=sys.stderr)
        sys.exit(f"rust-version = {ours} in Cargo.toml is below what the locked dependencies need")
    highest = max(
        (packages[id]["rust_version"] for id in seen if packages[id].get("rust_version")),
        key=version,
    )
    print(f"rust-version {ours}: the locked dependencies need at most {highest}")


if __name__ == "__main__":
    main()
