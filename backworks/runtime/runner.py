"""Runs plugin calls under a per-plugin timeout, concurrency limit and circuit breaker.

This is where a plugin call is timed out. A native call cannot be stopped from the
outside, so a timeout sets the request's `cancelled` word, answers the client at
once, and leaves the call running: it keeps its concurrency slot and its request
memory until it really returns, and its late response is released then.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog

from backworks import tracing
from backworks.abi import CancelFlag, Request, Response
from backworks.errors import (
    CircuitOpenError,
    PluginCrashedError,
    PluginError,
    PluginSaturatedError,
    PluginTimeoutError,
)
from backworks.names import Dispatch
from backworks.runtime.backend import Backend, PluginCalls
from backworks.runtime.breaker import CircuitBreaker
from backworks.runtime.gate import CallGate
from backworks.runtime.stats import PluginStats

log = structlog.get_logger("backworks.runner")

# An inline call using more CPU time than this stalls every other request. One overrun
# can be the machine's fault (a cold cache, a GC pause); INLINE_STRIKES of them within
# INLINE_STRIKE_WINDOW calls are the plugin's, and demote it to the pool.
INLINE_BUDGET_S = 0.002
INLINE_STRIKES = 3
INLINE_STRIKE_WINDOW = 1024

# Calls in flight (and at most as many threads) per thread-safe plugin when its config
# sets no max_concurrency. The pool adds threads only for slow calls (native_pool.py),
# so for a fast plugin this is mostly queue depth: the calls waiting for its thread are
# served back to back, one loop wake-up per burst.
DEFAULT_POOL_SIZE = 64


class PluginRunner:
    """Guards every call into one plugin: admission, timeout, breaker, accounting.

    Dispatch: a pooled call runs on the plugin's threads (or worker processes) under a
    timeout. An inline call runs on the event-loop thread itself, which saves the
    thread hop that otherwise costs more than the native call; it is offered to
    plugins that declare BW_FLAG_NONBLOCKING (`dispatch: auto`) or whose config asks
    (`dispatch: inline`). An inline call cannot be timed out, so a plugin whose inline
    calls keep overrunning INLINE_BUDGET_S is demoted to the pool for good, with a
    warning: a slow inline call stalls every request of the server.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        max_concurrency: int,
        timeout_ms: int,
        queue_timeout_ms: int,
        breaker: CircuitBreaker,
        dispatch: Dispatch = "auto",
    ) -> None:
        self.backend = backend
        self.info = backend.info
        self.name = backend.info.name
        self.gate = CallGate(max_concurrency)
        self.timeout = timeout_ms / 1000
        self.timeout_ms = timeout_ms
        self.queue_timeout = queue_timeout_ms / 1000
        self.breaker = breaker
        self.stats = PluginStats()
        self.closed = False
        wants_inline = dispatch == "inline" or (dispatch == "auto" and self.info.nonblocking)
        self._inline: PluginCalls | None = backend.inline_calls() if wants_inline else None
        # Never set: an inline call cannot be abandoned, so one flag serves them all.
        self._inline_cancel = CancelFlag()
        self._inline_calls = 0
        self._strikes = 0

    @property
    def dispatch(self) -> str:
        return "inline" if self._inline is not None else "pool"

    # -- the calls ---------------------------------------------------------------

    # Tracing (backworks/tracing.py): with OpenTelemetry on, the same `_call` runs inside
    # a span; without it, the one check below is all it costs.

    async def handle(self, req: Request) -> Response:
        inline = self._inline
        start, fast = self.backend.start_handle, inline.handle if inline else None
        if tracing.TRACER is not None:
            traced: Response = await tracing.plugin_call(
                self, "handle", self._call, start, fast, req
            )
            return traced
        resp: Response = await self._call(start, fast, req)
        return resp

    async def on_request(self, req: Request) -> Response | None:
        inline = self._inline
        start, fast = self.backend.start_on_request, inline.on_request if inline else None
        if tracing.TRACER is not None:
            hooked: Response | None = await tracing.plugin_call(
                self, "on_request", self._call, start, fast, req
            )
            return hooked
        resp: Response | None = await self._call(start, fast, req)
        return resp

    async def on_response(self, req: Request, upstream: Response) -> Response | None:
        inline = self._inline
        start, fast = self.backend.start_on_response, inline.on_response if inline else None
        if tracing.TRACER is not None:
            replaced: Response | None = await tracing.plugin_call(
                self, "on_response", self._call, start, fast, req, upstream
            )
            return replaced
        resp: Response | None = await self._call(start, fast, req, upstream)
        return resp

    async def health(self, timeout: float) -> Response | None:
        """The plugin's own report; runs alone on the state (ABI rule 5)."""
        if not self.info.has_health:
            return None
        await self.gate.enter_exclusive(timeout)
        fut = self.backend.start_health()
        fut.add_done_callback(lambda _: self.gate.leave_exclusive())
        if not await _wait(fut, timeout):
            msg = f"health check did not return within {timeout * 1000:.0f} ms"
            raise PluginTimeoutError(self.name, msg)
        return fut.result()

    async def _call(
        self,
        start: Callable[..., asyncio.Future[Any]],
        inline: Callable[..., Any] | None,
        *args: Any,
    ) -> Any:
        if self.closed:
            raise PluginSaturatedError(self.name, "the server is shutting down")
        breaker = self.breaker
        if not breaker.allow():
            self.stats.rejected += 1
            msg = (
                f"circuit open after {breaker.consecutive_failures} consecutive failures; "
                f"retrying after {breaker.recovery_timeout * 1000:.0f} ms"
            )
            raise CircuitOpenError(self.name, msg)
        if not self.gate.try_enter():
            await self._wait_for_slot()
        if inline is not None and self._inline is not None:
            return self._call_inline(inline, args)
        return await self._call_pooled(start, args)

    async def _wait_for_slot(self) -> None:
        try:
            await self.gate.enter(self.queue_timeout)
        except BaseException as e:
            self.breaker.record_neutral()
            if not isinstance(e, TimeoutError):
                raise
            self.stats.rejected += 1
            msg = (
                f"all {self.gate.limit} concurrency slots stayed busy for "
                f"{self.queue_timeout * 1000:.0f} ms"
            )
            raise PluginSaturatedError(self.name, msg) from None

    def _call_inline(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        stats = self.stats
        stats.calls += 1
        started = time.perf_counter()
        cpu_started = time.thread_time()
        try:
            result = fn(*args, self._inline_cancel)
        except PluginError as e:
            self._failed(e)
            raise
        finally:
            self.gate.leave()
            # Judged on this thread's CPU time, not wall time: on a busy machine a 1 µs
            # call that is preempted would otherwise count as an overrun.
            self._judge_inline(time.thread_time() - cpu_started)
        self._succeeded(time.perf_counter() - started)
        return result

    def _judge_inline(self, elapsed: float) -> None:
        """Counts an inline call of `elapsed` CPU seconds; demotes after repeated overruns."""
        self._inline_calls += 1
        if self._inline_calls % INLINE_STRIKE_WINDOW == 0:
            self._strikes = 0
        if elapsed <= INLINE_BUDGET_S:
            return
        self._strikes += 1
        if self._strikes < INLINE_STRIKES:
            log.info(
                "plugin_inline_overrun",
                plugin=self.name,
                duration_ms=round(elapsed * 1000, 3),
                strikes=self._strikes,
            )
            return
        self._inline = None
        log.warning(
            "plugin_demoted_to_pool",
            plugin=self.name,
            duration_ms=round(elapsed * 1000, 3),
            budget_ms=INLINE_BUDGET_S * 1000,
            reason="an inline call overran its budget and stalled the event loop",
        )

    async def _call_pooled(
        self, start: Callable[..., asyncio.Future[Any]], args: tuple[Any, ...]
    ) -> Any:
        cancel = CancelFlag()
        self.stats.calls += 1
        self.stats.in_flight += 1
        started = time.perf_counter()
        fut = start(*args, cancel)
        fut.add_done_callback(self._returned)
        try:
            finished = await _wait(fut, self.timeout)
        except asyncio.CancelledError:
            # The request was abandoned (shutdown): tell the plugin, keep the slot.
            cancel.set()
            self.backend.abandon(fut)
            self.breaker.record_neutral()
            raise
        if not finished:
            cancel.set()
            self.backend.abandon(fut)
            self.stats.timed_out += 1
            self.breaker.record_failure()
            log.warning(
                "plugin_timeout",
                plugin=self.name,
                timeout_ms=self.timeout_ms,
                request_id=args[0].request_id,
            )
            raise PluginTimeoutError(self.name, f"no answer within {self.timeout_ms} ms")
        try:
            result = fut.result()
        except PluginError as e:
            self._failed(e)
            raise
        self._succeeded(time.perf_counter() - started)
        return result

    def _succeeded(self, elapsed: float) -> None:
        self.stats.ok += 1
        self.stats.observe(elapsed)
        self.breaker.record_success()

    def _failed(self, error: PluginError) -> None:
        self.stats.failed += 1
        if isinstance(error, PluginCrashedError):
            self.stats.crashed += 1
        self.breaker.record_failure()

    def _returned(self, fut: asyncio.Future[Any]) -> None:
        """The native call really returned: only now its slot is free again."""
        self.stats.in_flight -= 1
        self.gate.leave()
        if not fut.cancelled() and fut.exception() is None:
            return
        # Consumed here so asyncio does not report an exception nobody retrieved
        # (a late failure after a timeout has already been answered).
        if not fut.cancelled():
            fut.exception()

    # -- lifecycle ---------------------------------------------------------------

    async def close(self, drain_timeout: float) -> bool:
        """Waits for in-flight calls, then calls `shutdown` once. False if it could not.

        A call that never returns (a plugin ignoring cancellation) would make
        `shutdown` free state that call still uses, so then it is skipped.
        """
        self.closed = True
        try:
            await self.gate.enter_exclusive(drain_timeout)
        except TimeoutError:
            log.warning(
                "plugin_shutdown_skipped",
                plugin=self.name,
                in_flight=self.stats.in_flight,
                reason="calls still running after the drain timeout",
            )
            self.backend.close()
            return False
        try:
            await self.backend.start_shutdown()
        except Exception as e:
            log.warning("plugin_shutdown_failed", plugin=self.name, error=str(e))
        finally:
            self.gate.leave_exclusive()
            self.backend.close()
        return True

    def snapshot(self) -> dict[str, Any]:
        return {
            "circuit": self.breaker.state.value,
            "consecutive_failures": self.breaker.consecutive_failures,
            "circuit_opened": self.breaker.times_opened,
            "max_concurrency": self.gate.limit,
            "timeout_ms": self.timeout_ms,
            "dispatch": self.dispatch,
            **self.backend.snapshot(),
            "counters": self.stats.to_json(),
        }


async def _wait(fut: asyncio.Future[Any], timeout: float) -> bool:
    """Waits for `fut` without ever cancelling it; False when `timeout` s passed first."""
    if fut.done():
        return True
    if timeout <= 0:
        await asyncio.shield(fut)
        return True
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    fut.add_done_callback(wake)
    timer = loop.call_later(timeout, wake)
    try:
        await waiter
    finally:
        timer.cancel()
        fut.remove_done_callback(wake)
    return fut.done()
