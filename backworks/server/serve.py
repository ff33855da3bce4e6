"""`backworks serve` in one process: the app on its port until SIGTERM/SIGINT.

The shape of aiohttp's `web.run_app`, with the lane's listener (server/listeners.py):
plugins load before the port opens, a signal stops accepting and drains, and a
cancelled main task runs the cleanup that shuts the plugins down.
"""

from __future__ import annotations

import asyncio

import structlog

from backworks.config import Config, ConfigSource
from backworks.server.running import Listen, run_server

log = structlog.get_logger("backworks.server")


def serve(config: Config, source: ConfigSource | None = None) -> None:
    """Serves until SIGTERM/SIGINT; raises (exit 1) when the start fails.

    With `source`, SIGHUP reloads the config from it.
    """
    listen = Listen(config.server.host, config.server.port)
    loop = new_event_loop()
    try:
        loop.run_until_complete(run_server(config, listen, source=source))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when it is installed (it is, but on Windows), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    log.info("event_loop", implementation="uvloop")
    return uvloop.new_event_loop()
