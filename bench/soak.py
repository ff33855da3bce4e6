"""`make soak`: a million calls through the plugin lane, looking for leaks.

    .venv/bin/python bench/soak.py [--calls 1000000] [--warmup 100000] [--quick]
                                   [--isolation in-process|process] [--no-save]

Starts a real server (`server.engine: lane`) over the C test kit built as `echo` (it
copies every request field into its answer, so each call marshals headers, params
and a body) and the Rust weather plugin, and drives it over loopback with keep-alive
connections (wrk, or bench/loadgen.py's closed loop without it), half the calls to
each plugin. After the warm-up it reads the resident memory, open file descriptors
and threads of the server's process tree (its worker processes too, under
`isolation: process`), then again half-way and at the end. A leak of one response
per call would show as megabytes. The targets (issue 13): RSS growth under 2% and
no fd or thread growth, judged over the second half (pools and caches may still
fill during the first, a per-call leak grows just as much in the second). Exit 1
when a target is missed. `--quick`: 100,000 calls after 20,000. The figures are kept
as JSON under bench/results/ (soak-*.json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import load
import yaml
from cpu import pinned, placement, tree
from report import machine
from servers import PLUGINS, REPO, ensure_example_plugins, free_port

from backworks.abi import include_dir

RSS_GROWTH_TARGET = 0.02
RESULTS = REPO / "bench" / "results"


def build_echo(folder: Path) -> None:
    """Compiles the echo plugin into `folder` and copies the weather plugin beside it."""
    subprocess.run(
        [os.environ.get("CC", "cc"), "-std=c99", "-O2", "-shared", "-fPIC", f"-I{include_dir()}",
         '-DKIT_NAME="echo"', "-DKIT_FLAGS=(BW_FLAG_THREAD_SAFE|BW_FLAG_NONBLOCKING)",
         "-o", str(folder / "libecho.so"), str(REPO / "tests" / "plugins" / "testkit.c")],
        check=True,
    )  # fmt: skip
    for lib in PLUGINS.glob("libweather_plugin.*"):
        (folder / lib.name).write_bytes(lib.read_bytes())
    for lib in folder.iterdir():
        lib.chmod(0o755)


def usage(root: int) -> dict[str, int]:
    """RSS, open file descriptors and threads of `root`'s process tree now."""
    total = {"rss_kb": 0, "fds": 0, "threads": 0}
    for pid in tree(root):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            fds = sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue  # it went away while we looked
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        total["rss_kb"] += int(fields["VmRSS"].split()[0])
        total["threads"] += int(fields["Threads"])
        total["fds"] += fds
    return total


def calls_so_far(base: str) -> int:
    """The plugin calls the server has counted so far (its state API)."""
    with urllib.request.urlopen(f"{base}/_backworks/plugins", timeout=10) as resp:  # noqa: S310
        rows = json.loads(resp.read())["plugins"]
    return sum(int(r.get("counters", {}).get("calls", 0)) for r in rows)


def drive(base: str, until: int, wrk: str | None, cpus: frozenset[int] | None) -> None:
    """Keep-alive load in bursts of 1-5 s, alternating plugins, until the server counted
    `until` calls (each burst sized from the last one's rate, so it stops near `until`)."""
    paths = ["/echo/item-7?colour=blue", "/weather/london"]
    burst, rate = 0, 0.0
    while (left := until - calls_so_far(base)) > 0:
        seconds = min(5.0, max(1.0, left / rate)) if rate else 1.0
        result = load.closed_loop(f"{base}{paths[burst % 2]}", seconds, 32, wrk, cpus)
        if result.errors:
            msg = f"{result.errors} failed answers during the soak"
            raise RuntimeError(msg)
        burst, rate = burst + 1, result.rate


def config(folder: Path, port: int, isolation: str) -> dict[str, Any]:
    """The soak server's config: echo and weather on the lane, access logs off."""
    settings: dict[str, Any] = {"isolation": isolation}
    route = {"method": "GET"}
    return {
        "plugin_discovery": {"directories": [str(folder)]},
        "plugins": {"echo": settings, "weather": {**settings, "config": {"api_key": "soak"}}},
        "endpoints": {
            "/echo/{item}": {**route, "runtime": {"type": "plugin", "handler": "echo"}},
            "/weather/{city}": {**route, "runtime": {"type": "plugin", "handler": "weather"}},
        },
        "server": {"port": port, "engine": "lane"},
        "logging": {"level": "warning", "format": "json"},
    }


def report(
    isolation: str, done: int, warm: int, seconds: float, samples: list[dict[str, int]]
) -> dict[str, Any]:
    """Prints the soak's table and verdict; returns them as a record (`passed`: all met)."""
    before, middle, after = samples
    growth = (after["rss_kb"] - middle["rss_kb"]) / middle["rss_kb"]
    ok_rss = growth < RSS_GROWTH_TARGET
    ok = {key: after[key] <= middle[key] for key in ("fds", "threads")}
    print(f"## Soak through the lane ({isolation}): {done:,} calls after {warm:,} warm-up "
          f"calls, {seconds:.0f} s\n")  # fmt: skip
    print("| | after warm-up | half-way | at the end | growth, 2nd half | target | verdict |")
    print("|---|---:|---:|---:|---:|---:|---|")
    print(
        f"| RSS | {before['rss_kb']:,} KiB | {middle['rss_kb']:,} KiB | {after['rss_kb']:,} KiB "
        f"| {growth:+.2%} | < {RSS_GROWTH_TARGET:.0%} | {'met' if ok_rss else '**missed**'} |"
    )
    for key in ("fds", "threads"):
        print(
            f"| {key} | {before[key]} | {middle[key]} | {after[key]} "
            f"| {after[key] - middle[key]:+d} | 0 | {'met' if ok[key] else '**missed**'} |"
        )
    passed = ok_rss and all(ok.values())
    print(f"\nverdict: {'no leak' if passed else 'LEAK SUSPECTED'}")
    return {
        "isolation": isolation, "calls": done, "warmup_calls": warm, "seconds": seconds,
        "after_warmup": before, "half_way": middle, "at_the_end": after,
        "rss_growth": growth, "passed": passed,
    }  # fmt: skip


def main() -> int:
    """`make soak`: a million calls through the lane, RSS and fd/thread counts watched."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--warmup", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="100,000 calls after 20,000")
    parser.add_argument("--isolation", choices=("in-process", "process"), default="in-process")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    args = parser.parse_args()
    if args.quick:
        args.calls, args.warmup = 100_000, 20_000
    ensure_example_plugins()
    wrk = load.ensure_wrk()
    place = placement()
    with tempfile.TemporaryDirectory(prefix="bw-soak-") as tmp:
        folder = Path(tmp) / "plugins"
        folder.mkdir(mode=0o755)
        build_echo(folder)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        path = Path(tmp) / "soak.yaml"
        path.write_text(yaml.safe_dump(config(folder, port, args.isolation)))
        server = subprocess.Popen(
            [sys.executable, "-m", "backworks", "serve", "--config", str(path)],
            env={**os.environ, "BACKWORKS_CACHE_DIR": str(Path(tmp) / "cache")},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=pinned(place.server),
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    calls_so_far(base)
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise
                    time.sleep(0.2)
            started = time.monotonic()
            drive(base, args.warmup, wrk, place.load)
            samples = [usage(server.pid)]
            warm = calls_so_far(base)
            drive(base, warm + args.calls // 2, wrk, place.load)
            samples.append(usage(server.pid))
            drive(base, warm + args.calls, wrk, place.load)
            samples.append(usage(server.pid))
            done = calls_so_far(base) - warm
        finally:
            server.terminate()
            server.wait(timeout=30)
    record = report(args.isolation, done, warm, time.monotonic() - started, samples)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
        out = RESULTS / f"soak-{stamp}.json"
        out.write_text(json.dumps({"machine": machine(), **record}, indent=2))
        print(f"\n(saved {out.relative_to(REPO)})")
    return 0 if record["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
