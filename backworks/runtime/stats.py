"""Per-plugin counters and recent latencies, read by the admin routes and /metrics.

Updated from the event-loop thread only. Latency percentiles come from a ring of the
most recent samples: exact for recent traffic and O(1) to record on the hot path.
Since-start latency histograms (what Prometheus wants) count into fixed buckets, so
recording is a bisect and two additions, and a scrape reads them without locking.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

_WINDOW = 2048

# Upper bounds in seconds: from a fast in-process call to a slow worker process. They
# start at 10 µs because a non-blocking plugin answers in well under 0.5 ms: with a
# first bucket at 0.5 ms nearly every call fell into it and no quantile could be read.
LATENCY_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class LatencyHistogram:
    """Counts per bucket of LATENCY_BUCKETS (plus one above), and the sum of all samples."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        # bisect_left: a sample equal to a bound belongs to it (Prometheus' `le`).
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """`[(le, count of samples <= le), ..., ("+Inf", total)]` as Prometheus exposes it."""
        out, running = [], 0
        for bound, count in zip((*map(str, LATENCY_BUCKETS), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


class PluginStats:
    """One plugin's call counters, recent latencies (percentiles) and latency histogram."""

    __slots__ = (
        "_cursor",
        "_filled",
        "_samples",
        "calls",
        "cancelled",
        "crashed",
        "failed",
        "histogram",
        "in_flight",
        "ok",
        "outcome_unknown",
        "rejected",
        "timed_out",
    )

    def __init__(self) -> None:
        self.calls = 0
        self.ok = 0
        self.failed = 0
        self.timed_out = 0
        self.crashed = 0
        # Of the crashed: calls lost with a worker that may or may not have taken effect.
        self.outcome_unknown = 0
        self.rejected = 0
        self.cancelled = 0  # given up on because the client went away (or a shutdown)
        self.in_flight = 0
        self._samples = [0.0] * _WINDOW
        self._cursor = 0
        self._filled = 0
        self.histogram = LatencyHistogram()

    def observe(self, seconds: float) -> None:
        """One successful call's latency: into the histogram and the recent samples."""
        histogram = self.histogram
        histogram.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        histogram.sum += seconds
        cursor = self._cursor
        self._samples[cursor] = seconds
        self._cursor = cursor + 1 if cursor + 1 < _WINDOW else 0
        if self._filled < _WINDOW:
            self._filled += 1

    def absorb(self, calls: int, buckets: list[int], total: float, samples: list[float]) -> None:
        """Successful calls counted elsewhere (the compiled step's C counters): `calls`
        of them, their histogram `buckets` and `total` seconds, the recent `samples`."""
        if not calls:
            return
        self.calls += calls
        self.ok += calls
        counts = self.histogram.counts
        for i, count in enumerate(buckets):
            counts[i] += count
        self.histogram.sum += total
        for seconds in samples[-_WINDOW:]:
            cursor = self._cursor
            self._samples[cursor] = seconds
            self._cursor = cursor + 1 if cursor + 1 < _WINDOW else 0
        self._filled = min(_WINDOW, self._filled + len(samples))

    def percentiles_ms(self) -> dict[str, float | None]:
        recent = sorted(self._samples[: self._filled])
        if not recent:
            return {"p50": None, "p95": None, "p99": None}

        def at(q: float) -> float:
            return round(recent[min(len(recent) - 1, int(q * len(recent)))] * 1000, 3)

        return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99)}

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "ok": self.ok,
            "failed": self.failed,
            "timed_out": self.timed_out,
            "crashed": self.crashed,
            "outcome_unknown": self.outcome_unknown,
            "rejected": self.rejected,
            "cancelled": self.cancelled,
            "in_flight": self.in_flight,
            "latency_ms": self.percentiles_ms(),
        }
