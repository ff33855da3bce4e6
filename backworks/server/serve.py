"""`backworks serve` in one process: the app on its port until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web

from backworks.config import Config, ConfigSource
from backworks.server.app import create_app, reload_on_sighup

log = structlog.get_logger("backworks.server")


def serve(config: Config, source: ConfigSource | None = None) -> None:
    """Serves until SIGTERM/SIGINT; raises (exit 1) when the start fails.

    With `source`, SIGHUP reloads the config from it.
    """
    server = config.server

    def announce(_: str) -> None:
        log.info("server_listening", url=f"http://{server.host}:{server.port}")

    app = create_app(config, admin_listener=True, source=source)
    if source is not None:
        app.cleanup_ctx.append(reload_on_sighup)
    web.run_app(
        app,
        host=server.host,
        port=server.port,
        shutdown_timeout=server.shutdown_timeout_ms / 1000,
        access_log=None,
        print=announce,
        loop=new_event_loop(),
    )


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when it is installed (`pip install backworks[speed]`), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    log.info("event_loop", implementation="uvloop")
    return uvloop.new_event_loop()
