"""The granian row of `make bench`: the baseline's handler on granian's RSGI interface.

    python -m granian --interface rsgi --working-dir bench granian_app:app

granian is a Rust HTTP server for Python applications; RSGI is its own interface,
its fastest. The handler does what the baseline's does: `{"hello": name}` with
json.dumps.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

if TYPE_CHECKING:  # granian's stubs name the protocol class privately
    from granian._granian import RSGIHTTPProtocol as HTTPProtocol
    from granian.rsgi import Scope

_HEADERS = [("content-type", "application/json; charset=utf-8")]
_NOT_FOUND = b'{"error": "not found"}'


async def app(scope: Scope, protocol: HTTPProtocol) -> None:
    """`GET /hello?name=Ada` answers `{"hello": "Ada"}`; anything else 404."""
    if scope.path != "/hello":
        protocol.response_bytes(404, _HEADERS, _NOT_FOUND)
        return
    name = parse_qs(scope.query_string).get("name", ["world"])[0]
    protocol.response_bytes(200, _HEADERS, json.dumps({"hello": name}).encode())
