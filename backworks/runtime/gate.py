"""The admission gate of one plugin state: how many calls may run on it at once.

ABI rules 4 and 5: without BW_FLAG_THREAD_SAFE at most one call runs on a state, and
`init`, `health` and `shutdown` never run beside `handle`. So the gate admits up to
`limit` shared calls (handle and the hooks), or one exclusive call, never both.
Waiters are served first come, first served, so an exclusive caller (a health check)
is not starved by a stream of requests, and a waiter gives up after its timeout.

Used from the event-loop thread only. A slot is released when the native call really
returns, not when the host stops waiting for it: a call that overran its timeout
keeps its slot (and its thread) until then.
"""

from __future__ import annotations

import asyncio
from collections import deque


class CallGate:
    """One plugin state's admission: up to `limit` shared calls, or one exclusive call."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            msg = f"limit must be >= 1 (got {limit})"
            raise ValueError(msg)
        self.limit = limit
        self.active = 0
        self._exclusive = False
        self._waiters: deque[tuple[asyncio.Future[None], bool]] = deque()

    def try_enter(self) -> bool:
        """Takes a shared slot at once if one is free and nobody is queued before us."""
        if self._waiters or self._exclusive or self.active >= self.limit:
            return False
        self.active += 1
        return True

    async def enter(self, timeout: float) -> None:
        """Takes a shared slot, waiting at most `timeout` s; raises TimeoutError."""
        if not self.try_enter():
            await self._wait(exclusive=False, timeout=timeout)

    async def enter_exclusive(self, timeout: float) -> None:
        """Waits until no other call runs, then holds the state alone."""
        if not self.try_enter_exclusive():
            await self._wait(exclusive=True, timeout=timeout)

    def try_enter_exclusive(self) -> bool:
        """Holds the state alone at once if it is idle: no call running, none waiting.

        Never queues: a caller that must not delay calls (a scheduled health check)
        tries again later instead.
        """
        if self._waiters or self._exclusive or self.active:
            return False
        self._exclusive = True
        return True

    def leave(self) -> None:
        self.active -= 1
        self._wake()

    def leave_exclusive(self) -> None:
        self._exclusive = False
        self._wake()

    async def _wait(self, *, exclusive: bool, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        entry = (fut, exclusive)
        self._waiters.append(entry)
        timer = loop.call_later(timeout, _expire, fut)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                # Granted just as we were cancelled: hand the slot back.
                self.leave_exclusive() if exclusive else self.leave()
            else:
                self._discard(entry)
            raise
        finally:
            timer.cancel()

    def _discard(self, entry: tuple[asyncio.Future[None], bool]) -> None:
        try:
            self._waiters.remove(entry)
        except ValueError:
            return
        self._wake()  # a queued exclusive waiter ahead of others may have blocked them

    def _wake(self) -> None:
        while self._waiters and not self._exclusive:
            fut, exclusive = self._waiters[0]
            if fut.done():  # expired or cancelled, not yet discarded
                self._waiters.popleft()
                continue
            if exclusive:
                if self.active:
                    return
                self._waiters.popleft()
                self._exclusive = True
                fut.set_result(None)
                return
            if self.active >= self.limit:
                return
            self._waiters.popleft()
            self.active += 1
            fut.set_result(None)


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())
