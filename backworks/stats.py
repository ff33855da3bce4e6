"""Per-plugin counters and recent latencies, read by the admin routes.

Updated from the event-loop thread only. Latency percentiles come from a ring of the
most recent samples: exact for recent traffic and O(1) to record on the hot path.
"""

from __future__ import annotations

from typing import Any

_WINDOW = 2048


class PluginStats:
    __slots__ = (
        "_cursor",
        "_filled",
        "_samples",
        "calls",
        "crashed",
        "failed",
        "in_flight",
        "ok",
        "rejected",
        "timed_out",
    )

    def __init__(self) -> None:
        self.calls = 0
        self.ok = 0
        self.failed = 0
        self.timed_out = 0
        self.crashed = 0
        self.rejected = 0
        self.in_flight = 0
        self._samples = [0.0] * _WINDOW
        self._cursor = 0
        self._filled = 0

    def observe(self, seconds: float) -> None:
        self._samples[self._cursor] = seconds
        self._cursor = (self._cursor + 1) % _WINDOW
        self._filled = min(self._filled + 1, _WINDOW)

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
            "rejected": self.rejected,
            "in_flight": self.in_flight,
            "latency_ms": self.percentiles_ms(),
        }
