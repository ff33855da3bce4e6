"""What the host answers, before an engine writes it; and the one error envelope.

Both HTTP engines (the lane and aiohttp) answer every request with an
`abi.Response`, whoever made it (a plugin, a static endpoint, an error): a status,
a body, its content type ("" = application/json) and the answer's own headers,
already checked against httpspec. The engine adds what belongs to the connection:
Content-Length, Date, X-Request-Id and the config's global headers, and drops the
headers only the host may set (httpspec.HOST_HEADERS).

Every error a client sees is one JSON envelope,
`{"error": {"code", "message", "plugin", "request_id"}}`, and its message is ours:
fixed text per code. What a plugin or the config said (an init failure with a
database URL, a timeout in ms, a hook's reason) goes to the log with the request id
and to the authenticated admin API, never to a client.
"""

from __future__ import annotations

import json

from backworks.abi import Response
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

JSON = "application/json"
Headers = tuple[tuple[str, str], ...]


# Most specific first: PluginCrashedError and friends are PluginErrors too.
_PLUGIN_ERRORS: tuple[tuple[type[PluginError], int, str, str], ...] = (
    (PluginTimeoutError, 504, "plugin_timeout", "the plugin did not answer in time"),
    (PluginSaturatedError, 503, "plugin_saturated", "the plugin is busy; try again shortly"),
    (CircuitOpenError, 503, "circuit_open", "the plugin keeps failing; calls to it are paused"),
    (PluginUnavailableError, 503, "plugin_unavailable", "the plugin is not available"),
    (PluginCrashedError, 502, "plugin_crashed", "the plugin crashed while handling the request"),
    (PluginCallError, 502, "plugin_failed", "the plugin failed to handle the request"),
    (PluginCancelledError, 502, "plugin_failed", "the plugin failed to handle the request"),
)

# The fixed message of each error code that is not a plugin's.
MESSAGES = {
    "bad_request": "the request is not valid HTTP",
    "not_found": "no endpoint matches this path",
    "method_not_allowed": "this endpoint does not take this method",
    "request_timeout": "the request did not arrive in time",
    "payload_too_large": "the request body is larger than the server accepts",
    "header_fields_too_large": "the request's header fields are too large",
    "expectation_failed": "the server cannot meet the request's Expect field",
    "not_implemented": "the server does not take this method",
    "http_version_not_supported": "the server speaks HTTP/1.0 and HTTP/1.1 only",
    "internal": "internal server error",
}
STATUS_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    417: "expectation_failed",
    431: "header_fields_too_large",
    501: "not_implemented",
    505: "http_version_not_supported",
    500: "internal",
}


def envelope_body(code: str, message: str, request_id: str, plugin: str | None = None) -> bytes:
    """The JSON of the error envelope."""
    error = {"code": code, "message": message, "plugin": plugin, "request_id": request_id}
    return json.dumps({"error": error}).encode()


def error_reply(
    status: int,
    request_id: str,
    *,
    code: str | None = None,
    message: str | None = None,
    plugin: str | None = None,
    headers: Headers = (),
) -> Response:
    """An error answer: the envelope with `code` (by default the status's) and its message."""
    code = code or STATUS_CODES.get(status, "internal" if status >= 500 else "bad_request")
    text = message if message is not None else MESSAGES.get(code, MESSAGES["bad_request"])
    return Response(status, envelope_body(code, text, request_id, plugin), JSON, headers)


def plugin_error_reply(error: PluginError, request_id: str) -> Response:
    """The answer to a failed plugin call: its class's status, code and fixed message."""
    for cls, status, code, message in _PLUGIN_ERRORS:
        if isinstance(error, cls):
            return error_reply(status, request_id, code=code, message=message, plugin=error.plugin)
    return error_reply(500, request_id)


def method_not_allowed(request_id: str, allowed: frozenset[str]) -> Response:
    """405 with the Allow header RFC 9110 asks for (HEAD wherever GET is allowed)."""
    methods = set(allowed) | ({"HEAD"} if "GET" in allowed else set())
    return error_reply(405, request_id, headers=(("Allow", ",".join(sorted(methods))),))
