"""Health checks on a schedule: the public routes read the last result, run no plugin code.

ABI rule 5 makes a plugin's `health` exclusive on its state: while it runs, no call
does. Run on every request of an unauthenticated route, as it once was, it let anyone
stall a plugin by polling. So each running version has a `HealthMonitor`, started and
stopped with it (host.py):

- every `health_interval_ms` it checks the plugin, taking the state only when it is
  idle (no call running or waiting): a scheduled check never queues in front of
  calls. If the state is busy it tries again soon, backing off up to RETRY_MAX_S;
- the check gets `health_timeout_ms`. One that overruns it is recorded as timed out
  at once; the plugin keeps its state until its `health` really returns (rule 5);
- `check_now` runs one check at an operator's request (the authenticated admin
  route): it waits for the state, as a call would.

Each result is a `HealthReport`: its status and time are public, the plugin's own text
(its report body, its failure message) only for operators.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import attrs
import structlog

from backworks.abi import Response
from backworks.errors import PluginError, PluginSaturatedError, PluginTimeoutError
from backworks.runtime.runner import PluginRunner

log = structlog.get_logger("backworks.health")

# How soon a scheduled check tries again when the state was busy, doubling up to the max.
RETRY_FIRST_S = 0.02
RETRY_MAX_S = 1.0

# ABI: a report's status says how the plugin is; anything else counts as unhealthy.
_STATES = {200: "healthy", 429: "degraded"}


@attrs.frozen
class HealthReport:
    """One health check: what the plugin reported, or why it reported nothing, and when."""

    status: int  # the plugin's (200, 429, 503, ...), or 503 when the check failed
    state: str  # healthy, degraded, unhealthy, failed, timed_out
    at: float  # when the check finished (time.time())
    duration_ms: float
    trigger: str  # schedule or admin
    details: Any = None  # the plugin's report body (JSON, else text): for operators
    error: str | None = None  # why the check failed (may quote the plugin): for operators

    @classmethod
    def of(cls, resp: Response, started: float, trigger: str) -> HealthReport:
        """The report a plugin's answer makes."""
        try:
            details: Any = json.loads(resp.body) if resp.body else None
        except ValueError:
            details = resp.body.decode("utf-8", "replace")
        state = _STATES.get(resp.status, "unhealthy")
        return cls(resp.status, state, time.time(), _since(started), trigger, details)

    @classmethod
    def failed(cls, error: PluginError, started: float, trigger: str) -> HealthReport:
        """The report of a check that failed, timed out or found the plugin crashed."""
        state = "timed_out" if isinstance(error, PluginTimeoutError) else "failed"
        return cls(503, state, time.time(), _since(started), trigger, error=error.message)

    def public_json(self) -> dict[str, Any]:
        """What any client may see: how the plugin is and since when, in our words."""
        return {
            "status": self.status,
            "state": self.state,
            "at": self.at,
            "duration_ms": self.duration_ms,
            "trigger": self.trigger,
        }

    def admin_json(self) -> dict[str, Any]:
        """What an operator sees: the public part and the plugin's own words."""
        return {**self.public_json(), "details": self.details, "error": self.error}


class HealthMonitor:
    """One running version's health checks: on a schedule, and on an operator's request."""

    def __init__(self, runner: PluginRunner, *, interval_ms: int, timeout_ms: int) -> None:
        self.runner = runner
        self.interval = interval_ms / 1000
        self.timeout = timeout_ms / 1000
        self.last: HealthReport | None = None
        self.checks = 0  # finished checks, scheduled or asked for
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    @property
    def has_health(self) -> bool:
        return self.runner.info.has_health

    def start(self) -> None:
        """Starts the schedule (a first check at once); does nothing if already started.

        No schedule for a plugin without `health`, or with `health_interval_ms: 0`.
        """
        if self._task is not None or self._stopped or not self.has_health or not self.interval:
            return
        self._task = asyncio.create_task(self._schedule(), name=f"health-{self.runner.name}")

    async def stop(self) -> None:
        """Stops the schedule; a check in progress is abandoned (the plugin keeps the
        state until its `health` returns, as after a timeout)."""
        self._stopped = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def check_now(self) -> HealthReport | None:
        """Runs one check now, waiting for the state like a call; None without `health`."""
        if not self.has_health:
            return None
        started = time.perf_counter()
        try:
            resp = await self.runner.health(self.timeout)
        except TimeoutError:
            msg = f"the state stayed busy for {self.timeout * 1000:.0f} ms (health_timeout_ms)"
            error = PluginTimeoutError(self.runner.name, msg)
            return self._record(HealthReport.failed(error, started, "admin"))
        except PluginError as e:
            return self._record(HealthReport.failed(e, started, "admin"))
        if resp is None:
            return None
        return self._record(HealthReport.of(resp, started, "admin"))

    def public_json(self) -> dict[str, Any]:
        """The last result as any client may see it (`pending` before the first)."""
        if self.last is None:
            return {
                "status": None,
                "state": "pending",
                "at": None,
                "duration_ms": None,
                "trigger": None,
            }
        return self.last.public_json()

    async def _schedule(self) -> None:
        while True:
            await self._check_when_idle()
            await asyncio.sleep(self.interval)

    async def _check_when_idle(self) -> None:
        delay = RETRY_FIRST_S
        while True:
            started = time.perf_counter()
            try:
                resp = await self.runner.health(self.timeout, wait=False)
            except PluginSaturatedError:
                # Busy: calls run or wait. Never queue in front of them; look again soon.
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            except PluginError as e:
                self._record(HealthReport.failed(e, started, "schedule"))
                return
            if resp is not None:
                self._record(HealthReport.of(resp, started, "schedule"))
            return

    def _record(self, report: HealthReport) -> HealthReport:
        before, self.last = self.last, report
        self.checks += 1
        if before is None or before.state != report.state:
            event = log.info if report.state == "healthy" else log.warning
            event(
                "plugin_health_changed",
                plugin=self.runner.name,
                state=report.state,
                status=report.status,
                was=before.state if before else None,
                error=report.error,
                trigger=report.trigger,
            )
        return report


def _since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
