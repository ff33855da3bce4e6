"""One `--workers` process: gunicorn's worker protocol around `run_server`.

The arbiter (server/arbiter.py) forks this worker; everything the worker builds and
runs is `run_server` (server/running.py), handed the listening sockets the arbiter
opened and the server's shared directory. This class only adapts gunicorn's side:
a fresh event loop after the fork, the heartbeat the arbiter watches, and the exit.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import attrs
from gunicorn.workers.base import Worker

from backworks.config import Config
from backworks.ops.cluster import Cluster
from backworks.server.running import Listen, run_server
from backworks.server.serve import new_event_loop


@attrs.frozen
class WorkerPlan:
    """What the arbiter hands a worker it forks: the config and the shared directory."""

    config: Config
    directory: Path


class BackworksWorker(Worker):  # type: ignore[misc]  # an untyped base class
    """A gunicorn worker whose whole life is `run_server` on the arbiter's sockets."""

    def init_process(self) -> None:
        # A loop of its own: nothing of the arbiter's (it runs none) crosses the fork.
        self.loop = new_event_loop()
        asyncio.set_event_loop(self.loop)
        super().init_process()  # signals, then load_wsgi() (our WorkerPlan), then run()

    def init_signals(self) -> None:
        super().init_signals()
        # Until run_server installs its own handlers (after the plugins loaded), a stop
        # request is remembered and honoured as soon as the server listens.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(sig, self._stop_early)

    def _stop_early(self, sig: int, frame: Any) -> None:
        self.alive = False

    def run(self) -> None:
        plan: WorkerPlan = self.wsgi
        # Not booted until it listens: a worker that cannot start (a critical plugin)
        # exits with gunicorn's boot error, and the arbiter stops instead of looping.
        self.booted = False
        server = plan.config.server
        listen = Listen(server.host, server.port, tuple(s.sock for s in self.sockets))
        cluster = Cluster(plan.directory, os.getpid())
        try:
            self.loop.run_until_complete(
                run_server(plan.config, listen, cluster=cluster, heartbeat=self._heartbeat)
            )
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()
        sys.exit(0)

    def _heartbeat(self) -> bool:
        """Tells the arbiter this worker lives; False when it should stop."""
        self.booted = True
        self.notify()
        return bool(self.alive) and self.ppid == os.getppid()
