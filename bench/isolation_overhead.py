"""What process isolation costs per call: ThreadBackend vs ProcessBackend, same plugin.

    .venv/bin/python bench/isolation_overhead.py [--calls 20000] [--rounds 3] [--concurrency 1]

Compiles tests/plugins/testkit.c into a temporary folder, loads it once in this
process (ThreadBackend) and once in a worker process (ProcessBackend), and drives
`GET /kit/status` through a real PluginRunner on each, in interleaved rounds so
that machine noise hits both alike. `--concurrency` keeps that many calls in flight
(the plugin is built thread-safe, with as many threads in one worker).
Prints µs/call and calls/s of the best round of each, and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import tempfile
import time
from pathlib import Path

from backworks.abi import Request, include_dir, open_library
from backworks.abi.hostlog import plugin_log_sink
from backworks.isolation.backend import ProcessBackend
from backworks.isolation.probe import probe
from backworks.plugins.loading import PluginSpec
from backworks.runtime.backend import ThreadBackend
from backworks.runtime.breaker import CircuitBreaker
from backworks.runtime.runner import PluginRunner

REPO = Path(__file__).resolve().parent.parent


def build(folder: Path) -> Path:
    """Compiles the test kit (thread-safe) into `folder`; returns the library's path."""
    out = folder / "libkit.so"
    subprocess.run(
        [
            os.environ.get("CC", "cc"),
            "-std=c99",
            "-O2",
            "-shared",
            "-fPIC",
            f"-I{include_dir()}",
            '-DKIT_NAME="kit"',
            "-DKIT_FLAGS=BW_FLAG_THREAD_SAFE",
            "-o",
            str(out),
            str(REPO / "tests" / "plugins" / "testkit.c"),
        ],
        check=True,
    )
    out.chmod(0o755)
    return out


def runner_for(backend: ThreadBackend | ProcessBackend, concurrency: int) -> PluginRunner:
    """A PluginRunner over `backend` that admits `concurrency` calls at once."""
    return PluginRunner(
        backend,
        max_concurrency=concurrency,
        timeout_ms=10_000,
        queue_timeout_ms=10_000,
        breaker=CircuitBreaker(),
    )


def worker_cpu(runner: PluginRunner) -> float:
    """CPU seconds the runner's worker processes used so far (0 for in-process)."""
    total = 0.0
    for worker in runner.backend.snapshot().get("workers", []):
        stat = Path(f"/proc/{worker['pid']}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def drive(runner: PluginRunner, calls: int, concurrency: int) -> tuple[float, float, float]:
    """Wall, host CPU and worker CPU seconds for `calls` calls, `concurrency` at a time."""
    req = Request("GET", "/kit/status", query="code=200", request_id="bench")

    async def lane(n: int) -> None:
        for _ in range(n):
            resp = await runner.handle(req)
            assert resp.status == 200

    share = calls // concurrency
    cpu, child = time.process_time(), worker_cpu(runner)
    started = time.perf_counter()
    await asyncio.gather(*(lane(share) for _ in range(concurrency)))
    wall = time.perf_counter() - started
    return wall, time.process_time() - cpu, worker_cpu(runner) - child


async def main(calls: int, rounds: int, concurrency: int) -> None:
    """Times thread and process backends side by side, interleaved, and prints both."""
    with tempfile.TemporaryDirectory(prefix="bw-bench-") as tmp:
        folder = Path(tmp)
        folder.chmod(0o755)
        path = build(folder)
        spec = PluginSpec(name="kit", path=path)

        instance = open_library(path).instantiate(b"{}", plugin_log_sink("kit"))
        threads = runner_for(ThreadBackend(instance, concurrency), concurrency)
        backend = ProcessBackend(await probe(spec), spec, concurrency_per_worker=concurrency)
        await backend.start()
        process = runner_for(backend, concurrency)

        await drive(threads, 1000, concurrency)  # warm up both
        await drive(process, 1000, concurrency)
        inf = float("inf")
        best = {"thread": (inf, inf, inf), "process": (inf, inf, inf)}
        for r in range(rounds):
            for name, runner in (("thread", threads), ("process", process)):
                wall, cpu, child = await drive(runner, calls, concurrency)
                best[name] = min(best[name], (wall, cpu, child))
                print(f"round {r + 1} {name:8} {wall / calls * 1e6:8.1f} µs/call")
        await threads.close(5.0)
        await process.close(5.0)

    print(f"\n{calls} calls of GET /kit/status, {concurrency} in flight, best of {rounds}:")
    for name, (wall, cpu, child) in best.items():
        print(
            f"  {name:8} {wall / calls * 1e6:7.1f} µs/call {calls / wall:8.0f} calls/s"
            f"   CPU/call: host {cpu / calls * 1e6:5.1f} µs, worker {child / calls * 1e6:5.1f} µs"
        )
    ratio = best["process"][0] / best["thread"][0]
    extra = (best["process"][0] - best["thread"][0]) / calls * 1e6
    print(f"  process/thread: {ratio:.2f}x ({extra:+.1f} µs per call)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.rounds, args.concurrency))
