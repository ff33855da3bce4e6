"""The servers under test: what each variant runs, and its process from start to stop.

Every variant is a real server process on a free loopback port, pinned to the
server CPU (cpu.py): the baseline aiohttp app, the same handler on granian, the
Extism app, or `backworks serve` with a config written for the variant. A server is
ready when its URL answers 200 with the body the variant expects (so a row that
would measure error answers or a wrong body fails before it is measured).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Literal

import attrs
import yaml
from cpu import Placement, pinned, tree_cpu_seconds

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PLUGINS = REPO / "plugins"
WEATHER_CONFIG = {"api_key": "bench", "units": "metric", "now": "2026-11-22T12:00:00Z"}
HELLO_ADA = {"hello": "Ada"}

Kind = Literal["baseline", "granian", "extism", "backworks"]
Otel = Literal["off", "absent", "console"]


@attrs.frozen
class Variant:
    """One row's server: what runs, the request it is loaded with, what it must answer.

    `plugins`: per-plugin settings for a `backworks` server (merged over the defaults
    every bench config has); `measured`: the plugin whose effective dispatch is read
    back after the run (a plugin demoted from the inline path must not pass for one).
    """

    name: str
    kind: Kind
    target: str = "/hello?name=Ada"
    plugins: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    engine: Literal["lane", "aiohttp"] = "lane"
    workers: int = 1
    otel: Otel = "off"
    expect: Mapping[str, Any] | None = None
    measured: str | None = None
    compiled_step: bool = True  # server.compiled_step: false measures the pure-Python path


@attrs.frozen
class Context:
    """What every server of one run shares: its scratch folder, the work plugins, the CPUs."""

    folder: Path
    work_plugins: Path
    placement: Placement


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_example_plugins() -> None:
    """Builds the example plugins (make hello-plugin weather-plugin) if needed."""
    subprocess.run(["make", "-s", "hello-plugin", "weather-plugin"], cwd=REPO, check=True)


def backworks_config(variant: Variant, ctx: Context, port: int) -> dict[str, Any]:
    """The `backworks.yaml` of a variant: every bench plugin and route, its settings on top."""
    settings: dict[str, dict[str, Any]] = {"weather": {"config": WEATHER_CONFIG}}
    for name, extra in variant.plugins.items():
        settings.setdefault(name, {}).update(extra)
    plugin_route = {"method": "GET"}
    return {
        "plugin_discovery": {"directories": [str(PLUGINS), str(ctx.work_plugins)]},
        "plugins": settings,
        "endpoints": {
            "/hello": {**plugin_route, "runtime": {"type": "plugin", "handler": "hello"}},
            "/weather/{city}": {
                **plugin_route,
                "runtime": {"type": "plugin", "handler": "weather"},
            },
            "/spin": {**plugin_route, "runtime": {"type": "plugin", "handler": "spin"}},
            "/block": {**plugin_route, "runtime": {"type": "plugin", "handler": "block"}},
            "/static": {"method": "GET", "response": {"status": 200, "body": '{"hello": "world"}'}},
        },
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "engine": variant.engine,
            "compiled_step": variant.compiled_step,
        },
        # Access logs are off in every row: the baseline writes none either.
        "logging": {"level": "warning", "format": "json"},
    }


def _otel_env(otel: Otel, folder: Path) -> dict[str, str]:
    """Tracing on, or the otel extra made absent, or (every other row) installed and off."""
    if otel == "console":
        return {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "bench"}
    if otel == "absent":
        # A package that cannot be imported stands in for the extra not installed.
        stub = folder / "no-otel" / "opentelemetry"
        stub.mkdir(parents=True, exist_ok=True)
        (stub / "__init__.py").write_text('raise ImportError("the otel extra is absent")\n')
        return {"PYTHONPATH": str(stub.parent), "OTEL_TRACES_EXPORTER": ""}
    return {"OTEL_TRACES_EXPORTER": ""}


class Server:
    """One running server of a variant, pinned to the server CPU, on its own port."""

    def __init__(self, variant: Variant, ctx: Context) -> None:
        self.variant, self.port = variant, free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = self.base + variant.target
        self.log = ctx.folder / f"server-{self.port}.log"
        env = {**os.environ, "BACKWORKS_CACHE_DIR": str(ctx.folder / "cache")}
        env.update(_otel_env(variant.otel, ctx.folder))
        argv = self._argv(ctx)
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                argv, env=env, stdout=subprocess.DEVNULL, stderr=log,
                preexec_fn=pinned(ctx.placement.server), start_new_session=True,
            )  # fmt: skip

    def _argv(self, ctx: Context) -> list[str]:
        py, port = sys.executable, str(self.port)
        kind = self.variant.kind
        if kind == "baseline":
            return [py, str(BENCH / "baseline_app.py"), port]
        if kind == "extism":
            return [py, str(BENCH / "extism_app.py"), port]
        if kind == "granian":
            return [py, "-m", "granian", "--interface", "rsgi", "--host", "127.0.0.1",
                    "--port", port, "--workers", "1", "--runtime-threads", "1", "--http", "1",
                    "--no-ws", "--log-level", "warning", "--working-dir", str(BENCH),
                    "granian_app:app"]  # fmt: skip
        config = ctx.folder / f"bench-{self.port}.yaml"
        config.write_text(yaml.safe_dump(backworks_config(self.variant, ctx, self.port)))
        argv = [py, "-m", "backworks", "serve", "--config", str(config)]
        if self.variant.workers > 1:
            argv += ["--workers", str(self.variant.workers)]
        return argv

    def wait_ready(self, timeout: float = 60) -> None:
        """Waits for a 200 with the expected body; raises RuntimeError with the log if none."""
        deadline = time.monotonic() + timeout
        problem = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                msg = f"{self.variant.name}: server exited: {self._log_tail()}"
                raise RuntimeError(msg)
            try:
                with urllib.request.urlopen(self.url, timeout=5) as resp:  # noqa: S310
                    body = resp.read()
                    if self.variant.expect is None or json.loads(body) == self.variant.expect:
                        return
                    problem = f"answered {body!r}, expected {self.variant.expect!r}"
                    break
            except OSError as e:
                problem = str(e)
                time.sleep(0.1)
        msg = f"{self.variant.name}: {self.url}: {problem}\n{self._log_tail()}"
        raise RuntimeError(msg)

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def cpu_seconds(self) -> float:
        """CPU seconds the server's whole process tree has spent so far."""
        return tree_cpu_seconds(self.proc.pid)

    def dispatch(self) -> str | None:
        """The measured plugin's dispatch as the server reports it now (None: not Backworks)."""
        if self.variant.kind != "backworks" or self.variant.measured is None:
            return None
        with urllib.request.urlopen(f"{self.base}/_backworks/plugins", timeout=10) as resp:  # noqa: S310
            rows = json.loads(resp.read())["plugins"]
        for row in rows:
            if row["name"] == self.variant.measured:
                if row.get("isolation") == "process":
                    return "worker process"
                return str(row.get("dispatch"))
        return None

    def stop(self) -> None:
        """SIGTERM; SIGKILL to its process group if it has not gone within 15 s.

        The group is the server's own session (started with start_new_session), so a
        worker process it left behind goes too, and nothing else does.
        """
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=15)
        with suppress(ProcessLookupError):  # else the whole group is gone already
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@contextmanager
def running(variants: list[Variant], ctx: Context) -> Iterator[tuple[list[Server], dict[str, str]]]:
    """Starts every variant's server and waits until each answers right; stops them after.

    Yields the servers that are ready and, by variant name, why each other one is not:
    a row that cannot run (a missing extra, a server that will not start) is reported,
    and the rest are still measured.
    """
    started: list[Server] = []
    failed: dict[str, str] = {}
    try:
        for variant in variants:
            started.append(Server(variant, ctx))
        ready = []
        for server in started:
            try:
                server.wait_ready()
                ready.append(server)
            except RuntimeError as e:
                failed[server.variant.name] = str(e)
                server.stop()
        yield ready, failed
    finally:
        for server in started:
            server.stop()
