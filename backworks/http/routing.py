"""Which endpoint answers a request: the live route table, and the paths it never sees.

The Host's route table is swapped whole by a config reload, so a request is matched
against the table of the moment it is read. The operations surface (admin routes,
dashboard, /metrics) is answered by aiohttp's routes of the app, never by the table:
a config endpoint cannot shadow it.
"""

from __future__ import annotations

from typing import Any

from backworks.abi import Response
from backworks.http.exchange import Exchange
from backworks.http.reply import error_reply, method_not_allowed
from backworks.http.traffic import UNMATCHED
from backworks.lifecycle.host import Host
from backworks.lifecycle.routes import Match, NoRoute

OPERATIONS_PREFIX = "/_backworks"
METRICS_PATH = "/metrics"


def is_operations_path(path: str) -> bool:
    """Whether aiohttp's own routes, not the route table, answer `path`."""
    return path.startswith(OPERATIONS_PREFIX) or path == METRICS_PATH


def route(host: Host, ex: Exchange) -> Match[Any] | Response:
    """The route that answers `ex` (noted on it), or the 404/405 answer."""
    try:
        match = host.routes.match(ex.method, ex.path)
    except NoRoute as e:
        ex.route = UNMATCHED
        if e.allowed:
            return method_not_allowed(ex.request_id, e.allowed)
        return error_reply(404, ex.request_id)
    ex.route = match.route.pattern
    return match
