"""Where a plugin's calls run: the protocols, and the in-process thread backend.

A `Backend` starts calls and hands back futures that complete when the native call
has really returned; the runner (runner.py) guards every call with its admission
gate, timeout and breaker whatever the backend. `ThreadBackend` runs an in-process
plugin's calls on its own NativePool; isolation/ has the worker-process backend.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from backworks.abi import CancelFlag, PluginInfo, Request, Response
from backworks.runtime.native_pool import NativePool, Returned

# Starts `handle(req, cancel)`; the outcome is handed to the callback (native_pool.Returned).
RunHandle = Callable[[Request, CancelFlag, Returned], None]


class PluginCalls(Protocol):
    """The synchronous calls of one initialised plugin state (abi.NativeInstance)."""

    info: PluginInfo

    def handle(self, req: Request, cancel: CancelFlag) -> Response: ...
    def on_request(self, req: Request, cancel: CancelFlag) -> Response | None: ...
    def on_response(
        self, req: Request, upstream: Response, cancel: CancelFlag
    ) -> Response | None: ...
    def health(self) -> Response | None: ...
    def shutdown(self) -> None: ...


class Backend(Protocol):
    """Where a plugin's calls run: threads of this process, or worker processes.

    `start_*` returns a future that completes when the call has really returned.
    """

    info: PluginInfo

    def start_handle(self, req: Request, cancel: CancelFlag) -> asyncio.Future[Response]: ...
    def start_on_request(
        self, req: Request, cancel: CancelFlag
    ) -> asyncio.Future[Response | None]: ...
    def start_on_response(
        self, req: Request, upstream: Response, cancel: CancelFlag
    ) -> asyncio.Future[Response | None]: ...
    def start_health(self) -> asyncio.Future[Response | None]: ...
    def start_shutdown(self) -> asyncio.Future[None]: ...
    def abandon(self, call: asyncio.Future[Any]) -> bool:
        """The host stopped waiting for `call` (its cancel flag is already set).

        True when the call never reached the plugin (it waited for a worker): then it
        is dropped, and no timeout is the plugin's.
        """

    def snapshot(self) -> dict[str, Any]:
        """Backend details for the admin routes (e.g. worker processes)."""

    def inline_calls(self) -> PluginCalls | None:
        """The plugin's calls, when they may run on the event-loop thread itself.

        Only a backend whose plugin lives in this process has them; None otherwise.
        """

    def handle_runner(self) -> RunHandle | None:
        """`handle` started with a callback for its outcome instead of a future.

        What the lane's pooled calls use (no future, no coroutine per call); None when
        the backend has only futures, and its calls go through `start_handle`.
        """

    def close(self) -> None: ...


class ThreadBackend:
    """Runs one in-process plugin's calls on its own thread pool.

    A pool per plugin, sized to its concurrency limit: a plugin whose calls hang can
    exhaust only its own threads, never another plugin's.
    """

    def __init__(self, calls: PluginCalls, threads: int) -> None:
        self.info = calls.info
        self.calls = calls
        self._pool = NativePool(threads, f"plugin-{calls.info.name}")
        self._run = self._pool.submit

    def start_handle(self, req: Request, cancel: CancelFlag) -> asyncio.Future[Response]:
        return self._run(self.calls.handle, req, cancel)

    def start_on_request(self, req: Request, cancel: CancelFlag) -> asyncio.Future[Response | None]:
        return self._run(self.calls.on_request, req, cancel)

    def start_on_response(
        self, req: Request, upstream: Response, cancel: CancelFlag
    ) -> asyncio.Future[Response | None]:
        return self._run(self.calls.on_response, req, upstream, cancel)

    def start_health(self) -> asyncio.Future[Response | None]:
        return self._run(self.calls.health)

    def start_shutdown(self) -> asyncio.Future[None]:
        return self._run(self.calls.shutdown)

    def abandon(self, call: asyncio.Future[Any]) -> bool:
        """Nothing more to do: a thread cannot be stopped, the cancel flag is set."""
        return False

    def snapshot(self) -> dict[str, Any]:
        return {"isolation": "in-process"}

    def inline_calls(self) -> PluginCalls:
        return self.calls

    def handle_runner(self) -> RunHandle:
        run, handle = self._pool.run, self.calls.handle

        def run_handle(req: Request, cancel: CancelFlag, returned: Returned) -> None:
            run(returned, handle, (req, cancel))

        return run_handle

    def close(self) -> None:
        self._pool.close()
