"""Threads that run native calls, handed work and results in batches, one wake-up each.

`loop.run_in_executor` costs a concurrent.futures.Future, a chained asyncio future and
a thread wake-up and a loop wake-up per call. Here both directions are batched. Calls
submitted during one turn of the event loop are queued and a thread is woken once, at
the end of the turn, for all of them; a thread runs every queued call before it waits
again. A finished call appends to a deque and wakes the loop only when no wake-up is
already pending, so a burst of completions costs one wake-up. On a busy server that
turns two context switches per call into a few per loop turn. The threads are
daemons: one stuck forever in a plugin that ignores cancellation must not keep the
process from exiting.

A call is handed back either to a future (`submit`, for callers that await) or to a
callback (`run`, for the lane's pooled calls, which need no coroutine per request:
runner.py). Both are one kind of job; a future is merely the callback that sets it.

Threads are added only when they pay off. A second thread for a plugin whose calls take
microseconds only adds GIL hand-offs (measured here: one thread with 64 calls queued
served 8.2k requests/s, six threads 5.2k), while a plugin that blocks for milliseconds
needs one thread per call in flight. So the pool starts with one thread, and when a
call has waited SLOW_CALL_S for a thread (the threads are held by slow calls, not
merely busy with many quick ones, which empty the queue far sooner) it wakes an idle
thread or adds one, up to `threads`.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import structlog

log = structlog.get_logger("backworks.pool")

# Given a call's outcome on the event-loop thread: (result, None) or (None, error).
Returned = Callable[[Any, BaseException | None], None]
_Job = tuple[Returned, Callable[..., Any], tuple[Any, ...]]

# Longer than the GIL's switch interval (5 ms): a thread that merely waits for the GIL
# is not a thread stuck in a slow call, and must not make the pool grow.
SLOW_CALL_S = 0.02


class NativePool:
    """One plugin's call threads: grows only for slow calls, batches hand-offs both ways."""

    def __init__(self, threads: int, name: str) -> None:
        self.size = threads
        self._name = name
        # Calls waiting for a thread; any thread takes the next one (deque ops are atomic).
        self._queued: collections.deque[_Job] = collections.deque()
        # One token per batch: wakes a thread to run the queued calls (None: exit).
        self._wake: queue.SimpleQueue[bool | None] = queue.SimpleQueue()
        self._flush_pending = False
        self._done: collections.deque[tuple[Returned, Any, BaseException | None]] = (
            collections.deque()
        )
        self._wakeup_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []
        self._growth_check: asyncio.TimerHandle | None = None

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Runs `fn(*args)` on a pool thread; the future completes when it returned."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.run(partial(_settle, fut), fn, args)
        return fut

    def run(self, returned: Returned, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        """Runs `fn(*args)` on a pool thread; `returned(result, error)` is called on the
        event-loop thread when it returned, with the other completions of its batch.

        Call from the event-loop thread. `returned` must not raise (what it raises is
        logged, and the rest of the batch is still handed back).
        """
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        self._queued.append((returned, fn, args))
        if not self._flush_pending:
            self._flush_pending = True
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        """The end of a loop turn: one thread is woken for everything queued in it."""
        self._flush_pending = False
        if not self._queued:
            return
        if not self._threads:
            self._add_thread()
        self._wake.put(True)
        self._check_growth()

    def _check_growth(self) -> None:
        """In SLOW_CALL_S, sees whether the newest call queued now has started."""
        if self._growth_check is None and len(self._threads) < self.size and self._queued:
            assert self._loop is not None
            newest = self._queued[-1]
            self._growth_check = self._loop.call_later(SLOW_CALL_S, self._grow, newest)

    def _add_thread(self) -> None:
        thread = threading.Thread(
            target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
        )
        thread.start()
        self._threads.append(thread)

    def _grow(self, newest_then: _Job) -> None:
        """A call has waited SLOW_CALL_S for a thread: the threads are held by slow calls
        (quick ones would have emptied the queue by now). Wakes a thread that may be
        idle, and adds one if allowed."""
        self._growth_check = None
        if not any(job is newest_then for job in self._queued):
            return  # it started: the threads keep up
        self._wake.put(True)
        if len(self._threads) < self.size:
            self._add_thread()
        self._check_growth()

    def _work(self) -> None:
        loop = self._loop
        assert loop is not None
        queued, done = self._queued, self._done
        while self._wake.get() is not None:
            while True:
                try:
                    returned, fn, args = queued.popleft()
                except IndexError:
                    break
                try:
                    outcome: tuple[Any, BaseException | None] = (fn(*args), None)
                except BaseException as e:  # handed to the awaiting side, never lost
                    outcome = (None, e)
                done.append((returned, *outcome))
                # Dropped before this thread waits for its next call, which may be long:
                # an idle thread must not keep its last answer (megabytes, say) or request.
                del returned, fn, args, outcome
                if not self._wakeup_pending:
                    self._wakeup_pending = True
                    try:
                        loop.call_soon_threadsafe(self._drain)
                    except RuntimeError:  # the loop is closed: nobody is waiting any more
                        return

    def _drain(self) -> None:
        # Cleared before popping: a result appended after this line schedules a new drain.
        self._wakeup_pending = False
        done = self._done
        while done:
            returned, result, error = done.popleft()
            try:
                returned(result, error)
            except Exception:  # one caller's bug must not strand the rest of the batch
                log.exception("pool_completion_failed", pool=self._name)
            del returned, result, error  # the last answer is not kept until the next batch

    def close(self) -> None:
        """Lets idle threads exit; a thread stuck in a native call stays until it returns."""
        if self._growth_check is not None:
            self._growth_check.cancel()
        for _ in self._threads:
            self._wake.put(None)


def _settle(fut: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    """`submit`'s callback: the future gets the outcome, unless its awaiter gave up."""
    if fut.cancelled():
        return
    if error is None:
        fut.set_result(result)
    else:
        fut.set_exception(error)
