"""Backworks inside an aiohttp application of your own: `mount(parent, "/bw", config)`.

    from aiohttp import web
    import backworks

    app = web.Application()
    app.router.add_get("/", home)
    backworks.mount(app, "/bw", backworks.load_config(Path("backworks.yaml")))
    web.run_app(app)

The Backworks app (create_app) becomes an aiohttp sub-application under the prefix:
it runs on the parent's event loop, its plugins start when the parent starts (before
it accepts requests) and are drained and shut down when the parent stops. Every
configured endpoint, /plugins/<name>/..., the admin API, /metrics and the dashboard
answer under the prefix (`/bw/hello`, `/bw/_backworks/`), with Backworks' request
ids, error envelope, access log, metrics and spans.

What is not there: the plugin lane (server.engine `lane` is a listener of its own:
mounted routes are served by aiohttp's engine), `--workers`, the separate admin
listener (`dashboard.port`), SIGHUP reloads (the process's signals are the parent's),
and `server.host/port` (the parent listens). The request body limit is the parent
app's `client_max_size`, since aiohttp reads bodies with the top app's setting.
"""

from __future__ import annotations

from aiohttp import web

from backworks.config import Config, ConfigSource
from backworks.server.app import create_app


def mount(
    parent: web.Application,
    prefix: str,
    config: Config,
    *,
    source: ConfigSource | None = None,
) -> web.Application:
    """Serves Backworks' routes inside `parent` under `prefix`; returns the mounted app.

    Call it before `parent` starts (aiohttp freezes its router then). `source`: the
    config file `config` was read from, reloaded when it changes.
    """
    if not prefix.startswith("/") or prefix.rstrip("/") == "":
        msg = f"the prefix must be a path below / such as '/bw' (got {prefix!r})"
        raise ValueError(msg)
    app = create_app(config, source=source)
    parent.add_subapp(prefix.rstrip("/"), app)
    return app
