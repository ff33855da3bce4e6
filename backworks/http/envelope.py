"""The one place that turns errors into HTTP answers.

Every error a client sees is the same JSON envelope:
`{"error": {"code", "message", "plugin", "request_id"}}`. A plugin's own failure
message goes to the log with the request id, never to the client: it may hold
details (paths, queries, secrets) that are the operator's business.
"""

from __future__ import annotations

import json

from aiohttp import web

from backworks.errors import (
    CircuitOpenError,
    PluginCallError,
    PluginCancelledError,
    PluginCrashedError,
    PluginError,
    PluginSaturatedError,
    PluginTimeoutError,
    PluginUnavailableError,
)

# Most specific first: PluginCrashedError and friends are PluginErrors too.
_PLUGIN_ERRORS: tuple[tuple[type[PluginError], int, str], ...] = (
    (PluginTimeoutError, 504, "plugin_timeout"),
    (PluginSaturatedError, 503, "plugin_saturated"),
    (CircuitOpenError, 503, "circuit_open"),
    (PluginUnavailableError, 503, "plugin_unavailable"),
    (PluginCrashedError, 502, "plugin_crashed"),
    (PluginCallError, 502, "plugin_failed"),
    (PluginCancelledError, 502, "plugin_failed"),
)

_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


def envelope(
    status: int,
    code: str,
    message: str,
    request_id: str,
    plugin: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """The JSON error envelope every error answer has: code, message, plugin, request id."""
    body = {"error": {"code": code, "message": message, "plugin": plugin, "request_id": request_id}}
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers=headers,
    )


def plugin_error_response(error: PluginError, request_id: str) -> web.Response:
    """The answer to a failed plugin call: the status and code of its error class."""
    for cls, status, code in _PLUGIN_ERRORS:
        if isinstance(error, cls):
            if cls in (PluginCallError, PluginCancelledError, PluginCrashedError):
                # The detail is the plugin's own words: for the log, not the client.
                message = f"plugin {error.plugin!r} failed to handle the request"
                if cls is PluginCrashedError:
                    message = f"plugin {error.plugin!r} crashed while handling the request"
            else:
                message = str(error)
            return envelope(status, code, message, request_id, error.plugin)
    return internal_error_response(request_id)


def http_exception_response(exc: web.HTTPException, request_id: str) -> web.Response:
    """The envelope for an aiohttp HTTP exception (404, 405, 413, ...), `Allow` kept."""
    code = _HTTP_CODES.get(exc.status, "internal" if exc.status >= 500 else "bad_request")
    message = {
        404: "no endpoint matches this path",
        413: "the request body is larger than server.max_body_bytes allows",
    }.get(exc.status, exc.reason)
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    if exc.status == 405:
        message = f"method not allowed here; allowed: {exc.headers.get('Allow', '')}"
    return envelope(exc.status, code, message, request_id, headers=headers)


def internal_error_response(request_id: str) -> web.Response:
    """500 `internal`, saying nothing about what went wrong (that goes to the log)."""
    return envelope(500, "internal", "internal server error", request_id)
