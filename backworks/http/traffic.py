"""What the server has answered: counts and latencies per endpoint, and the last requests.

Both HTTP engines call `Traffic.record` once per request (through http/record.py),
on the event-loop thread; /metrics and the dashboard read the same objects at scrape
time. Recording is one append: the requests are counted together before anything
reads the counts (`flush`), so a reader never sees a request missing that was
answered before it asked, and at the latest every FLUSH_AT requests; with the access
log on, also when the loop turn ends, so its lines are written at once. No lock and
no formatting: the work of turning this into text is done by whoever asks.

Endpoints are counted by route pattern (`/items/{id}`), never by raw path, so a
client cannot grow the metrics by inventing paths; a method outside the HTTP standard
ones counts as `other` for the same reason.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from backworks.names import ALL_METHODS
from backworks.runtime.stats import LatencyHistogram

RECENT_REQUESTS = 100
# Requests kept uncounted at most: a bound on the pending list between reads.
FLUSH_AT = 256

# One answered request: method, route, path, status, seconds, plugin, request id.
Answered = tuple[str, str, str, int, float, str | None, str]
UNMATCHED = "<unmatched>"  # the route label of requests no endpoint matched (404, 405)

# The dashboard polls every second: its own requests would push real traffic out of
# the recent list, so admin routes are counted in the metrics but not listed.
_ADMIN_PREFIX = "/_backworks/"
_METRICS_ROUTE = "/metrics"


class Traffic:
    """Counts and latencies per (method, route, status), the recent requests, last 5xx."""

    def __init__(self, recent: int = RECENT_REQUESTS) -> None:
        self._requests: dict[tuple[str, str, int], int] = {}  # (method, route, status)
        self._latency: dict[tuple[str, str], LatencyHistogram] = {}  # (method, route)
        # (unix time, method, path, status, seconds, plugin, request id), oldest first
        self.recent: deque[tuple[float, str, str, int, float, str | None, str]] = deque(
            maxlen=recent
        )
        # plugin -> the last 5xx answered in its name: (unix time, status, path, request id)
        self.last_error: dict[str, tuple[float, int, str, str]] = {}
        # The requests of this loop turn, not counted yet: see the module's doc.
        self._pending: list[Answered] = []
        # Called with each turn's requests before they are counted (the access log).
        self.on_flush: Callable[[list[Answered]], None] | None = None

    @property
    def requests(self) -> dict[tuple[str, str, int], int]:
        """Answers per (method, route, status), this turn's included."""
        self.flush()
        return self._requests

    @property
    def latency(self) -> dict[tuple[str, str], LatencyHistogram]:
        """Latency histograms per (method, route), this turn's requests included."""
        self.flush()
        return self._latency

    def record(
        self,
        method: str,
        route: str,
        path: str,
        status: int,
        seconds: float,
        plugin: str | None,
        request_id: str,
    ) -> None:
        """Counts one answered request under its route pattern (`path` is kept, cut, for
        the recent list only), when this loop turn ends."""
        pending = self._pending
        if not pending and self.on_flush is not None:
            # Access-log lines are due when the turn ends; counts only when read.
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop (a test, a tool): counted now
                pending.append((method, route, path, status, seconds, plugin, request_id))
                self.flush()
                return
        pending.append((method, route, path, status, seconds, plugin, request_id))
        if len(pending) >= FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        """Counts the requests recorded since the last flush."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        if self.on_flush is not None:
            self.on_flush(pending)
        requests, latency = self._requests, self._latency
        now = time.time()
        recent = self.recent
        last_error = self.last_error
        for method, route, path, status, seconds, plugin, request_id in pending:
            label = method if method in ALL_METHODS else "other"
            key = (label, route, status)
            requests[key] = requests.get(key, 0) + 1
            histogram = latency.get((label, route))
            if histogram is None:
                histogram = latency[label, route] = LatencyHistogram()
            histogram.observe(seconds)
            if route.startswith(_ADMIN_PREFIX) or route == _METRICS_ROUTE:
                continue
            recent.append((now, method, path, status, seconds, plugin, request_id))
            if plugin is not None and status >= 500:
                last_error[plugin] = (now, status, path, request_id)

    def recent_json(self) -> list[dict[str, Any]]:
        """The recent requests, newest first."""
        self.flush()
        return [
            {
                "time": when,
                "method": method[:16],
                "path": path[:512],
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
                "plugin": plugin,
                "request_id": rid,
            }
            for when, method, path, status, seconds, plugin, rid in reversed(self.recent)
        ]

    def recent_counts(self) -> dict[str, int]:
        """How many of the recent requests got each status: what anyone may see."""
        self.flush()
        counts: dict[str, int] = {}
        for entry in self.recent:
            status = str(entry[3])
            counts[status] = counts.get(status, 0) + 1
        return counts

    def last_error_json(self, plugin: str) -> dict[str, Any] | None:
        self.flush()
        last = self.last_error.get(plugin)
        if last is None:
            return None
        when, status, path, rid = last
        return {"time": when, "status": status, "path": path[:512], "request_id": rid}
