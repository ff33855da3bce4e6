"""A pooled `handle` call the lane waits for without a coroutine, and their timeouts.

The awaited path (runner.py `_call_pooled`) costs a future, a waiter, a timer and a
coroutine resumed through several loop callbacks per call. A `PooledCall` is one
object: the pool's threads hand its outcome straight to `returned`, in the batch of
completions of that loop turn (native_pool.py), and it hands the answer on to its
caller's callback. Its guards are the runner's own (admission, breaker tickets,
counters: the `Guards` below), so both paths decide alike.

A call ends once for its caller, whichever comes first:
- the native call returned: its outcome (the answer, or the error);
- its timeout passed (`Deadlines`): the cancel word is set, the caller gets a
  PluginTimeoutError at once;
- its caller went away (`cancel`): the cancel word is set, the caller gets
  (None, None).
In the last two the call keeps its slot until the native call really returns, and its
late answer is dropped then: nothing keeps it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from backworks.abi import CancelFlag, Request
from backworks.errors import PluginError
from backworks.runtime.native_pool import Returned


class Guards(Protocol):
    """What a pooled call asks of its runner (runner.py): the same steps as the awaited path."""

    def call_released(self) -> None:
        """The native call returned: its slot is free."""

    def call_ended(self, error: BaseException | None, elapsed: float, ticket: int) -> None:
        """The call's outcome reached its caller: counted and told to the breaker."""

    def call_overdue(self, ticket: int, request_id: str, *, never_started: bool) -> PluginError:
        """The call's timeout passed: counted, told to the breaker; the error to answer."""

    def call_abandoned(self, ticket: int) -> None:
        """The call's caller went away: counted, neutral to the breaker."""


class PooledCall:
    """One pooled `handle` call; `done(answer, error)` is called exactly once (see above)."""

    __slots__ = (
        "_deadlines", "_done", "_guards", "_started", "_ticket", "cancel_flag", "deadline", "req",
    )  # fmt: skip

    def __init__(
        self, guards: Guards, deadlines: Deadlines, req: Request, ticket: int, done: Returned
    ) -> None:
        self._guards = guards
        self._deadlines = deadlines
        self.req = req
        self._ticket = ticket
        self._done: Returned | None = done
        self.cancel_flag = CancelFlag()
        self._started = started = time.perf_counter()
        self.deadline = started + deadlines.timeout
        deadlines.add(self)

    def returned(self, result: Any, error: BaseException | None) -> None:
        """The native call returned (the pool calls this on the event-loop thread)."""
        guards = self._guards
        guards.call_released()
        done = self._done
        if done is None:  # timed out or abandoned: its caller has its answer already
            return
        self._done = None
        self._deadlines.discard(self)
        guards.call_ended(error, time.perf_counter() - self._started, self._ticket)
        done(result, error)

    def expire(self) -> None:
        """Its timeout passed: the plugin is told, the caller gets the timeout now."""
        done = self._done
        if done is None:
            return
        self._done = None
        self.cancel_flag.set()
        error = self._guards.call_overdue(self._ticket, self.req.request_id, never_started=False)
        done(None, error)

    def cancel(self) -> None:
        """Its caller went away: the plugin is told; the caller gets (None, None)."""
        done = self._done
        if done is None:
            return
        self._done = None
        self.cancel_flag.set()
        self._deadlines.discard(self)
        self._guards.call_abandoned(self._ticket)
        done(None, None)


class Deadlines:
    """The pooled calls of one runner waiting for their answer: one timer for them all.

    Every call of a runner has the same timeout, so they expire in the order they
    started: a dict keeps that order, forgets a call that returned at once, and the
    one timer is armed for the oldest. A timeout of 0 or less means none.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._calls: dict[PooledCall, None] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(self, call: PooledCall) -> None:
        if self.timeout <= 0:
            return
        self._calls[call] = None
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.timeout, self._sweep)

    def discard(self, call: PooledCall) -> None:
        self._calls.pop(call, None)

    def _sweep(self) -> None:
        self._timer = None
        calls = self._calls
        now = time.perf_counter()
        while calls:
            oldest = next(iter(calls))
            if oldest.deadline > now:
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(oldest.deadline - now, self._sweep)
                return
            del calls[oldest]
            oldest.expire()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._calls.clear()
