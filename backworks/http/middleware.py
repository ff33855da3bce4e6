"""The middleware every request passes: request id, error envelope, access log, headers."""

from __future__ import annotations

import itertools
import re
import secrets
import time
from collections.abc import Callable, Mapping

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from backworks import tracing
from backworks.errors import PluginCallError, PluginCancelledError, PluginCrashedError, PluginError
from backworks.http.envelope import (
    http_exception_response,
    internal_error_response,
    plugin_error_response,
)
from backworks.http.keys import PLUGIN, REQUEST_ID, ROUTE
from backworks.http.traffic import Traffic

# An incoming X-Request-Id is kept only when it is short and plain, so that log lines
# and plugins never receive an attacker's control characters.
_GOOD_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

access_log = structlog.get_logger("backworks.access")
log = structlog.get_logger("backworks.server")


def _trace(request: web.Request) -> tuple[str, str, Mapping[str, str]]:
    return request.method, request.path, request.headers


def request_middleware(
    global_headers: Callable[[], Mapping[str, str]], traffic: Traffic | None = None
) -> Middleware:
    """Gives each request an id, maps every error to the JSON envelope, logs one line.

    `global_headers` is asked on every request, so a config reload changes them at
    once. With `traffic`, each answered request is also counted there (metrics,
    dashboard).
    """
    # Ids unique across processes and restarts without a uuid4 per request: a random
    # prefix per app (each server process builds its own) and a counter.
    prefix = secrets.token_hex(6)
    counter = itertools.count(1)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        incoming = request.headers.get("X-Request-Id", "")
        rid = incoming if _GOOD_REQUEST_ID.fullmatch(incoming) else f"{prefix}{next(counter):010x}"
        request[REQUEST_ID] = rid
        span = None if tracing.TRACER is None else tracing.request_started(*_trace(request))
        try:
            response = await handler(request)
        except web.HTTPException as e:
            response = http_exception_response(e, rid)
        except PluginError as e:
            if isinstance(e, PluginCallError | PluginCancelledError | PluginCrashedError):
                log.warning("plugin_failed", plugin=e.plugin, request_id=rid, error=e.message)
            response = plugin_error_response(e, rid)
        except Exception:
            log.exception("request_failed", request_id=rid, path=request.path)
            response = internal_error_response(rid)
        response.headers["X-Request-Id"] = rid
        for name, value in global_headers().items():
            response.headers.setdefault(name, value)
        elapsed = time.perf_counter() - started
        access_log.info(
            "request",
            request_id=rid,
            method=request.method,
            path=request.path,
            status=response.status,
            duration_ms=round(elapsed * 1000, 3),
            plugin=request.get(PLUGIN),
        )
        if traffic is not None:
            traffic.record(request, response.status, elapsed, rid)
        if span is not None:
            tracing.request_finished(span, response.status, rid, request.get(ROUTE))
        return response

    return middleware
