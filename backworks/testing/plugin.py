"""`Plugin`: one plugin library loaded as the server would load it, called directly."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Coroutine, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import attrs

from backworks.abi import Request, Response
from backworks.config import parse_config
from backworks.errors import PluginLoadError
from backworks.lifecycle.build import Builder
from backworks.plugins import discovery
from backworks.plugins.loading import PluginSpec
from backworks.runtime.runner import PluginRunner

_T = TypeVar("_T")
CLOSE_TIMEOUT_S = 10.0


@attrs.frozen
class Answer:
    """What the plugin answered: status, headers (names lower-case), content type, body."""

    status: int
    body: bytes
    content_type: str
    headers: dict[str, str]

    @classmethod
    def of(cls, response: Response) -> Answer:
        headers = {name.lower(): value for name, value in response.headers}
        return cls(response.status, response.body, response.content_type or "application/json",
                   headers)  # fmt: skip

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self) -> Any:
        """The body parsed as JSON (ValueError if it is not)."""
        return json.loads(self.body)


class Plugin:
    """A plugin library loaded and started (`init` with `config`), ready to be called.

    `path`: the .so/.dylib/.dll. `config`: the plugin's own JSON config (what the YAML
    `config:` key holds). `settings`: any other keys of a `plugins.<name>` entry, such
    as `isolation: process`, `timeout_ms` or `max_concurrency`. `name`: the plugin name
    the library must declare; by default whatever it declares (read in a child
    process, as discovery does). Raises ConfigError or PluginLoadError/PluginInitError.
    Close it (or use `with`): `shutdown` runs then, once.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        config: Mapping[str, Any] | None = None,
        isolation: str = "in-process",
        name: str | None = None,
        **settings: Any,
    ) -> None:
        self.path = Path(path).resolve()
        self.name = name or _declared_name(self.path)
        entry = {**settings, "path": str(self.path), "isolation": isolation}
        if config is not None:
            entry["config"] = dict(config)
        parsed = parse_config(
            {"plugins": {self.name: entry}, "plugin_discovery": {"enabled": False}},
            source=f"Plugin({str(self.path)!r})",
            base_dir=self.path.parent,
        )
        self.settings = parsed.plugins[self.name]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"backworks-plugin-{self.name}", daemon=True
        )
        self._thread.start()
        self._builder = Builder()
        self._runner: PluginRunner | None = None
        self._counter = 0
        try:
            self._runner = self._run(self._start(), timeout=None)
        except BaseException:
            self.close()
            raise

    async def _start(self) -> PluginRunner:
        s = self.settings
        spec = PluginSpec(
            self.name, self.path, s.config_json, s.allow_insecure_permissions, s.sha256
        )
        version = await self._builder.build(spec, s)
        return version.runner

    @property
    def runner(self) -> PluginRunner:
        """The runner the server would use: its stats, breaker and backend are there."""
        if self._runner is None:
            msg = f"plugin {self.name!r} is closed"
            raise RuntimeError(msg)
        return self._runner

    def call(
        self,
        method: str = "GET",
        path: str = "/",
        *,
        query: str = "",
        headers: Mapping[str, str] | None = None,
        body: bytes | str | Any = b"",
        endpoint: str | None = None,
        params: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Answer:
        """Calls the plugin's `handle` with one request and returns its answer.

        `body`: bytes, text, or anything else (sent as JSON, with its content type).
        `endpoint`: the route pattern the plugin sees as matched (default: `path`).
        Raises the error the server would map to an HTTP status (PluginCallError for
        a failed call, PluginTimeoutError, PluginCrashedError, CircuitOpenError).
        """
        request = self.request(
            method, path, query=query, headers=headers, body=body, endpoint=endpoint, params=params
        )
        return self._run(self._answer(request), timeout)

    async def acall(self, method: str = "GET", path: str = "/", **options: Any) -> Answer:
        """`call` for an `async` test: awaits the plugin's answer on the caller's loop."""
        timeout = options.pop("timeout", None)
        request = self.request(method, path, **options)
        future = asyncio.run_coroutine_threadsafe(self._answer(request), self._loop)
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout)

    def health(self, timeout: float = 5.0) -> Answer | None:
        """The plugin's health report (None when it has no `health` function)."""
        report = self._run(self.runner.health(timeout), timeout + 1)
        return None if report is None else Answer.of(report)

    def request(
        self,
        method: str,
        path: str,
        *,
        query: str = "",
        headers: Mapping[str, str] | None = None,
        body: bytes | str | Any = b"",
        endpoint: str | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Request:
        """The `Request` the plugin is handed for these arguments (as the server makes it)."""
        sent = {name.lower(): value for name, value in (headers or {}).items()}
        if isinstance(body, str):
            data = body.encode("utf-8")
        elif isinstance(body, bytes | bytearray):
            data = bytes(body)
        else:
            data = json.dumps(body).encode("utf-8")
            sent.setdefault("content-type", "application/json")
        self._counter += 1
        return Request(
            method=method.upper(),
            path=path,
            query=query,
            endpoint=endpoint if endpoint is not None else path,
            params=tuple((params or {}).items()),
            headers=tuple(sent.items()),
            body=data,
            request_id=f"test-{self._counter}",
            timeout_ms=self.settings.timeout_ms,
        )

    async def _answer(self, request: Request) -> Answer:
        return Answer.of(await self.runner.handle(request))

    def _run(self, coro: Coroutine[Any, Any, _T], timeout: float | None) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def close(self) -> None:
        """Waits for calls in flight, calls the plugin's `shutdown` once, frees the loop."""
        if not self._loop.is_closed():
            if self._runner is not None:
                runner, self._runner = self._runner, None
                self._run(runner.close(drain_timeout=CLOSE_TIMEOUT_S), CLOSE_TIMEOUT_S + 5)
            self._builder.close()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(CLOSE_TIMEOUT_S)
            self._loop.close()

    def __enter__(self) -> Plugin:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Plugin({self.name!r}, {str(self.path)!r}, isolation={self.settings.isolation!r})"


def _declared_name(path: Path) -> str:
    """The name the library declares, read in a child process (a crash stays there)."""
    result = discovery.examine(path, allow_insecure_permissions=True)
    if not result.ok or result.name is None:
        reason = result.error or "it is not a Backworks plugin (no entry symbol)"
        raise PluginLoadError(path, reason)
    return result.name
