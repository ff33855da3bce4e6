"""Fixtures that serve a config with real C plugins: `kit` compiles, `serve` starts the app.

A pytest plugin module (tests/conftest.py lists it in `pytest_plugins`), so every test
file can ask for `kit` and `serve` by name without importing them.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, cast

import pytest
import yaml
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient
from yarl import URL

from backworks.config import load_config
from backworks.server.app import create_app
from backworks.server.listeners import LaneListener
from tests.conftest import BuildPlugin

KIT = (Path(__file__).parent / "plugins" / "testkit.c").read_text()
Client = TestClient[web.Request, web.Application]
# pytest-aiohttp's `aiohttp_client` fixture.
MakeClient = AiohttpClient


class Kit(Protocol):
    """The `kit` fixture: compiles the test kit as plugin `name` into ./plugins."""

    def __call__(self, name: str = "kit", *, thread_safe: bool = False) -> Path: ...


class Serve(Protocol):
    """The `serve` fixture: serves `config` (made with `create_app(..., **options)`)."""

    async def __call__(self, config: dict[str, Any], **options: Any) -> Client: ...


@pytest.fixture
def plugins_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "plugins"
    folder.mkdir()
    return folder


@pytest.fixture
def kit(build_plugin: BuildPlugin, plugins_dir: Path) -> Kit:
    """`kit("name", thread_safe=False)` compiles the test kit as plugin `name`."""

    def build(name: str = "kit", *, thread_safe: bool = False) -> Path:
        flags = ("-DKIT_FLAGS=BW_FLAG_THREAD_SAFE",) if thread_safe else ()
        return build_plugin(
            KIT, name=name, folder=plugins_dir, extra_flags=(f'-DKIT_NAME="{name}"', *flags)
        )

    return build


@pytest.fixture
def isolation() -> str:
    """The isolation every plugin in ./plugins gets; a test module may parametrize it."""
    return "in-process"


@pytest.fixture
def engine() -> str:
    """The HTTP engine `serve` answers with (server.engine); a test module may parametrize it."""
    return "lane"


class LaneTestServer(TestServer):
    """aiohttp's TestServer listening with the lane (server/listeners.py), as `serve` does.

    `server.engine` in the app's config says whether the lane answers the endpoints
    itself or relays them to aiohttp's handler.
    """

    _listener: LaneListener | None = None

    async def start_server(
        self, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any
    ) -> None:
        if self.runner:
            return
        self._loop = loop
        self._ssl = None
        self.runner = await self._make_runner(handler_cancellation=True, **kwargs)
        await self.runner.setup()
        sock = self.socket_factory(self.host, self.port or 0, socket.AF_INET)
        self.host, self.port = sock.getsockname()[:2]
        assert isinstance(self.runner, web.AppRunner)
        self._listener = LaneListener(self.runner)
        await self._listener.start(sock=sock)
        self.scheme = "http"
        self._root = URL(f"http://{self.host}:{self.port}")

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.stop(1.0)
            self._listener = None
        await super().close()


@pytest.fixture
def serve(
    tmp_path: Path,
    plugins_dir: Path,
    aiohttp_client: MakeClient,
    monkeypatch: pytest.MonkeyPatch,
    isolation: str,
    engine: str,
) -> Serve:
    """`await serve(config, **create_app_options)`: writes the config next to ./plugins,
    serves it with `engine`, and returns a client of the server."""
    monkeypatch.setenv("BACKWORKS_CACHE_DIR", str(tmp_path / "cache"))

    async def start(config: dict[str, Any], **options: Any) -> Client:
        config.setdefault("plugin_discovery", {"enabled": True, "directories": ["./plugins"]})
        if isolation != "in-process":
            plugins = config.setdefault("plugins", {})
            for library in plugins_dir.glob("lib*.*"):
                name = library.name[3:].split(".")[0]
                plugins.setdefault(name, {}).setdefault("isolation", isolation)
        config.setdefault("server", {}).setdefault("engine", engine)
        path = tmp_path / "backworks.yaml"
        path.write_text(yaml.safe_dump(config))
        app = create_app(load_config(path), **options)
        server = LaneTestServer(app)
        return cast(Client, await aiohttp_client(server))

    return start


async def error_of(resp: ClientResponse) -> dict[str, Any]:
    body = await resp.json()
    return body["error"]  # type: ignore[no-any-return]


async def eventually(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Polls `check` (a function, or a coroutine function) until it returns something true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        await asyncio.sleep(0.05)
    pytest.fail(f"not within {timeout} s: {check}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
