"""`make soak`: a million calls through the echo and weather plugins, looking for leaks.

    .venv/bin/python bench/soak.py [--calls 1000000] [--warmup 50000] [--isolation in-process]

Starts a real server with the C test kit built as `echo` (it copies every request field
into its answer, so each call marshals headers, params and a body) and the Rust weather
plugin, warms up, then reads the server's resident memory, open file descriptors and
threads, drives the calls with wrk (half to each plugin), and reads them again. A leak
of one response per call would show as megabytes; the verdict allows 2% of RSS growth
over the second half of the calls and none in descriptors or threads (pools and
caches may still fill during the first half). Exit 1 when the verdict fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import REPO, ensure_plugins, ensure_wrk, free_port

from backworks.abi import include_dir


def build_echo(folder: Path) -> None:
    """Compiles the echo plugin used by the soak into `folder`."""
    subprocess.run(
        [os.environ.get("CC", "cc"), "-std=c99", "-O2", "-shared", "-fPIC", f"-I{include_dir()}",
         '-DKIT_NAME="echo"', "-DKIT_FLAGS=(BW_FLAG_THREAD_SAFE|BW_FLAG_NONBLOCKING)",
         "-o", str(folder / "libecho.so"), str(REPO / "tests" / "plugins" / "testkit.c")],
        check=True,
    )  # fmt: skip
    for lib in (REPO / "plugins").glob("libweather_plugin.*"):
        (folder / lib.name).write_bytes(lib.read_bytes())
    for lib in folder.iterdir():
        lib.chmod(0o755)


def usage(pid: int) -> dict[str, int]:
    """RSS, file descriptors and threads of process `pid` now."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_kb": int(fields["VmRSS"].split()[0]),
        "fds": sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir()),
        "threads": int(fields["Threads"]),
    }


def calls_so_far(url: str) -> int:
    """The plugin calls the server has counted so far (from /metrics)."""
    with urllib.request.urlopen(f"{url}/_backworks/plugins", timeout=10) as resp:  # noqa: S310
        rows = json.loads(resp.read())["plugins"]
    return sum(int(r.get("counters", {}).get("calls", 0)) for r in rows)


def drive(wrk: str, url: str, until: int, base: str) -> None:
    """wrk in 5 s bursts, alternating plugins, until the servers' call counter passes `until`."""
    paths = ["/echo/item-7?colour=blue", "/weather/london"]
    burst = 0
    while calls_so_far(base) < until:
        target = f"{url}{paths[burst % 2]}"
        subprocess.run([wrk, "-t1", "-c32", "-d5s", "-H", "x-soak: yes", target],
                       check=True, capture_output=True)  # fmt: skip
        burst += 1


def main() -> int:
    """`make soak`: a million calls, RSS and fd/thread counts watched for growth."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--warmup", type=int, default=100_000)
    parser.add_argument("--isolation", choices=("in-process", "process"), default="in-process")
    args = parser.parse_args()
    ensure_plugins()
    wrk = ensure_wrk()
    if wrk is None:
        print("soak: needs wrk to drive a million calls in reasonable time", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "plugins"
        folder.mkdir()
        build_echo(folder)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        settings: dict[str, Any] = {"isolation": args.isolation}
        config = {
            "plugin_discovery": {"directories": [str(folder)]},
            "plugins": {
                "echo": settings,
                "weather": {**settings, "config": {"api_key": "soak"}},
            },
            "endpoints": {
                "/echo/{item}": {"method": "GET", "runtime": {"type": "plugin", "handler": "echo"}},
                "/weather/{city}": {
                    "method": "GET",
                    "runtime": {"type": "plugin", "handler": "weather"},
                },
            },
            "server": {"port": port},
            "logging": {"level": "warning", "format": "json"},
        }
        path = Path(tmp) / "soak.yaml"
        path.write_text(yaml.safe_dump(config))
        server = subprocess.Popen(
            [sys.executable, "-m", "backworks", "serve", "--config", str(path)],
            env={**os.environ, "BACKWORKS_CACHE_DIR": str(Path(tmp) / "cache")},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    calls_so_far(base)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            started = time.monotonic()
            drive(wrk, base, args.warmup, base)
            before = usage(server.pid)
            warm = calls_so_far(base)
            drive(wrk, base, warm + args.calls // 2, base)
            middle = usage(server.pid)
            drive(wrk, base, warm + args.calls, base)
            after = usage(server.pid)
            done = calls_so_far(base) - warm
        finally:
            server.terminate()
            server.wait(timeout=30)
    # Judged on the second half: pools and caches may still fill during the first, but a
    # per-call leak grows just as much in the second.
    growth = (after["rss_kb"] - middle["rss_kb"]) / middle["rss_kb"]
    ok = growth < 0.02 and after["fds"] <= middle["fds"] and after["threads"] <= middle["threads"]
    print(f"## Soak ({args.isolation}): {done:,} calls after {warm:,} warm-up calls, "
          f"{time.monotonic() - started:.0f} s\n")  # fmt: skip
    print("| | after warm-up | half-way | at the end | growth over the second half |")
    print("|---|---:|---:|---:|---:|")
    print(
        f"| RSS | {before['rss_kb']:,} KiB | {middle['rss_kb']:,} KiB | {after['rss_kb']:,} KiB "
        f"| {growth:+.2%} |"
    )
    for key in ("fds", "threads"):
        print(
            f"| {key} | {before[key]} | {middle[key]} | {after[key]} "
            f"| {after[key] - middle[key]:+d} |"
        )
    print(f"\nverdict: {'no leak' if ok else 'LEAK SUSPECTED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
