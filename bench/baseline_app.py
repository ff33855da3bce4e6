"""The baseline of `make bench`: the plain aiohttp app a user would write instead.

It answers the hello plugin's JSON from a Python handler with json.dumps, on the same
event loop (uvloop when installed, as `backworks serve` picks) and aiohttp version as
Backworks itself, with no access log.
"""

import asyncio
import json
import sys

from aiohttp import web


async def hello(request: web.Request) -> web.Response:
    """The handler a user would write instead of a plugin: `{"hello": name}` as JSON."""
    return web.Response(
        body=json.dumps({"hello": "world"}).encode(), content_type="application/json"
    )


app = web.Application()
app.router.add_get("/hello", hello)
loop: asyncio.AbstractEventLoop
try:
    import uvloop

    loop = uvloop.new_event_loop()
except ImportError:
    loop = asyncio.new_event_loop()
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, loop=loop)
