"""The internal app a worker serves its siblings on its Unix socket (see ops/cluster.py).

Only siblings reach it: the socket lives in the server's private directory (mode
0700), so it asks for no token. Each route does, in this process only, what the
operator's route of the same name does; the operator's route asks every sibling.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from backworks.ops.admin import check_health_here, reload_here, reset_here
from backworks.ops.cluster import CLUSTER
from backworks.ops.dashboard import local_points, local_state

log = structlog.get_logger("backworks.cluster")


def peer_app(main: web.Application) -> web.Application:
    """The sibling-facing routes, answering from `main`'s state."""
    app = web.Application()

    async def state(request: web.Request) -> web.Response:
        details = request.query.get("details") == "1"
        return web.json_response(local_state(main, details=details))

    async def series(request: web.Request) -> web.Response:
        since = int(request.query.get("since", "0"))
        return web.json_response({"points": local_points(main, since)})

    async def reload(request: web.Request) -> web.Response:
        return await reload_here(main, request.match_info["name"], _rid(request))

    async def reset(request: web.Request) -> web.Response:
        return reset_here(main, request.match_info["name"], _rid(request))

    async def check_health(request: web.Request) -> web.Response:
        return await check_health_here(main, request.match_info["name"], _rid(request))

    app.router.add_get("/state", state)
    app.router.add_get("/series", series)
    app.router.add_post("/plugins/{name}/reload", reload)
    app.router.add_post("/plugins/{name}/reset", reset)
    app.router.add_post("/plugins/{name}/health", check_health)
    return app


def _rid(request: web.Request) -> str:
    return request.headers.get("X-Request-Id", "")


async def peer_listener(app: web.Application) -> AsyncIterator[None]:
    """A cleanup context: this worker's peer socket, open while its plugins are."""
    cluster = app[CLUSTER]
    path = cluster.socket_of(cluster.pid)
    path.unlink(missing_ok=True)
    runner = web.AppRunner(peer_app(app), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.UnixSite(runner, str(path)).start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info("peer_listening", path=str(path), workers=len(cluster.peers()) + 1)
    yield
    path.unlink(missing_ok=True)  # siblings stop asking before this worker goes quiet
    await runner.cleanup()
