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
import secrets
import socket

import structlog
from aiohttp import web
from aiohttp.http_exceptions import LineTooLong

from backworks.config import ServerConfig
from backworks.http.dispatch import to_web_response
from backworks.http.reply import error_reply
from backworks.http.state import HOST, RECORDER

log = structlog.get_logger("backworks.server")

try:
    from backworks.http.lane import Lane, LaneSettings
except ImportError:  # pragma: no cover - httptools is a dependency; a broken install
    Lane = None  # type: ignore[assignment,misc]


class _QuietRequestHandler(web.RequestHandler):
    """aiohttp's protocol, answering what it cannot parse with our envelope.

    aiohttp's own answer to a malformed request is text that quotes the request's
    bytes back, and its log line a plain-text traceback with raw header values; ours
    is the JSON envelope (400) and one structured line, naming only the error's kind.
    """

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The envelope for a request aiohttp could not take; the connection closes."""
        reason = type(exc).__name__ if exc is not None else None
        if isinstance(exc, LineTooLong) or "Too many headers" in str(exc):
            status = 431  # as the lane says it
        log.info("bad_request" if status < 500 else "request_failed", status=status, reason=reason)
        if request.writer.output_size > 0:  # part of an answer is out: no room for ours
            msg = "an answer was already started; the connection is closed instead"
            raise ConnectionError(msg)
        answer = to_web_response(error_reply(status, secrets.token_hex(11)))
        # The config's global headers, as on every answer: the app is the handler's owner.
        app = getattr(getattr(self._manager, "request_handler", None), "__self__", None)
        if isinstance(app, web.Application) and HOST in app:
            for name, value in app[HOST].config.global_headers.items():
                answer.headers.setdefault(name, value)
        answer.force_close()
        return answer


class _QuietServer(web.Server):
    """aiohttp's protocol factory, making `_QuietRequestHandler`s."""

    def __call__(self) -> web.RequestHandler:
        return _QuietRequestHandler(self, loop=self._loop, **self._kwargs)


class QuietAppRunner(web.AppRunner):
    """An AppRunner whose connections answer parse errors with the envelope."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp has no option for its protocol's class; its factory only instantiates
        # RequestHandler, so the factory's class is swapped for one that does not.
        server.__class__ = _QuietServer
        return server


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
