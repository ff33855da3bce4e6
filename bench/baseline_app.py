"""The baseline of `make bench`: the plain aiohttp app a user would write instead.

    python bench/baseline_app.py PORT

`GET /hello?name=Ada` answers `{"hello": "Ada"}` from a Python handler with
json.dumps, on the same event loop (uvloop, as `backworks serve` picks) and aiohttp
version as Backworks itself, with no access log.
"""

import asyncio
import json
import sys

from aiohttp import web


async def hello(request: web.Request) -> web.Response:
    """The handler a user would write instead of a plugin: `{"hello": name}` as JSON."""
    name = request.query.get("name", "world")
    return web.Response(body=json.dumps({"hello": name}).encode(), content_type="application/json")


def make_app() -> web.Application:
    """The app: one route."""
    app = web.Application()
    app.router.add_get("/hello", hello)
    return app


def main() -> None:
    """Serves the app on 127.0.0.1:PORT until SIGTERM."""
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    web.run_app(
        make_app(), host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, loop=loop
    )


if __name__ == "__main__":
    main()
