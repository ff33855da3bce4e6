"""The bench's own HTTP/1.1 load generator: closed loop (wrk's stand-in) or open loop.

    python bench/loadgen.py closed URL --duration 5 --connections 64
    python bench/loadgen.py open URL --rate 2000 --duration 5 [--warmup 1] [--connections 64]

It prints one JSON object on stdout. Keep-alive connections on uvloop (when
installed), responses parsed by httptools, every answer other than 200 counted as an
error.

Closed loop: each connection sends its next request as soon as its answer is in,
like wrk: it measures the most a server does, and the server sets the pace.

Open loop: request i is due at start + i / rate, fixed in advance. At its time it
goes out on an idle connection, or waits for the first one to come free; its latency
is measured from the time it was due, not from when it went out, so a server that
falls behind shows every request it delayed (no coordinated omission). The sender
sleeps until about 2 ms before a request is due and then spins on the event loop, so
requests leave within microseconds of their time; how late they went out is reported
(`send_lag_p99_us`) so a slow generator cannot pass for a slow server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

SPIN_BEFORE_S = 0.002  # the sender spins (instead of sleeping) this close to a due time


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank `q` quantile (0 < q <= 1) of `values` (nan when empty)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def schedule(rate: float, duration: float, start: float) -> list[float]:
    """When each request of an open-loop run is due: `rate` per second for `duration` s."""
    count = round(rate * duration)
    return [start + i / rate for i in range(count)]


class Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self, generator: Generator) -> None:
        self.generator = generator
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.due = 0.0  # when the request in flight was due
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        self.busy = False
        self.generator.answered(self, self.parser.get_status_code(), time.perf_counter())

    def connection_lost(self, exc: Exception | None) -> None:
        self.generator.lost(self)

    def send(self, due: float) -> None:
        self.due, self.busy = due, True
        assert self.transport is not None
        self.transport.write(self.generator.request)


class Generator:
    """The connections to one URL and what came back on them."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        self.request = f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode()
        self.connections: list[Connection] = []
        self.idle: list[Connection] = []
        self.waiting: deque[float] = deque()  # due times of requests with no connection yet
        self.latencies: list[float] = []  # seconds from due to answered
        self.answered_at: list[float] = []
        self.errors = 0
        self.recording = True
        self.closed_loop_until = 0.0  # closed loop: resend on answers until then
        self.outstanding = 0
        self.drained = asyncio.Event()

    async def connect(self, count: int) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(count):
            _, conn = await loop.create_connection(lambda: Connection(self), self.host, self.port)
            self.connections.append(conn)
            self.idle.append(conn)

    def close(self) -> None:
        for conn in self.connections:
            if conn.transport is not None:
                conn.transport.close()

    def dispatch(self, due: float) -> None:
        """Sends a request due at `due` now, or queues it for the next free connection."""
        self.outstanding += 1
        self.drained.clear()
        if self.idle:
            self.idle.pop().send(due)
        else:
            self.waiting.append(due)

    def answered(self, conn: Connection, status: int, now: float) -> None:
        self.outstanding -= 1
        if self.recording:
            self.latencies.append(now - conn.due)
            self.answered_at.append(now)
            if status != 200:
                self.errors += 1
        if self.closed_loop_until:
            if now < self.closed_loop_until:
                self.outstanding += 1
                conn.send(now)
                return
        elif self.waiting:
            conn.send(self.waiting.popleft())
            return
        self.idle.append(conn)
        if self.outstanding == 0:
            self.drained.set()

    def lost(self, conn: Connection) -> None:
        """A connection closed: a request it carried is an error (and is no longer out)."""
        if conn in self.idle:
            self.idle.remove(conn)
        if conn.busy:
            conn.busy = False
            self.errors += 1
            self.outstanding -= 1
            if self.outstanding == 0:
                self.drained.set()


async def closed_loop(url: str, duration: float, connections: int) -> dict[str, Any]:
    """wrk's measurement: `connections` connections each always busy for `duration` s."""
    gen = Generator(url)
    await gen.connect(connections)
    started = time.perf_counter()
    gen.closed_loop_until = started + duration
    for conn in list(gen.idle):
        gen.idle.remove(conn)
        gen.outstanding += 1
        conn.send(started)
    await asyncio.wait_for(gen.drained.wait(), duration + 30)
    elapsed = max(gen.answered_at, default=started) - started
    gen.close()
    return {
        "mode": "closed",
        "connections": connections,
        "requests": len(gen.answered_at),
        "seconds": elapsed,
        "errors": gen.errors,
    }


async def _send_on_time(gen: Generator, due_times: list[float]) -> list[float]:
    """Dispatches each request at its due time; returns how late each one went out."""
    lags = []
    i, n = 0, len(due_times)
    while i < n:
        now = time.perf_counter()
        while i < n and due_times[i] <= now:
            gen.dispatch(due_times[i])
            lags.append(now - due_times[i])
            i += 1
        if i < n:
            wait = due_times[i] - time.perf_counter()
            # asyncio's timers are coarse (uvloop: 1 ms): sleep most of the way, then
            # spin on the loop (answers are still read while it spins).
            await asyncio.sleep(wait - SPIN_BEFORE_S if wait > 2 * SPIN_BEFORE_S else 0)
    return lags


async def open_loop(
    url: str, rate: float, duration: float, warmup: float, connections: int, drain: float
) -> dict[str, Any]:
    """Requests at `rate`/s for `duration` s (after `warmup` s unrecorded), latency from due."""
    gen = Generator(url)
    await gen.connect(connections)
    warmed = 0
    if warmup > 0:
        gen.recording = False
        warmed = len(await _send_on_time(gen, schedule(rate, warmup, time.perf_counter() + 0.01)))
        await asyncio.wait_for(gen.drained.wait(), drain)
        gen.recording = True
    start = time.perf_counter() + 0.01
    due_times = schedule(rate, duration, start)
    lags = await _send_on_time(gen, due_times)
    with contextlib.suppress(TimeoutError):  # what is still out is reported as unfinished
        await asyncio.wait_for(gen.drained.wait(), drain)
    gen.close()
    latencies_us = [x * 1e6 for x in gen.latencies]
    completed = len(latencies_us)
    span = max(gen.answered_at, default=start) - start
    return {
        "mode": "open",
        "connections": connections,
        "offered_rate": rate,
        "warmup_requests": warmed,
        "scheduled": len(due_times),
        "completed": completed,
        "unfinished": len(due_times) - completed,
        "errors": gen.errors,
        "achieved_rate": completed / span if span > 0 else 0.0,
        "p50_us": percentile(latencies_us, 0.50),
        "p99_us": percentile(latencies_us, 0.99),
        "max_us": max(latencies_us, default=math.nan),
        "send_lag_p99_us": percentile([x * 1e6 for x in lags], 0.99),
    }


def main(argv: list[str] | None = None) -> int:
    """Runs one measurement and prints its result as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("closed", "open"))
    parser.add_argument("url")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rate", type=float, default=1000.0, help="open loop: requests/s")
    parser.add_argument("--warmup", type=float, default=0.0, help="open loop: unrecorded s")
    parser.add_argument("--drain", type=float, default=10.0, help="open loop: wait for stragglers")
    args = parser.parse_args(argv)
    factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        pass  # asyncio's own loop: slower, still correct
    with asyncio.Runner(loop_factory=factory) as runner:
        if args.mode == "closed":
            result = runner.run(closed_loop(args.url, args.duration, args.connections))
        else:
            result = runner.run(
                open_loop(
                    args.url, args.rate, args.duration, args.warmup, args.connections, args.drain
                )
            )
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
