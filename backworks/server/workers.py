"""`backworks serve --workers N`: N server processes on one port, managed by gunicorn.

Gunicorn's arbiter is a well-known process manager: it forks the workers, restarts
one that dies, and turns SIGTERM into a graceful stop and SIGHUP into a graceful
replacement of every worker. Each worker runs aiohttp's own gunicorn worker class
and builds its own app, so each loads its own plugins after the fork (the master
never loads native code, so nothing native is shared across a fork).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from gunicorn.app.base import BaseApplication

from backworks.config import Config
from backworks.server.app import create_app


class _Gunicorn(BaseApplication):  # type: ignore[misc]  # an untyped base class
    def __init__(self, config: Config, workers: int) -> None:
        self._config = config
        self._workers = workers
        super().__init__()

    def load_config(self) -> None:
        server = self._config.server
        settings: dict[str, Any] = {
            "bind": f"{server.host}:{server.port}",
            "workers": self._workers,
            "worker_class": _worker_class(),
            # aiohttp's worker drains in-flight requests within this budget.
            "graceful_timeout": max(1, round(server.shutdown_timeout_ms / 1000)),
            "accesslog": None,  # Backworks writes its own structured access log
            "errorlog": "-",
            "loglevel": "warning",
            "proc_name": "backworks",
        }
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self) -> web.Application:
        return create_app(self._config)


def _worker_class() -> str:
    """aiohttp's uvloop worker when uvloop is installed (the `speed` extra)."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "aiohttp.GunicornWebWorker"
    return "aiohttp.GunicornUVLoopWebWorker"


def serve_workers(config: Config, workers: int) -> None:
    """Serves with `workers` processes until SIGTERM/SIGINT; gunicorn exits the process."""
    _Gunicorn(config, workers).run()
