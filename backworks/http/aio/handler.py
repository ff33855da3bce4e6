"""The endpoints of the config as one aiohttp handler.

aiohttp's router is frozen once the app starts, and a config reload replaces the
route table whole, so every endpoint is answered through one catch-all route
(`endpoint_handler`) that reads the body and hands the request to the core
(http/answer.py); the operations routes are aiohttp routes of their own, added
before it. Served behind the lane (`server.engine: aiohttp`, and the operations
surface always), or inside an application that embeds Backworks.
"""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web

from backworks.abi import Response
from backworks.http.aio.keys import PLUGIN, REQUEST_ID, ROUTE
from backworks.http.aio.state import HOST
from backworks.http.answer import answered
from backworks.http.exchange import Exchange
from backworks.http.reply import error_reply
from backworks.http.routing import route
from backworks.http.traffic import UNMATCHED
from backworks.httpspec import HOST_HEADERS
from backworks.lifecycle.routes import StaticEndpoint

log = structlog.get_logger("backworks.server")

CATCH_ALL = "/{path:.*}"  # the aiohttp route of `endpoint_handler`


def add_endpoint_route(app: web.Application) -> None:
    """Routes every method and path no operations route took to the endpoints; add it last."""
    app.router.add_route("*", CATCH_ALL, endpoint_handler)


async def endpoint_handler(request: web.Request) -> web.StreamResponse:
    """The request's fields in, the core's answer out."""
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
    answer = await answered(host, ex, match)
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
