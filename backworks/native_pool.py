"""Threads that run native calls and hand the results back to the event loop in batches.

`loop.run_in_executor` costs a concurrent.futures.Future, a chained asyncio future and
one loop wake-up per call. Here a finished call appends to a deque and wakes the loop
only when no wake-up is already pending, so a burst of completions costs one wake-up.
The threads are daemons: one stuck forever in a plugin that ignores cancellation must
not keep the process from exiting.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
from collections.abc import Callable
from typing import Any

_Job = tuple[asyncio.Future[Any], Callable[..., Any], tuple[Any, ...]]


class NativePool:
    def __init__(self, threads: int, name: str) -> None:
        self.size = threads
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._done: collections.deque[tuple[asyncio.Future[Any], Any, BaseException | None]] = (
            collections.deque()
        )
        self._wakeup_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []
        # Counts idle threads: a job starts a new thread only when none is idle, so a
        # plugin whose calls are quick keeps one thread and no GIL convoy forms.
        self._idle = threading.Semaphore(0)

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Runs `fn(*args)` on a pool thread; the future completes when it returned."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._jobs.put((fut, fn, args))
        if not self._idle.acquire(blocking=False) and len(self._threads) < self.size:
            thread = threading.Thread(
                target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return fut

    def _work(self) -> None:
        loop = self._loop
        assert loop is not None
        jobs, done, idle = self._jobs, self._done, self._idle
        while (job := jobs.get()) is not None:
            fut, fn, args = job
            try:
                outcome: tuple[Any, BaseException | None] = (fn(*args), None)
            except BaseException as e:  # handed to the awaiting side, never lost
                outcome = (None, e)
            done.append((fut, *outcome))
            if not self._wakeup_pending:
                self._wakeup_pending = True
                try:
                    loop.call_soon_threadsafe(self._drain)
                except RuntimeError:  # the loop is closed: nobody is waiting any more
                    return
            idle.release()

    def _drain(self) -> None:
        # Cleared before popping: a result appended after this line schedules a new drain.
        self._wakeup_pending = False
        done = self._done
        while done:
            fut, result, error = done.popleft()
            if fut.cancelled():
                continue
            if error is None:
                fut.set_result(result)
            else:
                fut.set_exception(error)

    def close(self) -> None:
        """Lets idle threads exit; a thread stuck in a native call stays until it returns."""
        for _ in self._threads:
            self._jobs.put(None)
