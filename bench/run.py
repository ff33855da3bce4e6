"""`make bench`: requests/s of Backworks next to the plain aiohttp handler a user would write.

    .venv/bin/python bench/run.py [--rounds 3] [--duration 5] [--connections 64]
                                  [--variants a,b,...] [--load wrk|python] [--no-save]

Every variant is a real server process on loopback. All of them start first, then each
round measures every variant once, in turn, so that machine noise spreads over all of
them; the table shows each variant's median and its ratio to the baseline measured in
the same run. A second table (bench/dispatch_cost.py) gives the host's per-call cost.
Results are kept as JSON under bench/results/ so runs can be compared.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
PLUGINS = REPO / "plugins"
RESULTS = REPO / "bench" / "results"
EXT = {"darwin": "dylib", "win32": "dll"}.get(sys.platform, "so")

# name -> (kind, path on the server, plugin settings or server options)
VARIANTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "baseline: aiohttp + Python handler": ("baseline", "/hello", {}),
    "static endpoint": ("static", "/static", {}),
    "hello (C), thread pool": ("plugin", "/hello", {"hello": {"dispatch": "pool"}}),
    "hello (C), fast path": ("plugin", "/hello", {"hello": {"dispatch": "auto"}}),
    "hello (C), isolation: process": ("plugin", "/hello", {"hello": {"isolation": "process"}}),
    "weather (Rust), thread pool": ("plugin", "/weather/london", {"weather": {"dispatch": "pool"}}),
    "weather (Rust), fast path": ("plugin", "/weather/london", {"weather": {"dispatch": "auto"}}),
    "weather (Rust), isolation: process": (
        "plugin", "/weather/london", {"weather": {"isolation": "process"}},
    ),
    "hello (C), fast path, 2 processes": ("plugin-2", "/hello", {"hello": {"dispatch": "auto"}}),
    "weather (Rust), fast path, 2 processes": (
        "plugin-2", "/weather/london", {"weather": {"dispatch": "auto"}},
    ),
    "hello (C), fast path, otel extra absent": (
        "plugin-no-otel", "/hello", {"hello": {"dispatch": "auto"}},
    ),
    "hello (C), fast path, traced (otel, console exporter)": (
        "plugin-traced", "/hello", {"hello": {"dispatch": "auto"}},
    ),
}  # fmt: skip
# Rows that compare two others: (what, the row, the row it is compared with).
RATIOS = (
    ("hello (C): 2 processes over 1", "hello (C), fast path, 2 processes", "hello (C), fast path"),
    ("weather (Rust): 2 processes over 1", "weather (Rust), fast path, 2 processes",
     "weather (Rust), fast path"),
    ("tracing code, otel absent over installed but off", "hello (C), fast path, otel extra absent",
     "hello (C), fast path"),
    ("traced over untraced", "hello (C), fast path, traced (otel, console exporter)",
     "hello (C), fast path"),
)  # fmt: skip
WEATHER_CONFIG = {"api_key": "bench", "units": "metric", "now": "2026-11-22T12:00:00Z"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_plugins() -> None:
    """Builds the example plugins (make hello-plugin weather-plugin) if needed."""
    subprocess.run(["make", "-s", "hello-plugin", "weather-plugin"], cwd=REPO, check=True)


def ensure_wrk() -> str | None:
    """wrk's path, installing it from Debian's packages when we may; None if impossible."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("bench: installing wrk (apt-get install wrk) ...", file=sys.stderr)
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, capture_output=True)
        found = shutil.which("wrk")
    if not found:
        print(
            "bench: wrk is not installed and cannot be installed here (needs root and apt-get);"
            " falling back to the built-in Python load generator, which is itself a bottleneck",
            file=sys.stderr,
        )
    return found


def server_config(folder: Path, plugins: dict[str, Any], port: int) -> Path:
    """Writes a config serving the example plugins with `plugins` settings; returns it."""
    settings = {name: dict(s) for name, s in plugins.items()}
    if "weather" in settings:
        settings["weather"]["config"] = WEATHER_CONFIG
    config = {
        "plugin_discovery": {"directories": [str(PLUGINS)]},
        "plugins": settings,
        "endpoints": {
            "/hello": {"method": "GET", "runtime": {"type": "plugin", "handler": "hello"}},
            "/weather/{city}": {
                "method": "GET",
                "runtime": {"type": "plugin", "handler": "weather"},
            },
            "/static": {"method": "GET", "response": {"status": 200, "body": '{"hello": "world"}'}},
        },
        "server": {"host": "127.0.0.1", "port": port},
        # Access logs are off in every row: the baseline writes none either.
        "logging": {"level": "warning", "format": "json"},
    }
    path = folder / f"bench-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Server:
    """One server under test: a `backworks serve` or baseline process on a free port."""

    def __init__(self, name: str, kind: str, path: str, options: dict[str, Any], folder: Path):
        self.name, self.port = name, free_port()
        self.url = f"http://127.0.0.1:{self.port}{path}"
        env = {**os.environ, "BACKWORKS_CACHE_DIR": str(folder / "cache")}
        env.update(variant_env(kind, folder))
        if kind == "baseline":
            argv = [sys.executable, str(REPO / "bench" / "baseline_app.py"), str(self.port)]
        else:
            config = server_config(folder, options, self.port)
            argv = [sys.executable, "-m", "backworks", "serve", "--config", str(config)]
            if kind == "plugin-2":
                argv += ["--workers", "2"]
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)  # fmt: skip

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                msg = f"{self.name}: server exited: {err[-2000:]}"
                raise RuntimeError(msg)
            try:
                with urllib.request.urlopen(self.url, timeout=2) as resp:  # noqa: S310
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        msg = f"{self.name}: no 200 from {self.url}"
        raise RuntimeError(msg)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def variant_env(kind: str, folder: Path) -> dict[str, str]:
    """The environment a row's server needs: tracing on, or the otel extra made absent."""
    if kind == "plugin-traced":
        return {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "bench"}
    if kind == "plugin-no-otel":
        # A package that cannot be imported stands in for the extra not installed.
        stub = folder / "no-otel" / "opentelemetry"
        stub.mkdir(parents=True, exist_ok=True)
        (stub / "__init__.py").write_text('raise ImportError("the otel extra is absent")\n')
        return {"PYTHONPATH": str(stub.parent), "OTEL_TRACES_EXPORTER": ""}
    return {"OTEL_TRACES_EXPORTER": ""}  # the other rows: installed, not configured


def ratios(results: dict[str, list[float]]) -> str:
    """The RATIOS among the rows measured, as a small Markdown table."""
    lines = ["| comparison | ratio of medians |", "|---|---:|"]
    for what, row, other in RATIOS:
        if results.get(row) and results.get(other):
            ratio = statistics.median(results[row]) / statistics.median(results[other])
            lines.append(f"| {what} | {ratio:.2f}x |")
    return "\n".join(lines)


@contextmanager
def servers(names: list[str], folder: Path) -> Iterator[list[Server]]:
    """Starts the named servers, waits until each answers, and stops them afterwards."""
    started: list[Server] = []
    try:
        for name in names:
            kind, path, options = VARIANTS[name]
            started.append(Server(name, kind, path, options, folder))
        for server in started:
            server.wait_ready()
        yield started
    finally:
        for server in started:
            server.stop()


def measure_wrk(wrk: str, url: str, duration: float, connections: int) -> float:
    """Requests per second wrk reaches against `url` (`connections`, `duration` s)."""
    out = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", url],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        msg = f"{url}: {errors[1]} error responses under load"
        raise RuntimeError(msg)
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match:
        msg = f"cannot read wrk's output: {out}"
        raise RuntimeError(msg)
    return float(match[1])


def measure_python(url: str, duration: float, connections: int) -> float:
    """A bounded aiohttp client loop: for when wrk cannot be had (and for the smoke test)."""
    import aiohttp

    async def run() -> int:
        done = 0
        deadline = time.monotonic() + duration
        async with aiohttp.ClientSession() as session:

            async def worker() -> None:
                nonlocal done
                while time.monotonic() < deadline:
                    async with session.get(url) as resp:
                        await resp.read()
                        if resp.status != 200:
                            msg = f"{url} answered {resp.status}"
                            raise RuntimeError(msg)
                    done += 1

            await asyncio.gather(*(worker() for _ in range(connections)))
        return done

    started = time.monotonic()
    count = asyncio.run(run())
    return count / (time.monotonic() - started)


def machine() -> dict[str, str]:
    """What the figures were measured on: CPU, cores, Python and library versions."""
    cpu = ""
    if Path("/proc/cpuinfo").exists():
        names = re.findall(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
        cpu = f"{len(names)} x {names[0]}" if names else ""
    from importlib.metadata import PackageNotFoundError, version

    import aiohttp
    import cffi

    try:
        loop = f"uvloop {version('uvloop')}"
    except PackageNotFoundError:
        loop = "asyncio"
    return {
        "loop": loop,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu or platform.processor(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "cffi": cffi.__version__,
    }


def table(results: dict[str, list[float]], baseline: str) -> str:
    """The medians as a Markdown table, each row's ratio to `baseline` beside it."""
    base = statistics.median(results[baseline])
    lines = ["| variant | requests/s (median) | runs | vs baseline |", "|---|---:|---:|---:|"]
    for name, runs in results.items():
        median = statistics.median(runs)
        lines.append(f"| {name} | {median:,.0f} | {len(runs)} | {median / base:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`make bench`: every variant, interleaved rounds, a table and a JSON record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds per server, once")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--variants", help="';'-separated start of variant names (default: all)")
    parser.add_argument("--load", choices=("wrk", "python"), default="wrk")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    parser.add_argument("--skip-dispatch", action="store_true", help="only the HTTP table")
    args = parser.parse_args(argv)

    names = list(VARIANTS)
    if args.variants:
        wanted = [part.strip() for part in args.variants.split(";") if part.strip()]
        names = [n for n in names if any(n.startswith(part) for part in wanted)]
    baseline = names[0]
    ensure_plugins()
    wrk = ensure_wrk() if args.load == "wrk" else None

    def measure(url: str, seconds: float) -> float:
        if wrk:
            return measure_wrk(wrk, url, seconds, args.connections)
        return measure_python(url, seconds, args.connections)

    results: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp, servers(names, Path(tmp)) as running:
        for server in running:
            measure(server.url, args.warmup)
        for round_no in range(args.rounds):
            for server in running:
                rate = measure(server.url, args.duration)
                results[server.name].append(rate)
                print(f"round {round_no + 1}: {server.name}: {rate:,.0f} req/s", file=sys.stderr)

    info = machine()
    generator = f"wrk -t1 -c{args.connections}" if wrk else f"python client x{args.connections}"
    print(f"\n## HTTP throughput ({info['date']}, {info['cpu']})\n")
    print(f"Python {info['python']}, aiohttp {info['aiohttp']}, {info['loop']}; load: {generator},")
    print(f"{args.duration:g} s x {args.rounds} rounds, interleaved.\n")
    print(table(results, baseline))
    print()
    print(ratios(results))
    record: dict[str, Any] = {"machine": info, "load": generator, "http": results}
    if not args.skip_dispatch:
        sys.path.insert(0, str(REPO / "bench"))
        import dispatch_cost

        from backworks.logs import configure_logging

        configure_logging("warning", "console")  # keep worker start-up lines off the table

        costs = dispatch_cost.measure_all(calls=20_000, rounds=args.rounds)
        print("\n## Host dispatch cost per call (same plugin, in one process)\n")
        print(dispatch_cost.table(costs))
        record["dispatch_us"] = costs
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
        out = RESULTS / f"{stamp}.json"
        out.write_text(json.dumps(record, indent=2))
        print(f"\n(saved {out.relative_to(REPO)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
