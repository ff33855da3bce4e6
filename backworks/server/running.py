"""What one server process builds and runs: the app on its sockets until told to stop.

`run_server` is the whole life of a serving process, the single-process `backworks
serve` and each `--workers` process alike (server/worker.py hands it the sockets
gunicorn's arbiter opened): build the app, load the plugins, accept, and on SIGTERM
stop in this order, so that a load balancer loses no request:

1. the health route answers 503 (`draining`) while the server still serves, for
   `server.drain_delay_ms`: a balancer that probes it routes new requests elsewhere;
   a second signal cuts the delay short, and SIGINT or SIGQUIT skip it;
2. the server stops accepting, and the requests in flight get up to
   `server.shutdown_timeout_ms`;
3. each plugin drains and its `shutdown` runs once (the app's cleanup context).

Every socket is the lane's (server/listeners.py); `server.engine` says what it relays.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import socket
from collections.abc import Callable, Sequence

import attrs
import structlog
from aiohttp import web

from backworks import tracing
from backworks.config import Config, ConfigSource
from backworks.http.aio.state import HOST
from backworks.ops.cluster import Cluster
from backworks.server.app import create_app, reload_on_sighup
from backworks.server.listeners import LaneListener

log = structlog.get_logger("backworks.server")

HEARTBEAT_S = 1.0


@attrs.frozen
class Listen:
    """Where a process accepts: its own host and port, or sockets a parent opened."""

    host: str = "127.0.0.1"
    port: int = 0
    sockets: Sequence[socket.socket] = ()


async def run_server(
    config: Config,
    listen: Listen,
    *,
    source: ConfigSource | None = None,
    cluster: Cluster | None = None,
    heartbeat: Callable[[], bool] | None = None,
) -> None:
    """Serves `config` until SIGTERM/SIGINT (or `heartbeat` returns False), then drains.

    `source`: reload the config from it on SIGHUP and when the file changes (a single
    process; workers leave that to the arbiter). `cluster`: this process is one worker
    of several. `heartbeat` is called every HEARTBEAT_S while serving (the worker tells
    its arbiter it lives). Raises StartupError, OSError when the start fails.
    """
    tracing.activate()  # on only with the otel extra configured; per process (after a fork)
    if cluster is not None:
        app = create_app(config, cluster=cluster)
    else:
        app = create_app(config, admin_listener=True, source=source)
        if source is not None:
            app.cleanup_ctx.append(reload_on_sighup)
    server = config.server
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=server.shutdown_timeout_ms / 1000,
        keepalive_timeout=server.keepalive_timeout_ms / 1000,
        # A client that goes away cancels its handler, and so sets its plugin call's
        # cancel word (the lane does the same for its own requests).
        handler_cancellation=True,
    )
    await runner.setup()  # loads the plugins: a critical one that fails raises here
    listeners: list[LaneListener] = []
    try:
        listeners = await _listen(runner, listen)
        # Everything made so far (the interpreter's modules, aiohttp, the plugins' Python
        # side) lives as long as the server: the cyclic collector need not walk it again.
        gc.freeze()
        log.info(
            "server_listening", url=f"http://{listen.host}:{listen.port}", engine=server.engine
        )
        if cluster is not None:
            cluster.mark_ready()
        signals, stop = await _wait_for_stop(heartbeat)
        app[HOST].draining = True  # the health route answers 503 from now on
        # SIGTERM is a balancer's or a supervisor's stop: route around us first. SIGINT
        # (Ctrl-C) and SIGQUIT (gunicorn's quick stop) skip the delay.
        delay = server.drain_delay_ms / 1000 if stop == signal.SIGTERM else 0
        if delay:
            log.info("server_drain_delay", delay_ms=server.drain_delay_ms)
            await _wait_or_signal(signals, delay)
    finally:
        # Stop accepting first, on every socket; then each listener's connections drain
        # (a connection accepted just before gets lane.FRESH_GRACE_S for its request).
        for listener in listeners:
            listener.close()
        for listener in listeners:
            await listener.stop(server.shutdown_timeout_ms / 1000)
        await runner.cleanup()  # then the app shuts down, and the plugins


async def _listen(runner: web.AppRunner, listen: Listen) -> list[LaneListener]:
    """The lane on `listen`'s sockets, or on its host and port."""
    listeners = []
    for sock in listen.sockets or (None,):
        listener = LaneListener(runner)
        if sock is not None:
            await listener.start(sock=sock)
        else:
            await listener.start(listen.host, listen.port)
        listeners.append(listener)
    return listeners


async def _wait_for_stop(
    heartbeat: Callable[[], bool] | None,
) -> tuple[asyncio.Queue[int], int | None]:
    """Returns once SIGTERM/SIGINT/SIGQUIT came (which one; None when the heartbeat said
    stop); later signals land in the returned queue."""
    loop = asyncio.get_running_loop()
    signals: asyncio.Queue[int] = asyncio.Queue()
    for stop in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        loop.add_signal_handler(stop, signals.put_nowait, int(stop))
    while True:
        if heartbeat is not None and not heartbeat():
            return signals, None
        try:
            sig = await asyncio.wait_for(signals.get(), HEARTBEAT_S)
        except TimeoutError:
            continue
        log.info("server_stopping", signal=signal.Signals(sig).name)
        return signals, sig


async def _wait_or_signal(signals: asyncio.Queue[int], delay: float) -> None:
    try:
        await asyncio.wait_for(signals.get(), delay)
    except TimeoutError:
        return
    log.info("server_drain_delay_cut", reason="a second signal")
