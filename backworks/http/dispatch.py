"""Answering a request from the live route table, for both HTTP engines.

`serve` is engine-neutral: the route table of the Host (swapped whole by a config
reload) decides, the endpoints answer (endpoints.py), and every failure becomes the
error envelope (reply.py). `route` is the first half of it alone, for the lane,
which must know before reading a body whether and how a request is answered.

On aiohttp, whose router is frozen once the app starts, every endpoint of the config
is answered through one catch-all handler (`dispatch`) that reads the body and calls
`serve`; the operations routes are aiohttp routes of their own, added before it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiohttp import web

from backworks.abi import Response
from backworks.errors import PluginCallError, PluginCancelledError, PluginCrashedError, PluginError
from backworks.http.endpoints import answer_plugin, answer_plugin_now, answer_static
from backworks.http.exchange import Exchange
from backworks.http.keys import PLUGIN, REQUEST_ID, ROUTE
from backworks.http.reply import error_reply, method_not_allowed, plugin_error_reply
from backworks.http.state import HOST
from backworks.http.traffic import CATCH_ALL, UNMATCHED
from backworks.httpspec import HOST_HEADERS
from backworks.lifecycle.host import Host
from backworks.lifecycle.routes import (
    Match,
    MountedEndpoint,
    NoRoute,
    PluginEndpoint,
    StaticEndpoint,
)

log = structlog.get_logger("backworks.server")

# Paths the operations surface owns (admin routes, dashboard, /metrics): aiohttp
# routes registered before the catch-all, so they win over any config endpoint.
OPERATIONS_PREFIX = "/_backworks"
METRICS_PATH = "/metrics"


def is_operations_path(path: str) -> bool:
    """Whether aiohttp's own routes, not the route table, answer `path`."""
    return path.startswith(OPERATIONS_PREFIX) or path == METRICS_PATH


def route(host: Host, ex: Exchange) -> Match[Any] | Response:
    """The route that answers `ex` (noted on it), or the 404/405 answer."""
    try:
        match = host.routes.match(ex.method, ex.path)
    except NoRoute as e:
        ex.route = UNMATCHED
        if e.allowed:
            return method_not_allowed(ex.request_id, e.allowed)
        return error_reply(404, ex.request_id)
    ex.route = match.route.pattern
    return match


def _endpoint(host: Host, ex: Exchange, match: Match[Any] | Response) -> Any:
    """What answers: a Response ready now, or the plugin endpoint and its parameters."""
    if isinstance(match, Response):
        return match
    target = match.route.target
    if isinstance(target, StaticEndpoint):
        return answer_static(target, ex.request_id)
    if isinstance(target, MountedEndpoint):
        name = match.params[0][1]
        if name not in host.plugins:
            return error_reply(404, ex.request_id)
        target = PluginEndpoint(target.pattern, name)
    return target, match.params


def answer_now(host: Host, ex: Exchange, match: Match[Any] | Response) -> Response | None:
    """The answer when making it needs no waiting, else None: then `await serve(...)`.

    Routing errors, static endpoints, and a plugin that runs inline with no hook
    around it are answered here, without a coroutine: the hot path of both engines.
    """
    found = _endpoint(host, ex, match)
    if isinstance(found, Response):
        return found
    endpoint, params = found
    if endpoint.hooks or host.config.hooks:
        return None
    try:
        return answer_plugin_now(host, endpoint, ex, params)
    except PluginError as e:
        return _failed(e, ex)


async def serve(host: Host, ex: Exchange, match: Match[Any] | Response | None = None) -> Response:
    """The answer to `ex`: static, a plugin's (hooks around it), or an error envelope.

    `match`: the result of `route` when the caller already has it.
    """
    found = _endpoint(host, ex, route(host, ex) if match is None else match)
    if isinstance(found, Response):
        return found
    endpoint, params = found
    try:
        return await answer_plugin(host, endpoint, ex, params, host.config.hooks)
    except PluginError as e:
        return _failed(e, ex)


def _failed(error: PluginError, ex: Exchange) -> Response:
    if isinstance(error, PluginCallError | PluginCancelledError | PluginCrashedError):
        log.warning(
            "plugin_failed", plugin=error.plugin, request_id=ex.request_id, error=error.message
        )
    return plugin_error_reply(error, ex.request_id)


def add_dispatch_route(app: web.Application) -> None:
    """Routes every method and path no operations route took to `dispatch`; add it last."""
    app.router.add_route("*", CATCH_ALL, dispatch)


async def dispatch(request: web.Request) -> web.StreamResponse:
    """The aiohttp side of `serve`: the request's fields in, the answer out."""
    host = request.app[HOST]
    rid = request[REQUEST_ID]
    ex = Exchange(
        request.method,
        # The path below the app's mount point: the whole path on a server's own app,
        # the rest after the prefix when the app is mounted in another (server/embed.py).
        "/" + request.match_info.get("path", request.path.lstrip("/")),
        # From the request line itself: yarl re-quotes the query (%2F becomes /).
        request.raw_path.partition("?")[2],
        tuple((name.lower(), value) for name, value in request.headers.items()),
        b"",
        rid,
    )
    match = route(host, ex)
    request[ROUTE] = ex.route or UNMATCHED
    if (
        request.body_exists
        and not isinstance(match, Response)
        and not isinstance(match.route.target, StaticEndpoint)
    ):
        try:
            async with asyncio.timeout(host.config.server.body_timeout_ms / 1000):
                ex.body = await request.read()  # raises 413 past server.max_body_bytes
        except TimeoutError:
            log.info("request_timeout", request_id=rid, engine="aiohttp")
            late = to_web_response(error_reply(408, rid))
            late.force_close()  # the rest of the body is not worth waiting for
            return late
    answer = answer_now(host, ex, match) or await serve(host, ex, match)
    if ex.plugin is not None:
        request[PLUGIN] = ex.plugin
    return to_web_response(answer)


def to_web_response(answer: Response) -> web.Response:
    """An aiohttp response carrying `answer` (headers only the host may set are dropped)."""
    headers: list[tuple[str, str]] = [
        (name, value) for name, value in answer.headers if name.lower() not in HOST_HEADERS
    ]
    headers.append(("Content-Type", answer.content_type or "application/json"))
    return web.Response(status=answer.status, body=answer.body, headers=headers)
