"""The composition root: the aiohttp application and everything it holds.

`create_app` builds the Host (the running plugins) and the Reloader (when to reload
them) side by side, the request record, the metrics registry, the routes and the
middleware. Plugins are loaded in a cleanup context, before the port opens; a
critical plugin that fails stops the start. On SIGTERM/SIGINT aiohttp stops
accepting, waits for in-flight requests up to `server.shutdown_timeout_ms`, and only
then the cleanup context stops reloading, drains each plugin and calls its
`shutdown` once.

The operations surface (admin routes, /metrics, the dashboard) is on the main port;
with `dashboard.port` set, the server also opens it on that address as a second,
small app holding the same state, and nothing else.

Given the config file it came from (`source`), the server reloads it when the file
changes and, under `serve`, on SIGHUP.

One of several `--workers` is given its `cluster` (ops/cluster.py): it then opens its
peer socket, writes its metrics for the service's /metrics, and its operator's routes
answer for every worker. Config reloads are the arbiter's then (server/arbiter.py).
Once a second each process stores its plugins' chart points (ops/series.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import time
from collections.abc import AsyncIterator, Callable

import structlog
from aiohttp import web

from backworks.config import Config, ConfigSource
from backworks.http.aio.handler import add_endpoint_route
from backworks.http.aio.middleware import edge_middleware
from backworks.http.aio.state import EDGE, HOST, METRICS, RECORDER, RELOADER, TRAFFIC
from backworks.http.edge import Edge
from backworks.http.record import Recorder
from backworks.http.traffic import Traffic
from backworks.lifecycle.host import Host
from backworks.lifecycle.reloader import Reloader
from backworks.ops.admin import add_admin_routes
from backworks.ops.cluster import CLUSTER, Cluster, cluster_of
from backworks.ops.dashboard import add_dashboard_routes
from backworks.ops.metrics import (
    BackworksCollector,
    add_metrics_route,
    new_registry,
    runtime_registry,
)
from backworks.ops.peers import peer_listener
from backworks.ops.series import SERIES, Series
from backworks.server.listeners import LaneListener

log = structlog.get_logger("backworks.server")


def create_app(
    config: Config,
    *,
    admin_listener: bool = False,
    source: ConfigSource | None = None,
    cluster: Cluster | None = None,
) -> web.Application:
    """The server's app; with `admin_listener`, it also opens `dashboard.port` if set.

    Only a single-process server may ask for the admin listener: worker processes
    sharing the main port would each try to bind the admin one. `source`: the file
    `config` was read from, reloaded when it changes. `cluster`: this process is one
    of several workers of one server.
    """
    traffic = Traffic()
    recorder = Recorder(traffic, config.server.trusted_proxies)
    host = Host(config)
    edge = Edge(host, recorder)
    app = web.Application(
        client_max_size=config.server.max_body_bytes, middlewares=[edge_middleware(edge)]
    )
    app[HOST] = host
    app[EDGE] = edge
    app[RELOADER] = Reloader(host, source)
    app[TRAFFIC] = traffic
    app[RECORDER] = recorder
    app[METRICS] = new_registry(host, traffic) if cluster is None else cluster.registry()
    app[SERIES] = Series(host)
    if cluster is not None:
        app[CLUSTER] = cluster
    app.cleanup_ctx.append(_plugins_lifecycle)
    app.cleanup_ctx.append(_every_second)
    if cluster is not None:
        app.cleanup_ctx.append(peer_listener)
    if admin_listener and config.dashboard.port is not None:
        app.cleanup_ctx.append(_admin_listener)  # after the plugins: closed before them
    app.on_shutdown.append(_start_draining)
    _add_operations_routes(app)
    add_endpoint_route(app)
    return app


def create_admin_app(main: web.Application) -> web.Application:
    """The admin routes, /metrics and the dashboard alone, answering from `main`'s state."""
    app = web.Application(middlewares=[edge_middleware(main[EDGE])])
    app[HOST] = main[HOST]
    app[EDGE] = main[EDGE]
    app[RELOADER] = main[RELOADER]
    app[TRAFFIC] = main[TRAFFIC]
    app[RECORDER] = main[RECORDER]
    app[METRICS] = main[METRICS]
    app[SERIES] = main[SERIES]
    _add_operations_routes(app)
    return app


def _add_operations_routes(app: web.Application) -> None:
    add_admin_routes(app)
    add_dashboard_routes(app, enabled=app[HOST].config.dashboard.enabled)
    cluster = cluster_of(app)
    add_metrics_route(app, app[METRICS], None if cluster is None else _metrics_writer(app))


def _metrics_writer(app: web.Application) -> Callable[[], None]:
    """Writes this worker's figures where the service's /metrics reads them."""
    collector = BackworksCollector(app[HOST], app[TRAFFIC])
    runtime = runtime_registry()
    cluster = app[CLUSTER]
    return lambda: cluster.write_metrics(itertools.chain(collector.collect(), runtime.collect()))


async def _every_second(app: web.Application) -> AsyncIterator[None]:
    """Stores the chart points and, in a worker, writes its metrics, once a second."""
    series = app[SERIES]
    write = _metrics_writer(app) if CLUSTER in app else None

    async def tick() -> None:
        while True:
            # Just after each whole second, so that every worker's point for a second
            # covers the same second.
            await asyncio.sleep(1.02 - time.time() % 1)
            series.sample()
            if write is not None:
                write()

    task = asyncio.create_task(tick())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    if write is not None:
        write()  # the final counts of a worker that stops: its counters stay in the sum
        app[CLUSTER].close()


async def _plugins_lifecycle(app: web.Application) -> AsyncIterator[None]:
    host, reloader = app[HOST], app[RELOADER]
    try:
        await host.start()
        await reloader.start()
    except BaseException:
        # What did start is shut down, even on a failed start.
        await reloader.close()
        await host.close()
        raise
    yield
    app[TRAFFIC].flush()  # the last loop turn's requests: counted and logged
    await reloader.close()  # a reload in progress finishes first
    await host.close()


async def _admin_listener(app: web.Application) -> AsyncIterator[None]:
    config = app[HOST].config
    host = config.dashboard.host or config.server.host
    port = config.dashboard.port
    assert port is not None  # this context is added only when it is set
    runner = web.AppRunner(create_admin_app(app), access_log=None, handler_cancellation=True)
    await runner.setup()
    # The lane reads the admin port's connections too: every request is relayed.
    listener = LaneListener(runner, relay_all=True)
    try:
        await listener.start(host, port)
    except BaseException:
        await runner.cleanup()
        raise
    log.info("admin_listening", url=f"http://{host}:{port}")
    yield
    await listener.stop(1.0)  # the dashboard's keep-alive polls do not hold the stop
    await runner.cleanup()


async def reload_on_sighup(app: web.Application) -> AsyncIterator[None]:
    """A cleanup context for a server that owns its process: SIGHUP reloads the config."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, app[RELOADER].request_config_reload, "signal")
    yield
    loop.remove_signal_handler(signal.SIGHUP)


async def _start_draining(app: web.Application) -> None:
    app[HOST].draining = True
    log.info("server_draining")
