"""aiohttp's side of the edge: every request aiohttp answers goes through the Edge.

The operations routes (and, with `server.engine: aiohttp` or in an embedding app,
the endpoints too) get the same request id, global headers, span, record, 499 and
log-then-500 as the lane's own answers, from the same `Edge` (http/edge.py).
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from backworks.http.aio.handler import CATCH_ALL, to_web_response
from backworks.http.aio.keys import PLUGIN, REQUEST_ID, ROUTE
from backworks.http.edge import Edge
from backworks.http.exchange import Exchange
from backworks.http.forwarded import peer_of
from backworks.http.reply import error_reply
from backworks.http.traffic import UNMATCHED
from backworks.httpspec import EMPTY_BODY_STATUSES

# What an answer says of the server: nothing that names software or versions.
SERVER = "backworks"


def edge_middleware(edge: Edge) -> Middleware:
    """Gives each request an id, maps every error to the JSON envelope, records it.

    Global headers are asked of the edge on every request, so a config reload
    changes them at once. A request whose client went away is recorded as 499 and its
    handler's cancellation goes on.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        rid = request[REQUEST_ID] = edge.request_id(request.headers.get("X-Request-Id"))
        ex = Exchange(request.method, request.path, "", (), b"", rid)
        ex.headers = tuple((k.lower(), v) for k, v in request.headers.items())
        peer = peer_of(request.transport)
        span = edge.span(ex, peer, request.scheme)
        try:
            response = await handler(request)
        except web.HTTPException as e:
            allow = (("Allow", e.headers["Allow"]),) if "Allow" in e.headers else ()
            response = to_web_response(error_reply(e.status, rid, headers=allow))
        except (asyncio.CancelledError, ConnectionError) as gone:
            # The client went away (mid-body, for a ConnectionError): nobody reads an
            # answer, and a cancelled handler's cancellation goes on.
            _note(ex, request)
            edge.gone(ex, started, peer=peer, span=span)
            if isinstance(gone, asyncio.CancelledError):
                raise
            return to_web_response(error_reply(400, rid))
        except Exception:
            response = to_web_response(edge.failed(ex))
        response.headers["X-Request-Id"] = rid
        response.headers["Server"] = SERVER
        for name, value in edge.global_headers().items():
            response.headers.setdefault(name, value)
        _note(ex, request)
        body = getattr(response, "body", None)
        if request.method == "HEAD" or response.status in EMPTY_BODY_STATUSES:
            body = None  # aiohttp writes no body for these
        edge.record(
            ex,
            response.status,
            started,
            peer=peer,
            bytes_in=request.content_length or 0,
            bytes_out=len(body) if isinstance(body, bytes) else 0,
            span=span,
        )
        return response

    return middleware


def _note(ex: Exchange, request: web.Request) -> None:
    """What answering found out: the route matched and the plugin that answered."""
    ex.route = request.get(ROUTE) or registered_route(request)
    ex.plugin = request.get(PLUGIN)


def registered_route(request: web.Request) -> str:
    """The pattern of an aiohttp route (the admin routes); UNMATCHED when none matched."""
    resource = request.match_info.route.resource
    if resource is None or resource.canonical == CATCH_ALL:
        return UNMATCHED
    return resource.canonical
