"""The admission gate of one plugin state: how many calls may run on it at once.

ABI rules 4 and 5: without BW_FLAG_THREAD_SAFE at most one call runs on a state, and
`init`, `health` and `shutdown` never run beside `handle`. So the gate admits up to
`limit` shared calls (handle and the hooks), or one exclusive call, never both.
Waiters are served first come, first served, so an exclusive caller (a health check)
is not starved by a stream of requests, and a waiter gives up after its timeout.

Used from the event-loop thread only. A slot is released when the native call really
returns, not when the host stops waiting for it: a call that overran its timeout
keeps its slot (and its thread) until then.

The gate's state lives in `words`, an array of machine words the compiled step
(abi/step.c) reads without Python: the active count, the exclusive holder, whether
anyone waits, and the limit. An inline step call begins and ends inside one C call on
the loop thread, which is the only thread that touches the gate, so nothing can see
the gate while it runs: the step only checks that a shared slot is free now (see
`free`) and takes none; otherwise it declines and the Python path enters as usual.
"""

from __future__ import annotations

import asyncio
from array import array
from collections import deque

# The indexes of CallGate.words (step.c's BWS_GATE_*).
ACTIVE, EXCLUSIVE, QUEUED, LIMIT = range(4)


class CallGate:
    """One plugin state's admission: up to `limit` shared calls, or one exclusive call."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            msg = f"limit must be >= 1 (got {limit})"
            raise ValueError(msg)
        self.limit = limit
        # The one copy of the gate's state besides the waiters themselves (QUEUED says
        # whether there are any): see the module's docstring.
        self.words = array("q", (0, 0, 0, limit))
        self._waiters: deque[tuple[asyncio.Future[None], bool]] = deque()

    @property
    def active(self) -> int:
        """Shared calls holding a slot now."""
        return self.words[ACTIVE]

    def free(self) -> bool:
        """Whether a shared call would be admitted at once (what the compiled step checks)."""
        words = self.words
        return not words[QUEUED] and not words[EXCLUSIVE] and words[ACTIVE] < words[LIMIT]

    def try_enter(self) -> bool:
        """Takes a shared slot at once if one is free and nobody is queued before us."""
        words = self.words
        if words[QUEUED] or words[EXCLUSIVE] or words[ACTIVE] >= words[LIMIT]:
            return False
        words[ACTIVE] += 1
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
        words = self.words
        if words[QUEUED] or words[EXCLUSIVE] or words[ACTIVE]:
            return False
        words[EXCLUSIVE] = 1
        return True

    def leave(self) -> None:
        self.words[ACTIVE] -= 1
        if self._waiters:
            self._wake()

    def leave_exclusive(self) -> None:
        self.words[EXCLUSIVE] = 0
        self._wake()

    async def _wait(self, *, exclusive: bool, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        entry = (fut, exclusive)
        self._waiters.append(entry)
        self.words[QUEUED] = 1
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
        self.words[QUEUED] = 1 if self._waiters else 0
        self._wake()  # a queued exclusive waiter ahead of others may have blocked them

    def _wake(self) -> None:
        try:
            self._serve_waiters()
        finally:
            self.words[QUEUED] = 1 if self._waiters else 0

    def _serve_waiters(self) -> None:
        words, waiters = self.words, self._waiters
        while waiters and not words[EXCLUSIVE]:
            fut, exclusive = waiters[0]
            if fut.done():  # expired or cancelled, not yet discarded
                waiters.popleft()
                continue
            if exclusive:
                if words[ACTIVE]:
                    return
                waiters.popleft()
                words[EXCLUSIVE] = 1
                fut.set_result(None)
                return
            if words[ACTIVE] >= words[LIMIT]:
                return
            waiters.popleft()
            words[ACTIVE] += 1
            fut.set_result(None)


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())
