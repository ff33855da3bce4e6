"""The aiohttp application: the app factory, the dispatcher, and `serve`.

Plugins are loaded in a cleanup context, before the port opens; a critical plugin
that fails stops the start. On SIGTERM/SIGINT aiohttp stops accepting, waits for
in-flight requests up to `server.shutdown_timeout_ms`, and only then the cleanup
context drains each plugin and calls its `shutdown` once.

The operations surface (admin routes, /metrics, the dashboard) is on the main port;
with `dashboard.port` set, `serve` also opens it on that address as a second, small
app holding the same Host, request record and metrics registry, and nothing else.

Given the config file it came from (`source`), the server reloads it when the file
changes and, under `serve`, on SIGHUP (reloader.py).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from backworks.admin import add_admin_routes
from backworks.app_state import HOST, METRICS, TRAFFIC
from backworks.config import Config
from backworks.dashboard import add_dashboard_routes
from backworks.endpoints import (
    MountedEndpoint,
    PluginEndpoint,
    StaticEndpoint,
    answer_plugin,
    answer_static,
)
from backworks.host import Host
from backworks.metrics import add_metrics_route, new_registry
from backworks.middleware import ROUTE, request_middleware
from backworks.reload import ConfigSource
from backworks.routing import NoRoute
from backworks.traffic import UNMATCHED, Traffic

log = structlog.get_logger("backworks.server")


def create_app(
    config: Config, *, admin_listener: bool = False, source: ConfigSource | None = None
) -> web.Application:
    """The server's app; with `admin_listener`, it also opens `dashboard.port` if set.

    Only a single-process server may ask for the admin listener: worker processes
    sharing the main port would each try to bind the admin one. `source`: the file
    `config` was read from, reloaded when it changes.
    """
    traffic = Traffic()
    host = Host(config, source=source)
    app = web.Application(
        client_max_size=config.server.max_body_bytes,
        middlewares=[request_middleware(lambda: host.config.global_headers, traffic)],
    )
    _hold_state(app, host, traffic, new_registry(host, traffic))
    app.cleanup_ctx.append(_plugins_lifecycle)
    if admin_listener and config.dashboard.port is not None:
        app.cleanup_ctx.append(_admin_listener)  # after the plugins: closed before them
    app.on_shutdown.append(_start_draining)
    _add_operations_routes(app)
    app.router.add_route("*", "/{path:.*}", dispatch)
    return app


def create_admin_app(main: web.Application) -> web.Application:
    """The admin routes, /metrics and the dashboard alone, answering from `main`'s state."""
    host = main[HOST]
    app = web.Application(
        middlewares=[request_middleware(lambda: host.config.global_headers, main[TRAFFIC])]
    )
    _hold_state(app, main[HOST], main[TRAFFIC], main[METRICS])
    _add_operations_routes(app)
    return app


def _hold_state(
    app: web.Application, host: Host, traffic: Traffic, metrics: CollectorRegistry
) -> None:
    app[HOST] = host
    app[TRAFFIC] = traffic
    app[METRICS] = metrics


def _add_operations_routes(app: web.Application) -> None:
    add_admin_routes(app)
    add_dashboard_routes(app, enabled=app[HOST].config.dashboard.enabled)
    add_metrics_route(app, app[METRICS])


async def _plugins_lifecycle(app: web.Application) -> AsyncIterator[None]:
    host = app[HOST]
    try:
        await host.start()
    except BaseException:
        await host.close()  # what did start is shut down, even on a failed start
        raise
    yield
    await host.close()


async def _admin_listener(app: web.Application) -> AsyncIterator[None]:
    config = app[HOST].config
    host = config.dashboard.host or config.server.host
    port = config.dashboard.port
    runner = web.AppRunner(
        create_admin_app(app),
        access_log=None,
        # Admin requests are short; the dashboard's keep-alive polls must not hold
        # the shutdown for aiohttp's default minute.
        shutdown_timeout=1.0,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info("admin_listening", url=f"http://{host}:{port}")
    yield
    await runner.cleanup()


async def _reload_on_sighup(app: web.Application) -> AsyncIterator[None]:
    # Only `serve` installs this: the process is ours, so the signal is too.
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, app[HOST].reloader.request_config_reload, "signal")
    yield
    loop.remove_signal_handler(signal.SIGHUP)


async def _start_draining(app: web.Application) -> None:
    app[HOST].draining = True
    log.info("server_draining")


async def dispatch(request: web.Request) -> web.StreamResponse:
    host = request.app[HOST]
    try:
        match = host.routes.match(request.method, request.path)
    except NoRoute as e:
        request[ROUTE] = UNMATCHED
        if e.allowed:
            raise web.HTTPMethodNotAllowed(request.method, sorted(e.allowed)) from None
        raise web.HTTPNotFound() from None
    request[ROUTE] = match.route.pattern
    target = match.route.target
    if isinstance(target, StaticEndpoint):
        return answer_static(target, request)
    if isinstance(target, MountedEndpoint):
        target = PluginEndpoint(target.pattern, dict(match.params)["plugin"])
    return await answer_plugin(host, target, request, match.params, host.config.hooks)


def serve(config: Config, source: ConfigSource | None = None) -> None:
    """Serves until SIGTERM/SIGINT; raises (exit 1) when the start fails.

    With `source`, SIGHUP reloads the config from it.
    """
    server = config.server

    def announce(_: str) -> None:
        log.info("server_listening", url=f"http://{server.host}:{server.port}")

    app = create_app(config, admin_listener=True, source=source)
    if source is not None:
        app.cleanup_ctx.append(_reload_on_sighup)
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
