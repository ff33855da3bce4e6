"""`backworks serve` in one process: the app on its port until SIGTERM/SIGINT.

The shape of aiohttp's `web.run_app`, with the configured engine's site
(server/engine.py): plugins load before the port opens, a signal stops accepting and
drains, and a cancelled main task runs the cleanup that shuts the plugins down.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc

import structlog
from aiohttp import web
from aiohttp.web_runner import GracefulExit

from backworks.config import Config, ConfigSource
from backworks.server.app import create_app, reload_on_sighup
from backworks.server.engine import LaneSite, QuietAppRunner, engine_of

log = structlog.get_logger("backworks.server")


def serve(config: Config, source: ConfigSource | None = None) -> None:
    """Serves until SIGTERM/SIGINT; raises (exit 1) when the start fails.

    With `source`, SIGHUP reloads the config from it.
    """
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    main = loop.create_task(_serve(config, source))
    try:
        loop.run_until_complete(main)
    except (GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main.done():  # a signal: cancelling runs the cleanup (drain, shutdown)
                main.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(main)
        finally:
            _cancel_the_rest(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


async def _serve(config: Config, source: ConfigSource | None) -> None:
    server = config.server
    app = create_app(config, admin_listener=True, source=source)
    if source is not None:
        app.cleanup_ctx.append(reload_on_sighup)
    runner = QuietAppRunner(
        app,
        handle_signals=True,
        access_log=None,
        shutdown_timeout=server.shutdown_timeout_ms / 1000,
        keepalive_timeout=server.keepalive_timeout_ms / 1000,
        # A client that goes away cancels its handler, and so sets its plugin call's
        # cancel word (the lane does the same for its own requests).
        handler_cancellation=True,
    )
    await runner.setup()
    try:
        engine = engine_of(server)
        site: web.BaseSite
        if engine == "lane":
            site = LaneSite(runner, server.host, server.port)
        else:
            site = web.TCPSite(runner, server.host, server.port, reuse_address=True)
        await site.start()
        # Everything made so far (the interpreter's modules, aiohttp, the plugins' Python
        # side) lives as long as the server: the cyclic collector need not walk it again.
        gc.freeze()
        log.info("server_listening", url=f"http://{server.host}:{server.port}", engine=engine)
        while True:
            await asyncio.sleep(3600)
    finally:
        await runner.cleanup()


def _cancel_the_rest(loop: asyncio.AbstractEventLoop) -> None:
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when it is installed (it is, but on Windows), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    log.info("event_loop", implementation="uvloop")
    return uvloop.new_event_loop()
