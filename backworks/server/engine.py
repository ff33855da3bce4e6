"""Putting an app on a listening socket with the configured engine (`server.engine`).

`lane` (the default): the plugin lane (http/lane.py) takes every connection and
hands the operations surface to aiohttp's protocol of the same runner. `aiohttp`:
aiohttp's own site, every request through aiohttp; also what is used when the lane
cannot be (httptools missing).

Both sites drain the same way when the runner cleans up: the listener closes, idle
connections close at once, busy ones after their answer, within
`server.shutdown_timeout_ms`; then aiohttp's own shutdown runs and plugins close.
"""

from __future__ import annotations

import asyncio
import socket

import structlog
from aiohttp import web

from backworks.config import ServerConfig
from backworks.http.state import HOST, RECORDER

log = structlog.get_logger("backworks.server")

try:
    from backworks.http.lane import Lane, LaneSettings
except ImportError:  # pragma: no cover - httptools is a dependency; a broken install
    Lane = None  # type: ignore[assignment,misc]


def engine_of(config: ServerConfig) -> str:
    """The engine that will serve: the configured one, unless the lane cannot run here."""
    if config.engine == "lane" and Lane is None:  # pragma: no cover
        log.warning("lane_unavailable", reason="httptools is not installed", engine="aiohttp")
        return "aiohttp"
    return config.engine


class LaneSite(web.BaseSite):
    """The plugin lane on a TCP socket of `runner`'s app (see the module's doc)."""

    __slots__ = ("_host", "_port", "_settings", "_sock")

    def __init__(
        self,
        runner: web.AppRunner,
        host: str | None = None,
        port: int = 0,
        *,
        sock: socket.socket | None = None,
        backlog: int = 1024,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._sock = sock
        self._settings: LaneSettings | None = None

    @property
    def port(self) -> int:
        """The port listened on: the one asked for, or the one bound (for port 0)."""
        server = self._server
        if isinstance(server, asyncio.Server) and server.sockets:
            return int(server.sockets[0].getsockname()[1])
        return self._port

    @property
    def name(self) -> str:
        """The site's URL, as aiohttp's sites name themselves."""
        return f"http://{self._host or '0.0.0.0'}:{self.port}"

    async def start(self) -> None:
        """Opens the listener; the app's cleanup contexts have run (plugins are loaded)."""
        await super().start()
        runner = self._runner
        assert isinstance(runner, web.AppRunner)
        aiohttp_protocol = runner.server
        assert aiohttp_protocol is not None
        app = runner.app
        server = app[HOST].config.server
        settings = self._settings = LaneSettings(
            app[HOST],
            app[RECORDER],
            aiohttp_protocol,
            header_timeout=server.header_timeout_ms / 1000,
            body_timeout=server.body_timeout_ms / 1000,
            keepalive_timeout=server.keepalive_timeout_ms / 1000,
        )
        loop = asyncio.get_running_loop()
        if self._sock is not None:
            self._server = await loop.create_server(
                lambda: Lane(settings), sock=self._sock, backlog=self._backlog
            )
        else:
            self._server = await loop.create_server(
                lambda: Lane(settings),
                self._host,
                self._port,
                backlog=self._backlog,
                reuse_address=True,
            )

    async def stop(self) -> None:
        """Stops accepting, then drains the lane's connections."""
        if self._server is not None:
            self._server.close()
        settings = self._settings
        if settings is not None:
            app = self._runner.app  # type: ignore[attr-defined]
            await settings.drain(app[HOST].config.server.shutdown_timeout_ms / 1000)
            settings.close()
        await super().stop()
