"""The guard of every admin route that changes something: `admin.token` as a Bearer token.

    @requires_admin_token
    async def reload(request: web.Request) -> web.StreamResponse: ...

Without a configured token such routes are off (403), so a server nobody set up for
administration cannot be administered. A missing or wrong token is 401. Both answers
use the JSON error envelope. The comparison takes the same time wherever the given
token differs, so the token cannot be guessed byte by byte from response times.
"""

from __future__ import annotations

import functools
import hmac

from aiohttp import web
from aiohttp.typedefs import Handler

from backworks.http.aio.envelope import envelope
from backworks.http.aio.keys import REQUEST_ID
from backworks.http.aio.state import HOST

NOT_CONFIGURED = "admin.token is not configured"
UNAUTHORIZED = "this admin route needs the header Authorization: Bearer <admin.token>"


def is_admin(request: web.Request) -> bool:
    """Whether `request` carries the configured admin token (never true without one)."""
    token = request.app[HOST].config.admin.token
    if not token:
        return False
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # Bytes, not str: compare_digest refuses non-ASCII str, and a header may hold any
    # (even lone surrogates, which only surrogatepass encodes).
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode("utf-8", "surrogatepass"), token.encode()
    )


def refusal(request: web.Request) -> web.Response | None:
    """The 401/403 answer when `request` may not use a mutating admin route, else None."""
    rid = request.get(REQUEST_ID, "")
    if not request.app[HOST].config.admin.token:
        return envelope(403, "admin_disabled", NOT_CONFIGURED, rid)
    if not is_admin(request):
        headers = {"WWW-Authenticate": 'Bearer realm="backworks-admin"'}
        return envelope(401, "unauthorized", UNAUTHORIZED, rid, headers=headers)
    return None


def requires_admin_token(handler: Handler) -> Handler:
    """Wraps an admin handler so that it runs only for a request with the admin token."""

    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        refused = refusal(request)
        if refused is not None:
            return refused
        return await handler(request)

    return guarded
