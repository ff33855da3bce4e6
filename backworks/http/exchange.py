"""One request as the host answers it, whichever HTTP engine read it off the wire.

An engine fills an `Exchange` from its parser (the lane) or its request object
(aiohttp); the endpoints answer it (endpoints.py) and note on it which route matched
and which plugin answered, for the access log and the metrics (record.py).
"""

from __future__ import annotations

from backworks.http.reply import Headers


class Exchange:
    """The request's fields as plugins see them, and what answering it found out."""

    __slots__ = (
        "body",
        "headers",
        "method",
        "path",
        "plugin",
        "query",
        "request_id",
        "route",
        "trace",
    )

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        headers: Headers,
        body: bytes,
        request_id: str,
    ) -> None:
        self.method = method
        self.path = path  # percent-decoded, as routes match it
        self.query = query  # raw, from the request line
        self.headers = headers  # (lower-case name, value), in the order received
        self.body = body
        self.request_id = request_id
        self.route: str | None = None  # the matched pattern; UNMATCHED when none
        self.plugin: str | None = None  # who answered: a handler, or a hook that did
        self.trace: tuple[str, str] | None = None  # (trace id, span id) while tracing
