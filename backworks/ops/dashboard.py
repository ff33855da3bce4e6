"""The dashboard: one self-contained page at /_backworks/ and the JSON it polls.

The page (static/dashboard.html, shipped in the package) has its CSS and script
inline and loads nothing from anywhere; its Content-Security-Policy allows exactly
that inline script and style (by hash) and requests to this server, nothing else.
It polls GET /_backworks/api/state and /_backworks/api/series (the charts: the last
15 minutes in 1 s points, ops/series.py), built from what the server already holds,
calling no plugin code, so polling them every second costs nothing. Under `--workers N`
the worker that answers asks its siblings (ops/cluster.py) and merges their answers:
the page shows the service, and each worker on its own line.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
import os
import re
import time
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from backworks.http.aio.envelope import envelope
from backworks.http.aio.keys import REQUEST_ID
from backworks.http.aio.state import HOST, RELOADER, TRAFFIC
from backworks.ops.auth import is_admin
from backworks.ops.cluster import cluster_of
from backworks.ops.series import SERIES, WINDOW_S, chart_json, merge
from backworks.ops.views import merge_states, state_json

PAGE = "static/dashboard.html"


def add_dashboard_routes(app: web.Application, *, enabled: bool) -> None:
    """The state JSON always; the page only when `dashboard.enabled` (else a 404 saying so)."""
    app.router.add_get("/_backworks/api/state", state)
    app.router.add_get("/_backworks/api/series", series)
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
    """Plugins, endpoints, recent requests and workers: everything the dashboard shows."""
    app = request.app
    details = is_admin(request)
    cluster = cluster_of(app)
    states = [(cluster.pid if cluster else os.getpid(), local_state(app, details=details))]
    if cluster is not None:
        answers = await cluster.ask_peers("GET", "/state", {"details": "1" if details else "0"})
        states += [(a.pid, a.body) for a in answers if a.status == 200]
    return web.json_response(merge_states(states))


def local_state(app: web.Application, *, details: bool) -> dict[str, Any]:
    """This process's own state (a sibling asks for it through ops/peers.py).

    The plugins' own words (files, errors) only with `details`: for the admin.
    """
    return state_json(app[HOST], app[RELOADER], app[TRAFFIC], details=details)


async def series(request: web.Request) -> web.Response:
    """The charts' points from second `since` on (default: the last 15 minutes).

    Only whole seconds that every worker has stored are returned, so a page that asks
    again from its last second on never misses a sibling's late point.
    """
    app = request.app
    now = time.time()
    try:
        since = int(request.query.get("since", "0"))
    except ValueError:
        msg = f"since must be a unix time in whole seconds (got {request.query['since']!r})"
        return envelope(400, "bad_request", msg[:200], request.get(REQUEST_ID, ""))
    since = max(since, int(now) - WINDOW_S)
    parts: list[Any] = [local_points(app, since)]
    cluster = cluster_of(app)
    if cluster is not None:
        answers = await cluster.ask_peers("GET", "/series", {"since": str(since)})
        parts += [a.body["points"] for a in answers if a.status == 200]
    last = int(now) - (2 if cluster is not None else 1)
    merged = {s: p for s, p in merge(parts).items() if s <= last}
    return web.json_response(chart_json(merged, now))


def local_points(app: web.Application, since: int) -> list[Any]:
    """This process's own points from second `since` on."""
    return app[SERIES].since(since)
