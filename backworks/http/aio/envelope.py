"""The error envelope as an aiohttp response, for the operations routes.

The envelope itself and its messages live in reply.py, shared by both engines; the
admin routes answer their own errors (401, 403, 404, 409, 502) through this.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from backworks.http.aio.handler import to_web_response
from backworks.http.reply import error_reply


def envelope(
    status: int,
    code: str,
    message: str,
    request_id: str,
    plugin: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """The JSON error envelope as an aiohttp response."""
    extra = tuple((headers or {}).items())
    reply = error_reply(
        status, request_id, code=code, message=message, plugin=plugin, headers=extra
    )
    return to_web_response(reply)
