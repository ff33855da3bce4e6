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

from backworks.http.dispatch import to_web_response
from backworks.http.keys import PLUGIN, REQUEST_ID, ROUTE
from backworks.http.record import CLIENT_GONE, Recorder
from backworks.http.reply import error_reply
from backworks.http.traffic import registered_route

log = structlog.get_logger("backworks.server")


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
        try:
            response = await handler(request)
        except web.HTTPException as e:
            allow = (("Allow", e.headers["Allow"]),) if "Allow" in e.headers else ()
            response = to_web_response(error_reply(e.status, rid, headers=allow))
        except asyncio.CancelledError:
            _record(recorder, request, CLIENT_GONE, started, rid)
            raise
        except ConnectionError:  # the client went away mid-body: nobody reads an answer
            _record(recorder, request, CLIENT_GONE, started, rid)
            return to_web_response(error_reply(400, rid))
        except Exception:
            log.exception("request_failed", request_id=rid, path=request.path[:512])
            response = to_web_response(error_reply(500, rid))
        response.headers["X-Request-Id"] = rid
        for name, value in global_headers().items():
            response.headers.setdefault(name, value)
        _record(recorder, request, response.status, started, rid)
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
