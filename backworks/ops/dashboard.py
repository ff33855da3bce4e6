"""The dashboard: one self-contained page at /_backworks/ and the JSON it polls.

The page (static/dashboard.html, shipped in the package) has its CSS and script
inline and loads nothing from anywhere; its Content-Security-Policy allows exactly
that inline script and style (by hash) and requests to this server, nothing else.
It polls GET /_backworks/api/state, which is built from what the server already
holds and calls no plugin code, so polling it every second costs nothing.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
import re

from aiohttp import web
from aiohttp.typedefs import Handler

from backworks.http.envelope import envelope
from backworks.http.keys import REQUEST_ID
from backworks.http.state import HOST, RELOADER, TRAFFIC
from backworks.ops.auth import is_admin
from backworks.ops.views import state_json

PAGE = "static/dashboard.html"


def add_dashboard_routes(app: web.Application, *, enabled: bool) -> None:
    """The state JSON always; the page only when `dashboard.enabled` (else a 404 saying so)."""
    app.router.add_get("/_backworks/api/state", state)
    app.router.add_get("/_backworks/", _page_handler() if enabled else _page_off)
    app.router.add_get("/_backworks", _to_page)  # the page's links are relative to the slash


async def _to_page(request: web.Request) -> web.Response:
    # Relative, so that it also works behind a proxy that mounts us under a prefix.
    return web.Response(status=308, headers={"Location": "_backworks/"})


def _page_handler() -> Handler:
    html = importlib.resources.files("backworks").joinpath(PAGE).read_bytes()
    headers = {
        "Content-Type": "text/html; charset=utf-8",
        "Content-Security-Policy": _content_security_policy(html.decode()),
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
    }

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=html, headers=headers)

    return page


async def _page_off(request: web.Request) -> web.Response:
    msg = "the dashboard is off; set dashboard.enabled: true to serve it"
    return envelope(404, "not_found", msg, request.get(REQUEST_ID, ""))


def _content_security_policy(html: str) -> str:
    def hashes(tag: str) -> str:
        bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.DOTALL)
        return (
            " ".join(
                f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'"
                for b in bodies
            )
            or "'none'"
        )

    return (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


async def state(request: web.Request) -> web.Response:
    """Plugins, endpoints and recent requests: everything the dashboard shows."""
    app = request.app
    details = is_admin(request)
    return web.json_response(state_json(app[HOST], app[RELOADER], app[TRAFFIC], details=details))
