"""CPU µs per request of one plugin library, in this process: side by side, interleaved.

    .venv/bin/python bench/plugin_cost.py before.so after.so [--calls 20000] [--rounds 7]

Built for issue 19's weather work: what a build of a plugin costs per request,
compared with another build of it, without the HTTP stack's noise. Two figures per
library, both `GET /weather/paris` as the lane hands it over (route pattern, path
parameter, the headers wrk sends, a request id), with the host's real log sink at
the server's default level (info), so a debug line per request costs what it costs
in a server:

- `handle`: the plugin's `handle` with a prepared `bw_request`, the body copied out,
  then `release`: the plugin's and its SDK's own cost;
- `compiled step`: `PluginRunner.call_wire`, the lane's inline path (the compiled step
  packs the request, calls `handle`, checks and renders the answer, releases it).

Each round measures every library in a fresh process, libraries alternating, so a
busy machine hurts them alike; the report gives each figure's median over the rounds
and its spread (min-max).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from backworks.abi import Request, ffi, open_library, step
from backworks.abi.hostlog import plugin_log_sink
from backworks.logs import configure_logging
from backworks.runtime.backend import ThreadBackend
from backworks.runtime.breaker import CircuitBreaker
from backworks.runtime.runner import PluginRunner

CONFIG = {"api_key": "bench", "units": "metric", "now": "2026-11-22T12:00:00Z"}
REQUEST = Request(
    "GET",
    "/weather/paris",
    endpoint="/weather/{city}",
    params=(("city", "paris"),),
    headers=(("host", "127.0.0.1:8080"), ("user-agent", "wrk"), ("accept", "*/*")),
    request_id="0123456789abcdef",
)
WIRE = (b"Sun, 06 Dec 2026 21:08:00 GMT", b"", b"", False)


def handle_only(path: Path, calls: int) -> float:
    """CPU µs per `handle` + copy + `release` with one prepared request."""
    lib = ffi.dlopen(str(path))
    desc = lib.backworks_plugin_entry((1 << 16) | 0)
    state = ffi.new("void **")
    host = ffi.new("bw_host *")  # no log function: the plugin's lines go nowhere
    host.abi_version, host.struct_size = (1 << 16), ffi.sizeof("bw_host")
    config = json.dumps(CONFIG).encode()
    assert desc.init(host, config, len(config), state, ffi.new("bw_response *")) == 0
    keep: list[Any] = []

    def text(s: str) -> dict[str, Any]:
        data = ffi.new("char[]", s.encode())
        keep.append(data)
        return {"ptr": data, "len": len(s)}

    params = ffi.new("bw_header[1]", [{"name": text("city"), "value": text("paris")}])
    headers = ffi.new(
        "bw_header[]", [{"name": text(k), "value": text(v)} for k, v in REQUEST.headers]
    )
    req = ffi.new(
        "bw_request *",
        {
            "struct_size": ffi.sizeof("bw_request"),
            "method": text("GET"),
            "path": text(REQUEST.path),
            "endpoint": text(REQUEST.endpoint),
            "params": params,
            "params_len": 1,
            "headers": headers,
            "headers_len": len(REQUEST.headers),
            "request_id": text(REQUEST.request_id),
            "cancelled": ffi.new("uint32_t *"),
        },
    )
    keep.append(req.cancelled)

    def run(n: int) -> None:
        for _ in range(n):
            resp = ffi.new("bw_response *")
            desc.handle(state[0], req, resp)
            ffi.unpack(ffi.cast("char *", resp.body), resp.body_len)
            resp.release(resp.release_data)

    run(2000)
    started = time.process_time()
    run(calls)
    return (time.process_time() - started) / calls * 1e6


async def compiled_step(path: Path, calls: int) -> float:
    """CPU µs per `PluginRunner.call_wire` (the lane's inline path)."""
    if not step.enabled():
        return float("nan")
    instance = open_library(path).instantiate(json.dumps(CONFIG).encode(), plugin_log_sink("w"))
    runner = PluginRunner(
        ThreadBackend(instance, 1),
        max_concurrency=1,
        timeout_ms=10_000,
        queue_timeout_ms=10_000,
        breaker=CircuitBreaker(),
        dispatch="inline",
    )
    try:
        call = runner.call_wire
        for _ in range(2000):
            call(REQUEST, *WIRE)
        started = time.process_time()
        for _ in range(calls):
            call(REQUEST, *WIRE)
        return (time.process_time() - started) / calls * 1e6
    finally:
        await runner.close(5)


def one(path: Path, calls: int) -> dict[str, float]:
    """Both figures for one library, measured in this process."""
    configure_logging("info", "json")
    return {
        "handle": handle_only(path, calls),
        "compiled step": asyncio.run(compiled_step(path, calls)),
    }


def main() -> None:
    """Measures every library given, alternating, and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("libraries", nargs="+", type=Path)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.libraries[0], args.calls)))
        return
    seen: dict[Path, list[dict[str, float]]] = {lib: [] for lib in args.libraries}
    for _ in range(args.rounds):
        for lib in args.libraries:
            cmd = [sys.executable, __file__, "--one", "--calls", str(args.calls), str(lib)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            seen[lib].append(json.loads(done.stdout.strip().splitlines()[-1]))
    print("| library | figure | median µs | min-max µs |")
    print("|---|---|---:|---:|")
    for lib, runs in seen.items():
        for figure in runs[0]:
            values = [run[figure] for run in runs]
            low, high = min(values), max(values)
            median = statistics.median(values)
            print(f"| {lib.name} | {figure} | {median:.2f} | {low:.2f}-{high:.2f} |")


if __name__ == "__main__":
    main()
