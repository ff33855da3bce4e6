"""The host's cost per plugin call, over a raw cffi call of the same native function.

    .venv/bin/python bench/dispatch_cost.py [--calls 20000] [--rounds 3]

"raw cffi" is what a minimal binding spends: one prepared request, one call, copy
the body, release. Every other row is `PluginRunner.handle` as the server uses it
(marshal, admission, breaker, accounting, call, copy, release) for one dispatch mode,
called back to back from one coroutine. Rounds are interleaved; the best is kept.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backworks.abi import Request, ffi, open_library
from backworks.names import Dispatch
from backworks.plugins.loading import PluginSpec
from backworks.runtime.backend import ThreadBackend
from backworks.runtime.breaker import CircuitBreaker
from backworks.runtime.runner import PluginRunner

REPO = Path(__file__).resolve().parent.parent
HELLO = REPO / "plugins" / "libhello.so"
REQUEST = Request("GET", "/hello", endpoint="/hello", headers=(("host", "127.0.0.1"),) * 3)


def raw_call(calls: int) -> float:
    """µs per call of desc->handle with a prepared request: the floor."""
    lib = ffi.dlopen(str(HELLO))
    desc = lib.backworks_plugin_entry((1 << 16) | 0)
    state = ffi.new("void **")
    desc.init(ffi.NULL, b"{}", 2, state, ffi.new("bw_response *"))
    req = ffi.new("bw_request *", {"struct_size": ffi.sizeof("bw_request")})
    flag = ffi.new("uint32_t *")
    req.cancelled = flag
    started = time.perf_counter()
    for _ in range(calls):
        resp = ffi.new("bw_response *")
        desc.handle(state[0], req, resp)
        ffi.unpack(ffi.cast("char *", resp.body), resp.body_len)
        if resp.release:
            resp.release(resp.release_data)
    return (time.perf_counter() - started) / calls * 1e6


def runner(dispatch: Dispatch) -> PluginRunner:
    """A PluginRunner over the hello plugin in this process, with the given dispatch."""
    instance = open_library(HELLO).instantiate(b"{}", lambda level, message: None)
    return PluginRunner(
        ThreadBackend(instance, 4),
        max_concurrency=4,
        timeout_ms=10_000,
        queue_timeout_ms=10_000,
        breaker=CircuitBreaker(),
        dispatch=dispatch,
    )


async def process_runner() -> PluginRunner | None:
    """A PluginRunner over the hello plugin in a worker process (None where unsupported)."""
    from backworks.isolation.backend import ProcessBackend
    from backworks.isolation.probe import probe

    spec = PluginSpec(name="hello", path=HELLO)
    backend = ProcessBackend(await probe(spec), spec, concurrency_per_worker=4)
    await backend.start()
    return PluginRunner(
        backend, max_concurrency=4, timeout_ms=10_000, queue_timeout_ms=10_000,
        breaker=CircuitBreaker(),
    )  # fmt: skip


async def timed(make: Callable[[], Any], calls: int) -> float:
    """Microseconds per call of `calls` calls made back to back on `make()`'s runner."""
    r = make() if not asyncio.iscoroutinefunction(make) else await make()
    if r is None:
        return float("nan")
    for _ in range(200):  # warm up: threads started, caches hot
        await r.handle(REQUEST)
    started = time.perf_counter()
    for _ in range(calls):
        await r.handle(REQUEST)
    elapsed = (time.perf_counter() - started) / calls * 1e6
    await r.close(5)
    return elapsed


def measure_all(calls: int = 20_000, rounds: int = 3) -> dict[str, float]:
    """The best of `rounds` per-call costs of every dispatch, in microseconds."""
    subprocess.run(["make", "-s", "hello-plugin"], cwd=REPO, check=True)
    modes: dict[str, Callable[[], Any]] = {
        "fast path (inline)": lambda: runner("inline"),
        "thread pool": lambda: runner("pool"),
        "isolation: process": process_runner,
    }
    best: dict[str, float] = {"raw cffi call": min(raw_call(calls) for _ in range(rounds))}
    for _ in range(rounds):
        for name, make in modes.items():
            value = asyncio.run(timed(make, calls))
            best[name] = min(best.get(name, value), value)
    return best


def table(costs: dict[str, float]) -> str:
    """The costs as a Markdown table, with the host's overhead over the raw call."""
    raw = costs["raw cffi call"]
    lines = ["| dispatch | µs per call | host overhead over raw |", "|---|---:|---:|"]
    for name, value in costs.items():
        extra = "-" if name == "raw cffi call" else f"{value - raw:.1f} µs"
        lines.append(f"| {name} | {value:.1f} | {extra} |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(table(measure_all(args.calls, args.rounds)))
