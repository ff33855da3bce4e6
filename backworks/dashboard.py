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
import time
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from backworks.app_state import HOST, TRAFFIC
from backworks.endpoints import MountedEndpoint, PluginEndpoint, StaticEndpoint
from backworks.host import Host
from backworks.http_errors import envelope
from backworks.middleware import REQUEST_ID
from backworks.traffic import Traffic

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
    return web.json_response(state_json(request.app[HOST], request.app[TRAFFIC]))


def state_json(host: Host, traffic: Traffic) -> dict[str, Any]:
    config = host.config
    plugins = host.snapshot()
    for row in plugins:
        row["error_rate"] = _error_rate(row.get("counters"))
        row["last_error"] = traffic.last_error_json(row["name"])
    return {
        "server": {
            "name": config.name,
            "version": config.version,
            "status": "draining" if host.draining else "serving",
            "uptime_s": round(time.time() - host.started_at, 3),
            "time": time.time(),
        },
        "admin": {"token_configured": bool(config.admin.token)},
        "plugins": plugins,
        "endpoints": [
            _endpoint_json(r.pattern, r.methods, r.target, config.hooks) for r in host.routes.routes
        ],
        "recent": traffic.recent_json(),
    }


def _error_rate(counters: dict[str, Any] | None) -> float | None:
    """Failed, timed-out and rejected calls over all calls asked for; None before any."""
    if not counters:
        return None
    asked = counters["calls"] + counters["rejected"]
    errors = counters["failed"] + counters["timed_out"] + counters["rejected"]
    return round(errors / asked, 4) if asked else None


def _endpoint_json(
    pattern: str, methods: frozenset[str], target: object, global_hooks: tuple[str, ...]
) -> dict[str, Any]:
    """`hooks` are all that run, in order: the global ones, then the endpoint's own."""
    row: dict[str, Any] = {"pattern": pattern, "methods": sorted(methods)}
    if isinstance(target, StaticEndpoint):
        row.update(kind="static", status=target.status, hooks=[])
    elif isinstance(target, PluginEndpoint):
        hooks = [*global_hooks, *target.hooks]
        row.update(kind="plugin", handler=target.handler, hooks=hooks)
    elif isinstance(target, MountedEndpoint):
        row.update(kind="mounted", hooks=list(global_hooks))
    return row
