"""`backworks serve --workers N`: N worker processes on one port, one service.

Gunicorn's arbiter is a well-known process manager: it opens the port, forks the
workers (server/worker.py: each runs `run_server` and loads its own plugins after the
fork, so the master never loads native code), restarts one that dies, and turns
SIGTERM into a graceful stop. What makes the N workers one service:

- a private directory per server (mode 0700, removed at exit) where the workers keep
  their metric files, peer sockets and ready markers (ops/cluster.py); the arbiter
  marks a dead worker's metrics (`forget_worker`);
- config changes belong to the master: SIGHUP, or an edit of the config file (watched
  here, not in the workers), makes it read and validate the YAML once. A broken edit
  is refused (logged with every problem) and nothing changes. A valid one rolls the
  workers one at a time: a new worker with the new config starts, and only once it
  accepts requests is one old worker stopped (it drains its requests). A new worker
  that cannot start ends the roll: the old config and the workers still running stay.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import structlog
import watchfiles
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from backworks.config import Config, ConfigSource
from backworks.lifecycle.reloader import reread_config
from backworks.ops.cluster import forget_worker
from backworks.server.worker import WorkerPlan

log = structlog.get_logger("backworks.server")

# How long a new worker may take to load its plugins and accept, during a roll.
READY_TIMEOUT_S = 60.0
_STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})


class _Gunicorn(BaseApplication):  # type: ignore[misc]  # an untyped base class
    def __init__(self, config: Config, workers: int, source: ConfigSource | None) -> None:
        self.config = config
        self.source = source
        self.directory = Path(tempfile.mkdtemp(prefix="backworks-"))
        self._workers = workers
        super().__init__()

    def load_config(self) -> None:
        server = self.config.server
        directory = self.directory

        def child_exit(_arbiter: Any, worker: Any) -> None:
            forget_worker(directory, worker.pid)

        settings: dict[str, Any] = {
            "bind": f"{server.host}:{server.port}",
            "workers": self._workers,
            "worker_class": "backworks.server.worker.BackworksWorker",
            # The worker keeps serving through its drain delay, then drains requests.
            "graceful_timeout": math.ceil(
                (server.drain_delay_ms + server.shutdown_timeout_ms) / 1000 + 2
            ),
            "accesslog": None,  # Backworks writes its own structured access log
            "errorlog": "-",
            "logger_class": "backworks.server.gunicorn_log.StructuredLogger",  # JSON lines
            "loglevel": "warning",
            "proc_name": "backworks",
            # gunicorn's control socket is one per user: two servers would share it.
            "control_socket_disable": True,
            "child_exit": child_exit,
        }
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self) -> WorkerPlan:
        return WorkerPlan(self.config, self.directory)

    def reread(self, trigger: str) -> Config | None:
        """The config file read and validated again; None (logged) if it is refused."""
        if self.source is None:
            log.warning("config_reload_skipped", trigger=trigger, reason="no config file")
            return None
        return reread_config(self.source, self.config, trigger)

    def run(self) -> None:
        master = os.getpid()
        try:
            _RollingArbiter(self).run()
        finally:
            # A worker leaves through here too (gunicorn forks inside run): only the
            # master removes the directory its workers share.
            if os.getpid() == master:
                shutil.rmtree(self.directory, ignore_errors=True)


class _RollingArbiter(Arbiter):  # type: ignore[misc]  # an untyped base class
    """Gunicorn's arbiter whose reload rolls the workers one at a time (see the module)."""

    def __init__(self, app: _Gunicorn) -> None:
        super().__init__(app)
        self.backworks = app
        self._trigger = "signal"
        self._watch_stop = threading.Event()

    def start(self) -> None:
        super().start()
        if self.backworks.source is not None:
            threading.Thread(
                target=self._watch_config, args=(self.backworks.source.path,), daemon=True
            ).start()

    def halt(self, reason: str | None = None, exit_status: int = 0) -> None:
        self._watch_stop.set()
        super().halt(reason, exit_status)

    def _watch_config(self, path: Path) -> None:
        """A thread: a change of the config file asks the main loop for a reload."""
        path = path.absolute()
        for _ in watchfiles.watch(
            path.parent,
            watch_filter=lambda _change, changed: Path(changed) == path,
            stop_event=self._watch_stop,
            debounce=200,
        ):
            self._trigger = "watch"
            self.SIG_QUEUE.put_nowait(signal.SIGHUP)

    def handle_hup(self) -> None:
        trigger, self._trigger = self._trigger, "signal"
        self.roll(trigger)

    def roll(self, trigger: str) -> None:
        """Reads the config once; if valid, replaces the workers one at a time."""
        app = self.backworks
        new = app.reread(trigger)
        if new is None:
            return
        before = app.config
        if new == before and trigger == "watch":
            log.info("config_unchanged", trigger=trigger)
            return
        app.config = new  # what every worker forked from now on serves
        old = sorted(self.WORKERS, key=lambda pid: self.WORKERS[pid].age)
        log.info("workers_rolling", trigger=trigger, workers=len(old))
        for pid in old:
            if pid not in self.WORKERS:
                continue  # it exited meanwhile; gunicorn replaces it with the new config
            if self._stop_requested():
                return
            fresh = self.spawn_worker()
            if not self._wait_ready(fresh):
                app.config = before
                log.error(
                    "workers_roll_failed",
                    worker=fresh,
                    reason="a new worker did not start; the running workers keep serving",
                )
                return
            self.kill_worker(pid, signal.SIGTERM)  # it drains what it is serving
            log.info("worker_replaced", old=pid, new=fresh)
        log.info("workers_rolled", trigger=trigger, workers=len(old))

    def _wait_ready(self, pid: int) -> bool:
        ready = self.backworks.directory / f"ready-{pid}"
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if ready.exists():
                return True
            if self._reaped(pid) or self._stop_requested():
                return False
            time.sleep(0.05)
        self.kill_worker(pid, signal.SIGKILL)
        return False

    def _reaped(self, pid: int) -> bool:
        """Reaps `pid` if it exited (the main loop is busy with the roll)."""
        done, _ = os.waitpid(pid, os.WNOHANG)
        if not done:
            return False
        worker = self.WORKERS.pop(pid, None)
        if worker is not None:
            worker.tmp.close()
            self.cfg.child_exit(self, worker)
        return True

    def _stop_requested(self) -> bool:
        """Whether a stop signal is queued; the queue is left as it was."""
        queued = []
        while not self.SIG_QUEUE.empty():
            queued.append(self.SIG_QUEUE.get_nowait())
        for sig in queued:
            self.SIG_QUEUE.put_nowait(sig)
        return any(sig in _STOP_SIGNALS for sig in queued)


def serve_workers(config: Config, workers: int, source: ConfigSource | None = None) -> None:
    """Serves with `workers` processes until SIGTERM/SIGINT; gunicorn exits the process.

    With `source`, SIGHUP and edits of that file roll the workers onto the new config.
    """
    _Gunicorn(config, workers, source).run()
