"""Runs plugin calls under a per-plugin timeout, concurrency limit and circuit breaker.

This is where a plugin call is timed out. A native call cannot be stopped from the
outside, so a timeout sets the request's `cancelled` word, answers the client at
once, and leaves the call running: it keeps its concurrency slot and its request
memory until it really returns, and its late response is released then.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from backworks import tracing
from backworks.abi import CancelFlag, Request, Response
from backworks.abi.step import CompiledStep, Wire
from backworks.abi.step import compiled_step as make_step
from backworks.errors import (
    CircuitOpenError,
    PluginCrashedError,
    PluginError,
    PluginOutcomeUnknownError,
    PluginRestartingError,
    PluginSaturatedError,
    PluginTimeoutError,
)
from backworks.names import Dispatch
from backworks.runtime.backend import Backend, PluginCalls
from backworks.runtime.breaker import CircuitBreaker
from backworks.runtime.gate import CallGate
from backworks.runtime.native_pool import Returned
from backworks.runtime.pooled import Deadlines, PooledCall
from backworks.runtime.stats import LATENCY_BUCKETS, PluginStats
from backworks.runtime.watchdog import inline_watchdog

log = structlog.get_logger("backworks.runner")

# An inline call using more CPU time than this stalls every other request. One overrun
# can be the machine's fault (a cold cache, a GC pause); INLINE_STRIKES of them within
# INLINE_STRIKE_WINDOW calls are the plugin's, and demote it to the pool.
INLINE_BUDGET_S = 0.002
INLINE_STRIKES = 3
INLINE_STRIKE_WINDOW = 1024
INLINE_MEASURED = 8  # calls measured in CPU time after one overran in wall time

# Calls in flight (and at most as many threads) per thread-safe plugin when its config
# sets no max_concurrency. The pool adds threads only for slow calls (native_pool.py),
# so for a fast plugin this is mostly queue depth: the calls waiting for its thread are
# served back to back, one loop wake-up per burst.
DEFAULT_POOL_SIZE = 64

# The PluginCalls methods each kind of call runs.
_HANDLE, _ON_REQUEST, _ON_RESPONSE = "handle", "on_request", "on_response"


class PluginRunner:
    """Guards every call into one plugin: admission, timeout, breaker, accounting.

    Dispatch: a pooled call runs on the plugin's threads (or worker processes) under a
    timeout. An inline call runs on the event-loop thread itself, which saves the
    thread hop that otherwise costs more than the native call; it is offered to
    plugins that declare BW_FLAG_NONBLOCKING (`dispatch: auto`) or whose config asks
    (`dispatch: inline`). An inline call cannot be timed out, so a plugin whose inline
    calls keep overrunning INLINE_BUDGET_S of CPU time is demoted to the pool for good,
    with a warning: a slow inline call stalls every request of the server. One that
    blocks in an inline call, or holds the loop for long, is caught while it does by the
    inline watchdog (watchdog.py) and demoted the same way. The inline path is for
    plugins one trusts to keep their word; `server.inline_calls: false` turns it off.
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
        compiled_step: bool = True,
    ) -> None:
        self.backend = backend
        self.info = backend.info
        self.name = backend.info.name
        self.gate = CallGate(max_concurrency)
        self.timeout = timeout_ms / 1000
        self.timeout_ms = timeout_ms
        self.queue_timeout = queue_timeout_ms / 1000
        self.breaker = breaker
        self._stats = PluginStats()
        self.closed = False
        # The lane's pooled calls: handed to the threads with a callback (pooled.py).
        self._run_handle = backend.handle_runner()
        self._deadlines = Deadlines(self.timeout)
        wants_inline = dispatch == "inline" or (dispatch == "auto" and self.info.nonblocking)
        self._inline: PluginCalls | None = backend.inline_calls() if wants_inline else None
        self._watchdog = inline_watchdog(INLINE_BUDGET_S) if self._inline is not None else None
        # Never set: an inline call cannot be abandoned, so one flag serves them all.
        self._inline_cancel = CancelFlag()
        self._inline_calls = 0  # made by the Python path (the step counts its own)
        self._strikes = 0
        self._measuring = 0  # calls left to measure in CPU time (see _judge_inline)
        self._first_strike = 0  # the call that made the first of the current strikes
        # The compiled step (abi/step.py) for inline calls whose answer the lane writes
        # as rendered bytes; None without the extension, or when it is turned off.
        self._retired_step: CompiledStep | None = None
        self._step = (
            make_step(
                self._inline,
                self._inline_cancel,
                INLINE_BUDGET_S,
                LATENCY_BUCKETS,
                self.gate.words,
                breaker.calm,
            )
            if self._inline is not None and compiled_step
            else None
        )
        # The plugin's `handle`, as the step calls it (the watchdog names it).
        self._step_handle = self._inline.handle if self._inline is not None else None

    @property
    def stats(self) -> PluginStats:
        """The counters, with what the compiled step counted folded in first."""
        step = self._step_counted
        if step is not None:
            self._stats.absorb(*step.take_counts())
        return self._stats

    @property
    def _step_counted(self) -> CompiledStep | None:
        # The step that counted calls: kept after a demotion, whose calls it counted.
        return self._step or self._retired_step

    @property
    def dispatch(self) -> str:
        return "inline" if self._inline is not None else "pool"

    # -- the calls ---------------------------------------------------------------

    def call(self, req: Request) -> Response | Coroutine[Any, Any, Response]:
        """The plugin's answer now when it runs inline and may be called now, else the
        coroutine of `handle(req)` to await.

        One entry for the HTTP engines' hot path: no coroutine is made for an answer
        that needs none, and nothing is done twice for one that does. Raises what
        `handle` raises.
        """
        inline = self._inline
        if inline is not None and not self.closed and tracing.TRACER is None:
            ticket = self.breaker.allow()
            if not ticket:
                raise self._refused()
            if self.gate.try_enter():
                resp: Response = self._call_inline(inline.handle, (req,), ticket)
                return resp
            self.breaker.record_neutral(ticket)  # `handle` will ask again
        return self.handle(req)

    def call_wire(
        self, req: Request, date: bytes, global_block: bytes, connection: bytes, head_only: bool
    ) -> Wire | Response | Coroutine[Any, Any, Response]:
        """`call`, with the answer rendered to the wire when the compiled step can.

        The lane's hot path: for an inline call it hands the rendering's pieces (the
        Date, the global headers' block, the Connection field, HEAD) to the compiled
        step (abi/step.py), which answers with the whole answer's bytes, or with a
        Response when it left the answer to the Python path. Same guards as `call`.
        """
        step = self._step
        if step is None or self.closed or self._measuring or tracing.TRACER is not None:
            return self.call(req)
        # No ticket and no slot taken here: the step admits the call itself only when
        # the gate has a free slot and the breaker is calm (abi/step.py), and a call it
        # answers on the wire needs neither (the breaker's module docstring says why).
        watchdog = self._watchdog
        if watchdog is not None:  # the stall guard names the call it finds held
            watchdog.current = (self, time.perf_counter(), self._step_handle, req)
        try:
            made = step.call(req, date, global_block, connection, head_only)
        except PluginError as e:
            # Called while the breaker was calm: its ticket is the closed period's.
            self._stats.calls += 1
            self._failed(e, self.breaker.allow())
            raise
        except BaseException:
            self._stats.calls += 1
            self.breaker.record_neutral(self.breaker.allow())  # the host failed around it
            raise
        finally:
            if watchdog is not None:
                watchdog.current = None
        if type(made) is Wire:  # counted by the step itself
            if made.overran:
                self._judge_inline(step.last_seconds, None)
            return made
        if made is None:  # not admitted by the step: the Python path admits it
            return self.call(req)
        self._stats.calls += 1
        elapsed = step.last_seconds
        if elapsed > INLINE_BUDGET_S:
            self._judge_inline(elapsed, None)
        self._succeeded(elapsed, self.breaker.allow())
        return made

    @property
    def hands_off(self) -> bool:
        """True when `submit` hands calls to the threads: a pooled plugin in this process."""
        return self._inline is None and self._run_handle is not None

    def submit(self, req: Request, done: Returned) -> PooledCall | Coroutine[Any, Any, Response]:
        """`handle(req)` on the plugin's threads, without a coroutine (see pooled.py).

        `done(answer, error)` is called once on the event-loop thread: (answer, None),
        (None, error), or (None, None) once the returned call was cancelled. Same
        guards as `handle`; admission refusals are raised here. Where the call cannot be
        handed over now (it has to wait for a slot, tracing is on, the plugin is not
        pooled), the coroutine of the same call is returned instead, to await.
        """
        run = self._run_handle
        if run is None or self._inline is not None or tracing.TRACER is not None:
            return self.handle(req)
        ticket = self._admit()
        if not self.gate.try_enter():
            return self._call_when_admitted(req, ticket)
        stats = self._stats
        stats.calls += 1
        stats.in_flight += 1
        call = PooledCall(self, self._deadlines, req, ticket, done)
        run(req, call.cancel_flag, call.returned)
        return call

    async def _call_when_admitted(self, req: Request, ticket: int) -> Response:
        await self._wait_for_slot(ticket)
        resp: Response = await self._call_pooled(self.backend.start_handle, (req,), ticket)
        return resp

    # Tracing (backworks/tracing.py): with OpenTelemetry on, the same `_call` runs inside
    # a span; without it, the one check below is all it costs.

    async def handle(self, req: Request) -> Response:
        """Calls the plugin's `handle` under every guard (see the class docstring)."""
        start = self.backend.start_handle
        if tracing.TRACER is not None:
            traced: Response = await tracing.plugin_call(self, _HANDLE, self._call, start, req)
            return traced
        resp: Response = await self._call(start, _HANDLE, (req,))
        return resp

    async def on_request(self, req: Request) -> Response | None:
        """Calls the plugin's request hook; None lets the request go on."""
        start = self.backend.start_on_request
        if tracing.TRACER is not None:
            hooked: Response | None = await tracing.plugin_call(
                self, _ON_REQUEST, self._call, start, req
            )
            return hooked
        resp: Response | None = await self._call(start, _ON_REQUEST, (req,))
        return resp

    async def on_response(self, req: Request, upstream: Response) -> Response | None:
        """Calls the plugin's response hook; None keeps `upstream`."""
        start = self.backend.start_on_response
        if tracing.TRACER is not None:
            replaced: Response | None = await tracing.plugin_call(
                self, _ON_RESPONSE, self._call, start, req, upstream
            )
            return replaced
        resp: Response | None = await self._call(start, _ON_RESPONSE, (req, upstream))
        return resp

    async def health(self, timeout: float, *, wait: bool = True) -> Response | None:
        """The plugin's own report; runs alone on the state (ABI rule 5).

        `wait`: wait up to `timeout` for the state (the calls running finish first, and
        calls that arrive later queue behind the check). Without it the state is taken
        only if it is idle now, else PluginSaturatedError is raised at once: a check on
        a schedule never queues in front of calls. The check itself gets `timeout`
        either way; one that overruns it keeps the state until it really returns.
        """
        if not self.info.has_health:
            return None
        if wait:
            await self.gate.enter_exclusive(timeout)
        elif not self.gate.try_enter_exclusive():
            msg = "the plugin is busy: calls are running or waiting"
            raise PluginSaturatedError(self.name, msg)
        fut = self.backend.start_health()
        fut.add_done_callback(lambda _: self.gate.leave_exclusive())
        if not await _wait(fut, timeout):
            msg = f"health check did not return within {timeout * 1000:.0f} ms"
            raise PluginTimeoutError(self.name, msg)
        return fut.result()

    async def _call(
        self, start: Callable[..., asyncio.Future[Any]], kind: str, args: tuple[Any, ...]
    ) -> Any:
        ticket = self._admit()
        if not self.gate.try_enter():
            await self._wait_for_slot(ticket)
        inline = self._inline
        if inline is not None:
            return self._call_inline(getattr(inline, kind), args, ticket)
        return await self._call_pooled(start, args, ticket)

    def _admit(self) -> int:
        """The breaker's ticket for a call, or the refusal raised (shutting down, open)."""
        if self.closed:
            raise PluginSaturatedError(self.name, "the server is shutting down")
        ticket = self.breaker.allow()
        if not ticket:
            raise self._refused()
        return ticket

    def _refused(self) -> CircuitOpenError:
        self._stats.rejected += 1
        breaker = self.breaker
        msg = (
            f"circuit open after {breaker.consecutive_failures} consecutive failures; "
            f"retrying after {breaker.recovery_timeout * 1000:.0f} ms"
        )
        return CircuitOpenError(self.name, msg)

    async def _wait_for_slot(self, ticket: int) -> None:
        try:
            await self.gate.enter(self.queue_timeout)
        except BaseException as e:
            self.breaker.record_neutral(ticket)
            if not isinstance(e, TimeoutError):
                raise
            self._stats.rejected += 1
            msg = (
                f"all {self.gate.limit} concurrency slots stayed busy for "
                f"{self.queue_timeout * 1000:.0f} ms"
            )
            raise PluginSaturatedError(self.name, msg) from None

    def _call_inline(self, fn: Callable[..., Any], args: tuple[Any, ...], ticket: int) -> Any:
        stats = self._stats
        stats.calls += 1
        measuring = self._measuring
        cpu_started = time.thread_time() if measuring else 0.0
        started = time.perf_counter()
        watchdog = self._watchdog
        if watchdog is not None:
            watchdog.current = (self, started, fn, args[0] if args else None)
        try:
            result = fn(*args, self._inline_cancel)
        except PluginError as e:
            self._failed(e, ticket)
            raise
        except BaseException:
            self.breaker.record_neutral(ticket)  # the host failed around the call
            raise
        finally:
            if watchdog is not None:
                watchdog.current = None
            self.gate.leave()
            elapsed = time.perf_counter() - started
            self._inline_calls += 1
            if measuring or elapsed > INLINE_BUDGET_S:
                self._judge_inline(elapsed, cpu_started if measuring else None)
        self._succeeded(elapsed, ticket)
        return result

    def _judge_inline(self, elapsed: float, cpu_started: float | None) -> None:
        """Weighs an inline call that overran in wall time, or one measured after that.

        Overruns are judged on the calling thread's CPU time, not on wall time: on a
        busy machine a 1 us call that is preempted takes milliseconds of wall time. But
        reading a thread's CPU clock is a system call costing as much as a fast plugin
        call, so it is read only after a call overran in wall time, for the next
        INLINE_MEASURED calls: a plugin that is really slow overruns again, in CPU time.
        """
        if cpu_started is None:
            self._measuring = INLINE_MEASURED
            return
        self._measuring -= 1
        elapsed = time.thread_time() - cpu_started
        if elapsed <= INLINE_BUDGET_S:
            return
        calls = self._inline_count()
        if self._strikes and calls - self._first_strike > INLINE_STRIKE_WINDOW:
            self._strikes = 0  # the earlier overruns were long ago: forgiven
        self._strikes += 1
        if self._strikes == 1:
            self._first_strike = calls
        if self._strikes < INLINE_STRIKES:
            log.info(
                "plugin_inline_overrun",
                plugin=self.name,
                duration_ms=round(elapsed * 1000, 3),
                strikes=self._strikes,
            )
            return
        self.demote("its inline calls kept overrunning their CPU budget", elapsed)

    def _inline_count(self) -> int:
        """Inline calls made so far: the Python path's, and the compiled step's."""
        step = self._step_counted
        return self._inline_calls + (step.total if step is not None else 0)

    def demote(self, reason: str, held_s: float) -> None:
        """Moves this plugin's calls off the event loop, for good (see the class doc).

        Called by the runner's own judgement and by the inline watchdog's thread: one
        reference assignment, safe from either.
        """
        if self._inline is None:
            return
        self._inline = None
        self._retired_step, self._step = self._step, None
        log.warning(
            "plugin_demoted_to_pool",
            plugin=self.name,
            duration_ms=round(held_s * 1000, 3),
            budget_ms=INLINE_BUDGET_S * 1000,
            reason=reason,
        )

    async def _call_pooled(
        self, start: Callable[..., asyncio.Future[Any]], args: tuple[Any, ...], ticket: int
    ) -> Any:
        cancel = CancelFlag()
        self._stats.calls += 1
        self._stats.in_flight += 1
        started = time.perf_counter()
        fut = start(*args, cancel)
        fut.add_done_callback(self._returned)
        try:
            finished = await _wait(fut, self.timeout)
        except asyncio.CancelledError:
            # The request was abandoned (its client went away, or shutdown): tell the
            # plugin through the cancel word, keep the slot until the call returns.
            cancel.set()
            self.backend.abandon(fut)
            self.call_abandoned(ticket)
            raise
        if not finished:
            cancel.set()
            never_started = self.backend.abandon(fut)
            raise self.call_overdue(ticket, args[0].request_id, never_started=never_started)
        try:
            result = fut.result()
        except BaseException as e:
            self.call_ended(e, 0.0, ticket)
            raise
        self.call_ended(None, time.perf_counter() - started, ticket)
        return result

    # -- a pooled call's steps, shared by the awaited path above and pooled.py's ---------

    def call_released(self) -> None:
        """The native call really returned: only now its slot is free again."""
        self._stats.in_flight -= 1
        self.gate.leave()

    def call_ended(self, error: BaseException | None, elapsed: float, ticket: int) -> None:
        """A pooled call's outcome reached its caller: counted, and told to the breaker."""
        if error is None:
            self._succeeded(elapsed, ticket)
        elif isinstance(error, PluginError):
            self._failed(error, ticket)
        else:
            self.breaker.record_neutral(ticket)  # the host failed around the call

    def call_abandoned(self, ticket: int) -> None:
        """The caller went away (its client, or shutdown); the cancel word is set."""
        self._stats.cancelled += 1
        self.breaker.record_neutral(ticket)

    def call_overdue(self, ticket: int, request_id: str, *, never_started: bool) -> PluginError:
        """A pooled call outran its timeout (its cancel word is set): the error to answer.

        `never_started`: it waited for a worker all along (they were restarting): not a
        timeout, the plugin never saw it; the client may try again at once.
        """
        if never_started:
            self._stats.rejected += 1
            self.breaker.record_neutral(ticket)
            log.warning(
                "plugin_call_not_started",
                plugin=self.name,
                timeout_ms=self.timeout_ms,
                request_id=request_id,
                reason="no worker took the call within its timeout",
            )
            msg = f"no worker took the call within its timeout_ms of {self.timeout_ms}"
            return PluginRestartingError(self.name, msg)
        self._stats.timed_out += 1
        self.breaker.record_failure(ticket)
        log.warning(
            "plugin_timeout", plugin=self.name, timeout_ms=self.timeout_ms, request_id=request_id
        )
        return PluginTimeoutError(self.name, f"no answer within {self.timeout_ms} ms")

    def _succeeded(self, elapsed: float, ticket: int) -> None:
        self._stats.ok += 1
        self._stats.observe(elapsed)
        self.breaker.record_success(ticket)

    def _failed(self, error: PluginError, ticket: int) -> None:
        self._stats.failed += 1
        if isinstance(error, PluginCrashedError):
            self._stats.crashed += 1
            if isinstance(error, PluginOutcomeUnknownError):
                self._stats.outcome_unknown += 1
            if not error.counted:
                # Lost with a worker whose death another call already counted: one
                # crash is one failure, however many calls it held.
                self.breaker.record_neutral(ticket)
                return
        self.breaker.record_failure(ticket)

    def _returned(self, fut: asyncio.Future[Any]) -> None:
        """The awaited call's future is done: the native call really returned."""
        self.call_released()
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
                in_flight=self._stats.in_flight,
                reason="calls still running after the drain timeout",
            )
            self.backend.close()
            return False
        # Every call has returned: the timeout sweep's timer would only keep this alive.
        self._deadlines.close()
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
            "compiled_step": self._step is not None,
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
