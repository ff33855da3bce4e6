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


def serve(app: web.Application, port: int) -> None:
    """Serves `app` on 127.0.0.1:`port` until SIGTERM, on uvloop when installed."""
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=loop)


def main() -> None:
    """Serves the app on 127.0.0.1:PORT until SIGTERM."""
    serve(make_app(), int(sys.argv[1]))


if __name__ == "__main__":
    main()
