"""`backworks serve` and `backworks validate` as a user runs them: real processes, real ports."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import BuildPlugin

REPO = Path(__file__).resolve().parent.parent
KIT = (Path(__file__).parent / "plugins" / "testkit.c").read_text()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 -- loopback
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Server:
    """A `backworks serve` child process on a free loopback port."""

    def __init__(self, config: Path, cwd: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "BACKWORKS_CACHE_DIR": str(cwd / "cache")}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "backworks",
                "serve",
                "--config",
                str(config),
                "--port",
                str(self.port),
            ],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited early: {self.proc.stderr.read().decode()}")  # type: ignore[union-attr]
            try:
                if get(f"{self.url}/_backworks/health", timeout=1)[0] == 200:
                    return
            except OSError:
                time.sleep(0.05)
        pytest.fail("server did not become ready")

    def stop(self) -> tuple[int, list[dict[str, Any]]]:
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, [json.loads(line) for line in err.decode().splitlines()]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[list[Server]]:
    servers: list[Server] = []
    yield servers
    for server in servers:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.communicate()


def in_flight(server: Server, plugin: str) -> int:
    """The calls the server's plugin is running now, from /metrics (no health call)."""
    _, body = get(f"{server.url}/metrics")
    gauge = f'backworks_plugin_in_flight{{plugin="{plugin}"}} '
    line = next(line for line in body.decode().splitlines() if line.startswith(gauge))
    return int(float(line.removeprefix(gauge)))


def write_config(folder: Path, config: dict[str, Any]) -> Path:
    path = folder / "backworks.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_sigterm_lets_the_call_in_flight_finish_then_shuts_plugins_down_once(
    tmp_path: Path, build_plugin: BuildPlugin, served: list[Server]
) -> None:
    build_plugin(KIT, "kit", tmp_path / "plugins", extra_flags=('-DKIT_NAME="kit"',))
    marker = tmp_path / "shutdowns.txt"
    config = write_config(
        tmp_path,
        {
            "plugins": {"kit": {"config": {"marker": str(marker)}}},
            "logging": {"format": "json"},
        },
    )
    server = Server(config, tmp_path)
    served.append(server)
    server.wait_ready()
    answers: list[tuple[int, bytes]] = []
    call = threading.Thread(
        target=lambda: answers.append(get(f"{server.url}/plugins/kit/sleep?ms=5000", timeout=60))
    )
    call.start()
    deadline = time.monotonic() + 30
    while not in_flight(server, "kit"):  # the call is inside the plugin now
        assert time.monotonic() < deadline, "the call never reached the plugin"
        time.sleep(0.02)
    code, logs = server.stop()
    call.join()
    assert answers == [(200, b'{"slept": true}')], "the sleep (5 s) outlasted the wait for it"
    assert code == 0
    assert marker.read_text() == "kit\n", "shutdown ran exactly once"
    events = [e["event"] if e["event"] != "request" else e["path"] for e in logs]
    assert events.index("/plugins/kit/sleep") < events.index("plugins_closed"), (
        "plugins shut down only after the call in flight was answered"
    )


@pytest.mark.parametrize(("stop", "delayed"), [(signal.SIGTERM, True), (signal.SIGINT, False)])
def test_sigterm_keeps_serving_with_health_503_for_the_drain_delay(
    tmp_path: Path,
    build_plugin: BuildPlugin,
    served: list[Server],
    stop: signal.Signals,
    delayed: bool,
) -> None:
    build_plugin(KIT, "kit", tmp_path / "plugins", extra_flags=('-DKIT_NAME="kit"',))
    config = write_config(
        tmp_path, {"server": {"drain_delay_ms": 3000}, "logging": {"format": "json"}}
    )
    server = Server(config, tmp_path)
    served.append(server)
    server.wait_ready()
    server.proc.send_signal(stop)
    if delayed:
        deadline = time.monotonic() + 10
        while get(f"{server.url}/_backworks/health")[0] != 503:
            assert time.monotonic() < deadline, "health never turned 503"
            time.sleep(0.02)
        # Still accepting and answering while it says it is draining.
        assert get(f"{server.url}/plugins/kit/status?code=200")[0] == 200
        assert server.proc.poll() is None
    _, err = server.proc.communicate(timeout=30)
    assert server.proc.returncode == 0
    events = [json.loads(line)["event"] for line in err.decode().splitlines()]
    assert ("server_drain_delay" in events) is delayed
    assert events[-1] == "plugins_closed"


def test_a_critical_plugin_that_cannot_start_stops_the_start_with_exit_1(
    tmp_path: Path, build_plugin: BuildPlugin, served: list[Server]
) -> None:
    build_plugin(KIT, "kit", tmp_path / "plugins", extra_flags=('-DKIT_NAME="kit"',))
    config = write_config(
        tmp_path,
        {
            "plugins": {"kit": {"critical": True, "config": {"fail_init": True}}},
            "logging": {"format": "json"},
        },
    )
    server = Server(config, tmp_path)
    served.append(server)
    _, err = server.proc.communicate(timeout=30)
    assert server.proc.returncode == 1
    failure = [json.loads(line) for line in err.decode().splitlines()][-1]
    assert failure["event"] == "startup_failed"
    assert "critical plugin 'kit' could not start" in failure["error"]
    assert "fail_init is set" in failure["error"]


def test_the_example_config_serves_the_hello_plugin(
    tmp_path: Path, build_plugin: BuildPlugin, served: list[Server]
) -> None:
    """What `make run` does, in a scratch copy of the example's layout."""
    (tmp_path / "examples").mkdir()
    shutil.copy(REPO / "examples" / "backworks.yaml", tmp_path / "examples")
    hello = (REPO / "sdk-c" / "examples" / "hello" / "hello.c").read_text()
    build_plugin(hello, "hello", tmp_path / "plugins")
    server = Server(tmp_path / "examples" / "backworks.yaml", tmp_path)
    served.append(server)
    server.wait_ready()
    assert get(f"{server.url}/hello?name=Ada") == (200, b'{"hello": "Ada"}')
    status, body = get(f"{server.url}/health")
    assert status == 200
    assert json.loads(body)["status"] == "healthy"
    code, _ = server.stop()
    assert code == 0


def test_validate_lists_every_problem_with_its_key_path(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {
            "plugins": {"kit": {"timeout_ms": -3, "timout_ms": 5}},
            "server": {"port": "http"},
        },
    )
    result = subprocess.run(
        [sys.executable, "-m", "backworks", "validate", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "plugins.kit.timeout_ms" in result.stderr
    assert "did you mean 'timeout_ms'" in result.stderr
    assert "server.port" in result.stderr


def test_validate_accepts_the_example_config() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "backworks",
            "validate",
            "--config",
            str(REPO / "examples" / "backworks.yaml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


def children_of(pid: int) -> set[int]:
    tasks = Path(f"/proc/{pid}/task")
    found: set[int] = set()
    for task in tasks.iterdir():
        found |= {int(p) for p in (task / "children").read_text().split()}
    return found


def test_workers_serve_one_port_and_a_dead_worker_is_replaced(
    tmp_path: Path, build_plugin: BuildPlugin
) -> None:
    build_plugin(KIT, "kit", tmp_path / "plugins", extra_flags=('-DKIT_NAME="kit"',))
    config = write_config(tmp_path, {"logging": {"format": "json"}})
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "backworks",
            "serve",
            "--config",
            str(config),
            "--port",
            str(port),
            "--workers",
            "2",
        ],
        cwd=tmp_path,
        env={**os.environ, "BACKWORKS_CACHE_DIR": str(tmp_path / "cache")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while len(children_of(proc.pid)) < 2 or not _answers(port):
            assert time.monotonic() < deadline, "workers did not come up"
            time.sleep(0.1)
        first = children_of(proc.pid)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while victim in children_of(proc.pid) or len(children_of(proc.pid)) < 2:
            assert time.monotonic() < deadline, "the dead worker was not replaced"
            time.sleep(0.1)
        assert _answers(port)
        survivors = children_of(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        for pid in survivors:
            assert (
                not Path(f"/proc/{pid}").exists()
                or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
            ), "a worker outlived the master"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _answers(port: int) -> bool:
    try:
        return get(f"http://127.0.0.1:{port}/plugins/kit/status?code=200", timeout=2)[0] == 200
    except OSError:
        return False
