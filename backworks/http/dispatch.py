"""The one aiohttp route of the plugin and static endpoints: our route table decides.

aiohttp's router is frozen once the app starts, so every endpoint of the config is
answered through this catch-all handler, which looks the request up in the Host's
live route table (swapped whole by a config reload).
"""

from __future__ import annotations

from aiohttp import web

from backworks.http.endpoints import answer_plugin, answer_static
from backworks.http.keys import ROUTE
from backworks.http.state import HOST
from backworks.http.traffic import CATCH_ALL, UNMATCHED
from backworks.lifecycle.routes import MountedEndpoint, NoRoute, PluginEndpoint, StaticEndpoint


def add_dispatch_route(app: web.Application) -> None:
    """Routes every method and path no operations route took to `dispatch`; add it last."""
    app.router.add_route("*", CATCH_ALL, dispatch)


async def dispatch(request: web.Request) -> web.StreamResponse:
    """Answers from the live route table: a static answer, or a plugin wrapped in hooks."""
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
