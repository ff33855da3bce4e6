"""What a request carries between the layers of the HTTP path (aiohttp request keys).

Kept apart from the middleware and the traffic record, which both read them, so that
neither has to import the other.
"""

from __future__ import annotations

from aiohttp import web

REQUEST_ID = web.RequestKey("request_id", str)
PLUGIN = web.RequestKey("plugin", str)  # set by a handler: who answered, for the access log
ROUTE = web.RequestKey("route", str)  # set by the dispatcher: the pattern, for the metrics
