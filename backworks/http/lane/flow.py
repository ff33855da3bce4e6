"""Why a lane connection stopped reading: each reason set and lifted on its own.

One flag serving two reasons is how a connection resumes reading while its client
still reads nothing: the queue drains, the flag drops, and the write buffer, which
was the other reason, grows on. Here each reason has its own bit, and reading resumes
only when none is left.
"""

from __future__ import annotations

import asyncio

QUEUE_FULL = 1  # enough requests read ahead of their answers
WRITE_FULL = 2  # the client reads slower than we answer: the transport is over its mark
REFUSED = 4  # a request was refused: nothing more is read until its answer is out


class Flow:
    """The reasons a connection's reading is paused (see the module's doc)."""

    __slots__ = ("reasons", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.reasons = 0

    @property
    def writable(self) -> bool:
        """Whether an answer may be started now: the client is keeping up."""
        return not self.reasons & WRITE_FULL

    def stop(self, reason: int) -> None:
        """Stops reading for `reason` (a no-op when it is already a reason)."""
        if not self.reasons and not self.transport.is_closing():
            self.transport.pause_reading()
        self.reasons |= reason

    def go(self, reason: int) -> None:
        """Lifts `reason`; reading resumes when no other reason is left."""
        if not self.reasons & reason:
            return
        self.reasons &= ~reason
        if not self.reasons and not self.transport.is_closing():
            self.transport.resume_reading()
