"""The aiohttp application: the app factory, the dispatcher, and `serve`.

Plugins are loaded in a cleanup context, before the port opens; a critical plugin
that fails stops the start. On SIGTERM/SIGINT aiohttp stops accepting, waits for
in-flight requests up to `server.shutdown_timeout_ms`, and only then the cleanup
context drains each plugin and calls its `shutdown` once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from backworks.admin import HOST, add_admin_routes
from backworks.config import Config
from backworks.endpoints import (
    MountedEndpoint,
    PluginEndpoint,
    StaticEndpoint,
    answer_plugin,
    answer_static,
)
from backworks.host import Host
from backworks.middleware import request_middleware
from backworks.routing import NoRoute

log = structlog.get_logger("backworks.server")


def create_app(config: Config) -> web.Application:
    app = web.Application(
        client_max_size=config.server.max_body_bytes,
        middlewares=[request_middleware(config.global_headers)],
    )
    app[HOST] = Host(config)
    app.cleanup_ctx.append(_plugins_lifecycle)
    app.on_shutdown.append(_start_draining)
    add_admin_routes(app)
    app.router.add_route("*", "/{path:.*}", dispatch)
    return app


async def _plugins_lifecycle(app: web.Application) -> AsyncIterator[None]:
    host = app[HOST]
    try:
        await host.start()
    except BaseException:
        await host.close()  # what did start is shut down, even on a failed start
        raise
    yield
    await host.close()


async def _start_draining(app: web.Application) -> None:
    app[HOST].draining = True
    log.info("server_draining")


async def dispatch(request: web.Request) -> web.StreamResponse:
    host = request.app[HOST]
    try:
        match = host.routes.match(request.method, request.path)
    except NoRoute as e:
        if e.allowed:
            raise web.HTTPMethodNotAllowed(request.method, sorted(e.allowed)) from None
        raise web.HTTPNotFound() from None
    target = match.route.target
    if isinstance(target, StaticEndpoint):
        return answer_static(target, request)
    if isinstance(target, MountedEndpoint):
        target = PluginEndpoint(target.pattern, dict(match.params)["plugin"])
    return await answer_plugin(host, target, request, match.params, host.config.hooks)


def serve(config: Config) -> None:
    """Serves until SIGTERM/SIGINT; raises (exit 1) when the start fails."""
    server = config.server

    def announce(_: str) -> None:
        log.info("server_listening", url=f"http://{server.host}:{server.port}")

    web.run_app(
        create_app(config),
        host=server.host,
        port=server.port,
        shutdown_timeout=server.shutdown_timeout_ms / 1000,
        access_log=None,
        print=announce,
    )
