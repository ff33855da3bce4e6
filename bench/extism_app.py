"""The Extism row of `make bench`: the hello plugin as wasm, called from an aiohttp handler.

    python bench/extism_app.py PORT

What a user would build with Extism's Python host SDK instead of a native plugin:
the baseline's aiohttp + uvloop app, whose handler hands the name to the wasm
module (bench/wasm/hello.wat) and answers with what it returns. The call is made on
the event loop, as Backworks' fast path makes its native one.
"""

import sys

import extism  # type: ignore[import-untyped]
from aiohttp import web
from baseline_app import serve
from wasm import hello_wasm


def make_app() -> web.Application:
    """The app: one Extism plugin instance, one route."""
    # One instance serves every request: calls are made on the loop's thread only.
    plugin = extism.Plugin(hello_wasm(), wasi=False)

    async def hello(request: web.Request) -> web.Response:
        """`{"hello": name}`, as the wasm module writes it."""
        body = plugin.call("hello", request.query.get("name", "world").encode())
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/hello", hello)
    return app


def main() -> None:
    """Serves the app on 127.0.0.1:PORT until SIGTERM."""
    serve(make_app(), int(sys.argv[1]))


if __name__ == "__main__":
    main()
