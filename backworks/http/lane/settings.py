"""What every connection of one lane listener shares: the edge, timeouts, the clock.

Timeouts are checked by one sweep per listener a few times a second, not by a timer
per request; the same sweep refreshes the Date header once a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Protocol

from backworks.http.edge import Edge


class Connection(Protocol):
    """What the sweep and the drain ask of a connection (protocol.Lane)."""

    deadline: float  # monotonic time it times out; 0: never

    def timed_out(self) -> None: ...
    def drain(self) -> None: ...
    def abort(self) -> None: ...


class LaneSettings:
    """What every connection of one listener shares: the edge, timeouts, the clock."""

    def __init__(
        self,
        edge: Edge,
        relay_protocol: Callable[[], asyncio.Protocol],
        *,
        header_timeout: float,
        body_timeout: float,
        keepalive_timeout: float,
        relay_all: bool = False,
    ) -> None:
        self.edge = edge
        self.host = edge.host
        self.relay_protocol = relay_protocol  # aiohttp's protocol, for relayed requests
        self.relay_all = relay_all  # every request is aiohttp's (`server.engine: aiohttp`)
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.keepalive_timeout = keepalive_timeout
        self.connections: set[Connection] = set()
        self.draining = False
        self.date = b""
        self._sweeper: asyncio.TimerHandle | None = None
        self._tick()

    def _tick(self) -> None:
        """Once per sweep: the Date header, and every connection's deadline."""
        self.date = formatdate(usegmt=True).encode()
        self._time_out()
        shortest = min(self.header_timeout, self.body_timeout, self.keepalive_timeout)
        interval = min(1.0, max(0.05, shortest / 5))
        self._sweeper = asyncio.get_running_loop().call_later(interval, self._tick)

    def _time_out(self) -> None:
        now = time.monotonic()
        for lane in list(self.connections):
            if lane.deadline and now >= lane.deadline:
                lane.timed_out()

    def close(self) -> None:
        """Stops the sweep (the listener is gone)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    async def drain(self, timeout: float) -> None:
        """Closes idle connections now, busy ones after their answer; waits up to `timeout`."""
        self.draining = True
        for lane in list(self.connections):
            lane.drain()
        deadline = time.monotonic() + timeout
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            self._time_out()
        for lane in list(self.connections):
            lane.abort()
