"""Listening sockets: the lane (http/lane/) on each, in front of an aiohttp app.

Every connection is the lane's. With `server.engine: lane` (the default) it answers
the config's endpoints itself and relays the operations surface to the app's aiohttp
handler; with `server.engine: aiohttp` it relays every request. Either way aiohttp
reads only requests the lane has read whole and checked (http/edge.py).

A listener stops in two steps: `stop` closes the socket and drains its connections
(idle ones now, busy ones after their answer, within `server.shutdown_timeout_ms`);
the aiohttp runner's cleanup, after it, shuts the app and its plugins down.
"""

from __future__ import annotations

import asyncio
import socket

from aiohttp import web

from backworks.http.aio.state import EDGE, HOST
from backworks.http.lane.protocol import Lane, LaneSettings


class LaneListener:
    """The lane on one TCP socket, relaying to `runner`'s app (see the module's doc)."""

    def __init__(self, runner: web.AppRunner, *, relay_all: bool | None = None) -> None:
        self._runner = runner
        self._relay_all = relay_all
        self._server: asyncio.Server | None = None
        self._settings: LaneSettings | None = None

    @property
    def port(self) -> int:
        """The port listened on (the one bound, for port 0)."""
        server = self._server
        assert server is not None, "not listening"
        return int(server.sockets[0].getsockname()[1])

    async def start(
        self, host: str | None = None, port: int = 0, *, sock: socket.socket | None = None
    ) -> None:
        """Opens the listener; the runner is set up (plugins are loaded)."""
        protocol = self._runner.server
        assert protocol is not None, "the runner is not set up"
        app = self._runner.app
        server = app[HOST].config.server
        relay_all = server.engine == "aiohttp" if self._relay_all is None else self._relay_all
        settings = self._settings = LaneSettings(
            app[EDGE],
            protocol,
            header_timeout=server.header_timeout_ms / 1000,
            body_timeout=server.body_timeout_ms / 1000,
            keepalive_timeout=server.keepalive_timeout_ms / 1000,
            relay_all=relay_all,
        )
        loop = asyncio.get_running_loop()
        if sock is not None:
            self._server = await loop.create_server(lambda: Lane(settings), sock=sock, backlog=1024)
        else:
            self._server = await loop.create_server(
                lambda: Lane(settings), host, port, backlog=1024, reuse_address=True
            )

    def close(self) -> None:
        """Stops accepting; the connections it has go on."""
        if self._server is not None:
            self._server.close()

    async def stop(self, timeout: float) -> None:
        """Stops accepting, then drains the connections within `timeout` s."""
        self.close()
        settings = self._settings
        if settings is not None:
            await settings.drain(timeout)
            settings.close()
            self._settings = None
