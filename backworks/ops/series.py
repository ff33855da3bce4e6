"""The dashboard's charts: per plugin, the last 15 minutes in 1 s buckets.

Nothing is recorded per call. Once a second `Series.sample` reads the counters every
runner already keeps (PluginStats, its latency histogram, the breaker) and stores what
changed since the last second: requests, errors, the latency histogram's new counts
and the breaker's state. A point is a few integers, the ring holds WINDOW_S of them
per plugin, and a reload (a new runner, counters from zero) is taken into account.

Workers keep their own rings; `merge` sums the points of several (ops/peers.py asks
the siblings), and `chart_json` turns merged points into what the page draws: rate,
p50/p99 latency estimated from the summed histogram, error rate and breaker state.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web

from backworks.lifecycle.host import Host
from backworks.runtime.runner import PluginRunner
from backworks.runtime.stats import LATENCY_BUCKETS

WINDOW_S = 900

# A point: (requests, errors, new latency counts per bucket or None, breaker state).
Point = tuple[int, int, list[int] | None, str]
_BREAKER_RANK = {"closed": 0, "half_open": 1, "open": 2}


class Series:
    """One process's ring of 1 s points per plugin, filled by `sample` once a second."""

    def __init__(self, host: Host, clock: Callable[[], float] = time.time) -> None:
        self.host = host
        self.clock = clock
        self.ring: deque[tuple[int, dict[str, Point]]] = deque(maxlen=WINDOW_S)
        # plugin -> (the runner last read, its cumulative counters then)
        self._last: dict[str, tuple[PluginRunner, tuple[int, int, list[int]]]] = {}

    def sample(self) -> None:
        """Stores the second that just ended: what each runner counted since the last call."""
        second = int(self.clock()) - 1
        points: dict[str, Point] = {}
        for name, runner in self.host.runners.items():
            s = runner.stats
            now = (s.calls + s.rejected, s.failed + s.timed_out + s.rejected, s.histogram.counts)
            last = self._last.get(name)
            before = last[1] if last is not None and last[0] is runner else (0, 0, None)
            latency = [a - b for a, b in zip(now[2], before[2], strict=True)] if before[2] else None
            if latency is None and any(now[2]):
                latency = list(now[2])
            points[name] = (
                now[0] - before[0],
                now[1] - before[1],
                latency if latency and any(latency) else None,
                runner.breaker.state.value,
            )
            self._last[name] = (runner, (now[0], now[1], list(now[2])))
        for gone in self._last.keys() - self.host.runners.keys():
            del self._last[gone]
        if self.ring and self.ring[-1][0] >= second:
            # Two samples in one second (a late timer, then a prompt one): one point.
            last_second, stored = self.ring[-1]
            self.ring[-1] = (last_second, merge([[(0, stored)], [(0, points)]])[0])
            return
        self.ring.append((second, points))

    def since(self, second: int) -> list[tuple[int, dict[str, Point]]]:
        """The stored points of `second` and later, oldest first."""
        return [(s, p) for s, p in self.ring if s >= second]


def merge(parts: Iterable[Iterable[tuple[int, dict[str, Any]]]]) -> dict[int, dict[str, Point]]:
    """Several workers' points summed per second and plugin; the worst breaker state wins."""
    out: dict[int, dict[str, Point]] = {}
    for points in parts:
        for second, plugins in points:
            into = out.setdefault(int(second), {})
            for name, (requests, errors, latency, circuit) in plugins.items():
                had = into.get(name)
                if had is None:
                    into[name] = (requests, errors, list(latency) if latency else None, circuit)
                    continue
                summed = had[2]
                if latency:
                    summed = (
                        [a + b for a, b in zip(summed, latency, strict=True)] if summed else latency
                    )
                worse = circuit if _BREAKER_RANK[circuit] > _BREAKER_RANK[had[3]] else had[3]
                into[name] = (had[0] + requests, had[1] + errors, summed, worse)
    return out


def chart_json(merged: dict[int, dict[str, Point]], now: float) -> dict[str, Any]:
    """Per plugin, one value per second: rate, p50/p99 ms, error rate, breaker state."""
    seconds = sorted(merged)
    plugins = sorted({name for points in merged.values() for name in points})
    charts: dict[str, dict[str, list[Any]]] = {}
    for name in plugins:
        chart: dict[str, list[Any]] = {
            "t": [], "rate": [], "p50": [], "p99": [], "error_rate": [], "circuit": [],
        }  # fmt: skip
        for second in seconds:
            point = merged[second].get(name)
            if point is None:
                continue
            requests, errors, latency, circuit = point
            chart["t"].append(second)
            chart["rate"].append(requests)
            chart["p50"].append(_quantile_ms(latency, 0.50))
            chart["p99"].append(_quantile_ms(latency, 0.99))
            chart["error_rate"].append(round(errors / requests, 4) if requests else None)
            chart["circuit"].append(circuit)
        charts[name] = chart
    return {"now": now, "window_s": WINDOW_S, "plugins": charts}


def _quantile_ms(counts: list[int] | None, q: float) -> float | None:
    """The `q` quantile of a histogram, interpolated inside its bucket, in ms."""
    if not counts:
        return None
    total = sum(counts)
    rank = q * total
    running = 0
    lower = 0.0
    for i, count in enumerate(counts):
        upper = LATENCY_BUCKETS[i] if i < len(LATENCY_BUCKETS) else LATENCY_BUCKETS[-1]
        if count and running + count >= rank:
            share = (rank - running) / count
            return round((lower + (upper - lower) * share) * 1000, 3)
        running += count
        lower = upper
    return round(LATENCY_BUCKETS[-1] * 1000, 3)


SERIES: web.AppKey[Series] = web.AppKey("series", Series)
