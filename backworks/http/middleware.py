"""The aiohttp engine's middleware: request id, error envelope, access log, headers.

Every request aiohttp answers (the operations routes, and on the aiohttp engine the
endpoints too) passes here; the lane does the same for its own (lane.py), through the
same Recorder and the same envelope.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from backworks import tracing
from backworks.http.dispatch import to_web_response
from backworks.http.keys import PLUGIN, REQUEST_ID, ROUTE
from backworks.http.record import CLIENT_GONE, Recorder
from backworks.http.reply import error_reply
from backworks.http.state import HOST
from backworks.http.traffic import registered_route

log = structlog.get_logger("backworks.server")


def _trace(request: web.Request) -> tuple[str, str, Mapping[str, str]]:
    return request.method, request.path, request.headers


def request_middleware(
    global_headers: Callable[[], Mapping[str, str]], recorder: Recorder
) -> Middleware:
    """Gives each request an id, maps every error to the JSON envelope, logs one line.

    `global_headers` is asked on every request, so a config reload changes them at
    once. Each answered request is recorded (access log, metrics, dashboard); one whose
    client went away is recorded as 499 and its handler's cancellation goes on.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        rid = request[REQUEST_ID] = recorder.request_id(request.headers.get("X-Request-Id"))
        span = None if tracing.TRACER is None else tracing.request_started(*_trace(request))
        try:
            response = await handler(request)
        except web.HTTPException as e:
            allow = (("Allow", e.headers["Allow"]),) if "Allow" in e.headers else ()
            response = to_web_response(error_reply(e.status, rid, headers=allow))
        except (asyncio.CancelledError, ConnectionError) as gone:
            # The client went away (mid-body, for a ConnectionError): nobody reads an
            # answer, and a cancelled handler's cancellation goes on.
            _record(recorder, request, CLIENT_GONE, started, rid)
            if span is not None:
                tracing.request_finished(span, CLIENT_GONE, rid, request.get(ROUTE))
            if isinstance(gone, asyncio.CancelledError):
                raise
            return to_web_response(error_reply(400, rid))
        except Exception:
            log.exception("request_failed", request_id=rid, path=request.path[:512])
            response = to_web_response(error_reply(500, rid))
        response.headers["X-Request-Id"] = rid
        for name, value in global_headers().items():
            response.headers.setdefault(name, value)
        host = request.app.get(HOST)
        if host is not None and host.draining:
            # As the lane: while draining, each answer closes its keep-alive connection.
            response.force_close()
        _record(recorder, request, response.status, started, rid)
        if span is not None:
            tracing.request_finished(span, response.status, rid, request.get(ROUTE))
        return response

    return middleware


def _record(
    recorder: Recorder, request: web.Request, status: int, started: float, rid: str
) -> None:
    route = request.get(ROUTE) or registered_route(request)
    seconds = time.perf_counter() - started
    recorder.answered(
        request.method, request.path, route, status, seconds, request.get(PLUGIN), rid
    )
