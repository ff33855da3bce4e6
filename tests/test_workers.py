"""`backworks serve --workers N` as one service: metrics, state, reloads and rolling restarts.

Real `backworks serve --workers 2` processes over real C plugins on loopback; requests
arrive on fresh connections, so the kernel spreads them over the workers.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cbuild import EXT, compile_library
from tests.serving import KIT
from tests.test_serve import children_of, free_port, get, write_config

TOKEN = "workers-token"


def eventually(check: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    pytest.fail(f"not within {timeout} s: {what or check}")


class Service:
    """A `backworks serve --workers N` process; its log lines are kept in a file."""

    def __init__(self, folder: Path, config: Path, workers: int = 2) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "server.log"
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "backworks", "serve", "--config", str(config),
             "--port", str(self.port), "--workers", str(workers)],
            cwd=folder,
            env={**os.environ, "BACKWORKS_CACHE_DIR": str(folder / "cache")},
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
        )  # fmt: skip
        self.workers = workers

    def state(self) -> dict[str, Any]:
        status, body = get(f"{self.url}/_backworks/api/state")
        assert status == 200, body
        return json.loads(body)  # type: ignore[no-any-return]

    def pids(self) -> set[int]:
        return {w["pid"] for w in self.state()["workers"]}

    def replaced(self, old: set[int]) -> set[int] | None:
        """The workers' pids once none of `old` is among them (and all are up)."""
        pids = self.pids()
        return pids if not pids & old and len(pids) == self.workers else None

    def wait_ready(self) -> set[int]:
        def ready() -> set[int] | None:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                pids = self.pids()
            except OSError:
                return None
            return pids if len(pids) == self.workers else None

        pids: set[int] = eventually(ready, what="every worker answering")
        return pids

    def events(self, name: str) -> list[dict[str, Any]]:
        lines = [line for line in self.log.read_text().splitlines() if line.startswith("{")]
        return [e for e in map(json.loads, lines) if e.get("event") == name]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            self._log_file.close()


@pytest.fixture
def services() -> Iterator[list[Service]]:
    started: list[Service] = []
    yield started
    for service in started:
        if service.proc.poll() is None:
            service.proc.kill()
            service.proc.wait()
        service._log_file.close()


def kit_build(build_cache: Path, tmp_path: Path, version: int) -> Path:
    out = tmp_path / "builds" / f"libkit.v{version}.{EXT}"
    flags = ('-DKIT_NAME="kit"', f"-DKIT_VERSION={version}")
    return compile_library(KIT, out, cache=build_cache, extra_flags=flags)


def install(build: Path, plugins: Path) -> None:
    """Puts a build in place as a deployment would: a new file renamed over the old."""
    plugins.mkdir(exist_ok=True)
    tmp = plugins / f".libkit.{EXT}.tmp"
    tmp.write_bytes(build.read_bytes())
    tmp.chmod(0o755)
    tmp.rename(plugins / f"libkit.{EXT}")


def spread(service: Service, path: str, minimum: int = 300) -> int:
    """Requests `path` on fresh connections until every worker has answered some."""
    sent = 0
    while sent < minimum or not all(
        (w["plugins"][0]["calls"] or 0) > 0 for w in service.state()["workers"]
    ):
        assert sent < 3000, "the requests never reached every worker"
        assert get(f"{service.url}{path}")[0] == 200
        sent += 1
    return sent


def sample(text: str, name: str, **labels: str) -> float:
    """One sample's value in a Prometheus text exposition."""
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.partition(" ")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return float("nan")


def test_one_scrape_on_any_worker_reports_the_whole_service(
    tmp_path: Path, build_cache: Path, services: list[Service]
) -> None:
    install(kit_build(build_cache, tmp_path, 1), tmp_path / "plugins")
    service = Service(tmp_path, write_config(tmp_path, {"logging": {"format": "json"}}))
    services.append(service)
    pids = service.wait_ready()
    assert pids == children_of(service.proc.pid), "the state lists every worker by pid"
    sent = spread(service, "/plugins/kit/status?code=200")
    calls_by_worker = {w["pid"]: w["plugins"][0]["calls"] for w in service.state()["workers"]}
    assert sum(calls_by_worker.values()) == sent
    assert len(calls_by_worker) == 2

    def scraped_total() -> float:
        text = get(f"{service.url}/metrics")[1].decode()
        ok = sample(text, "backworks_plugin_calls_total", plugin="kit", outcome="ok")
        count = sample(text, "backworks_plugin_call_duration_seconds_count", plugin="kit")
        assert ok <= sent, "a scrape never counts more than was sent"
        return ok if ok == count else 0

    eventually(lambda: scraped_total() == sent, what=f"every scrape counting {sent} calls")
    for _ in range(10):  # every worker answers scrapes now: each one says the same
        assert scraped_total() == sent
    text = get(f"{service.url}/metrics")[1].decode()
    assert sample(text, "backworks_plugin_ready", plugin="kit") == 1
    assert sample(text, "backworks_plugin_circuit_state", plugin="kit", state="closed") == 2
    assert sample(text, "backworks_plugin_info", plugin="kit", version="0.1.1", abi="1.0") == 1
    # prometheus_client's process and Python series: one per worker, told apart by pid.
    for pid in pids:
        assert sample(text, "process_resident_memory_bytes", pid=str(pid)) > 1_000_000
        assert sample(text, "process_cpu_seconds_total", pid=str(pid)) > 0
        assert sample(text, "process_open_fds", pid=str(pid)) >= 3
        assert sample(text, "python_info", pid=str(pid), implementation="CPython") == 1
    assert sample(text, "backworks_build_info", abi="1.0") == 1

    # The charts' points are summed over the workers too.
    def charted() -> int:
        body = json.loads(get(f"{service.url}/_backworks/api/series")[1])
        return int(sum(body["plugins"].get("kit", {"rate": []})["rate"]))

    eventually(lambda: charted() == sent, what=f"the charts counting {sent} calls")

    # A worker that dies: its live gauges go, its counts stay in the service's totals.
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    eventually(lambda: service.replaced({victim}), what="the dead worker replaced")
    text = get(f"{service.url}/metrics")[1].decode()
    assert sample(text, "backworks_plugin_calls_total", plugin="kit", outcome="ok") == sent
    eventually(
        lambda: (
            sample(
                get(f"{service.url}/metrics")[1].decode(),
                "backworks_plugin_circuit_state",
                plugin="kit",
                state="closed",
            )
            == 2
        ),
        what="the dead worker's gauges gone, the new worker's in",
    )
    text = get(f"{service.url}/metrics")[1].decode()
    for gone in ("process_resident_memory_bytes", "process_cpu_seconds_total"):
        assert math.isnan(sample(text, gone, pid=str(victim))), f"{gone} of the dead worker"
    assert service.stop() == 0
    # gunicorn's own lines (the killed worker) are JSON like every other line.
    events = [json.loads(line) for line in service.log.read_text().splitlines()]
    assert any(e.get("logger") == "gunicorn.error" and str(victim) in e["event"] for e in events)


def test_admin_reload_and_reset_reach_every_worker(
    tmp_path: Path, build_cache: Path, services: list[Service]
) -> None:
    plugins = tmp_path / "plugins"
    install(kit_build(build_cache, tmp_path, 1), plugins)
    config = {
        "logging": {"format": "json"},
        "admin": {"token": TOKEN},
        "plugins": {"kit": {"circuit_breaker": {"failure_threshold": 1}}},
    }
    service = Service(tmp_path, write_config(tmp_path, config))
    services.append(service)
    service.wait_ready()
    # Open the breaker in every worker.
    for _ in range(3000):
        get(f"{service.url}/plugins/kit/fail")
        if all(w["plugins"][0]["circuit"] == "open" for w in service.state()["workers"]):
            break
    assert {w["plugins"][0]["circuit"] for w in service.state()["workers"]} == {"open"}

    reset = admin_post(service, "/_backworks/plugins/kit/reset")
    assert reset[0] == 200
    assert sorted(w["pid"] for w in reset[1]["workers"]) == sorted(service.pids())
    assert {w["answer"]["circuit"] for w in reset[1]["workers"]} == {"closed"}
    assert {w["plugins"][0]["circuit"] for w in service.state()["workers"]} == {"closed"}

    def info(version: str) -> float:
        text = get(f"{service.url}/metrics")[1].decode()
        return sample(text, "backworks_plugin_info", plugin="kit", version=version, abi="1.0")

    eventually(lambda: info("0.1.1") == 1, what="the first build in the metrics")
    install(kit_build(build_cache, tmp_path, 2), plugins)
    status, body = admin_post(service, "/_backworks/plugins/kit/reload")
    assert status == 200, body
    assert [w["status"] for w in body["workers"]] == [200, 200]
    versions = {
        (w["plugins"][0]["version"], w["plugins"][0]["generation"])
        for w in service.state()["workers"]
    }
    assert versions == {("0.1.2", 2)}

    eventually(lambda: (info("0.1.1"), info("0.1.2")) == (0, 1), what="only 0.1.2 loaded")

    assert admin_post(service, "/_backworks/plugins/kit/reload", token="wrong")[0] == 401
    assert service.stop() == 0


def admin_post(service: Service, path: str, token: str = TOKEN) -> tuple[int, Any]:
    request = urllib.request.Request(  # noqa: S310 -- loopback
        f"{service.url}{path}", method="POST", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310 -- loopback
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_a_plugin_file_replaced_in_a_watched_folder_reaches_every_worker(
    tmp_path: Path, build_cache: Path, services: list[Service]
) -> None:
    plugins = tmp_path / "plugins"
    install(kit_build(build_cache, tmp_path, 1), plugins)
    config = {
        "logging": {"format": "json"},
        "plugin_discovery": {"directories": ["./plugins"], "watch": True},
    }
    service = Service(tmp_path, write_config(tmp_path, config))
    services.append(service)
    service.wait_ready()
    install(kit_build(build_cache, tmp_path, 2), plugins)
    eventually(
        lambda: {w["plugins"][0]["version"] for w in service.state()["workers"]} == {"0.1.2"},
        what="every worker serving the new build",
    )
    assert service.stop() == 0


class Load:
    """Steady requests from a few threads, each on fresh connections; counts what failed."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url = url
        self.answers: dict[str, int] = {}
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 120  # bounded even if the test never stops it
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                status, body = get(self.url, timeout=30)
            except OSError as e:
                status, body = 0, repr(e).encode()
            with self._lock:
                if status == 200:
                    key = body.decode()
                    self.answers[key] = self.answers.get(key, 0) + 1
                else:
                    self.failures.append(f"{status}: {body[:200]!r}")

    def total(self) -> int:
        with self._lock:
            return sum(self.answers.values()) + len(self.failures)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def versioned(body: str) -> dict[str, Any]:
    return {
        "logging": {"format": "json"},
        "server": {"shutdown_timeout_ms": 5000},
        "endpoints": {"/v": {"method": "GET", "response": {"status": 200, "body": body}}},
    }


def test_a_config_edit_rolls_the_workers_one_by_one_and_fails_no_request(
    tmp_path: Path, services: list[Service]
) -> None:
    config = write_config(tmp_path, versioned('"one"'))
    service = Service(tmp_path, config)
    services.append(service)
    old = service.wait_ready()
    load = Load(f"{service.url}/v")
    try:
        eventually(lambda: load.total() > 50, what="the load running")
        # A broken edit: read and refused once, by the master; the workers stay.
        config.write_text("endpoints: {'/v': {method: GET, response: {status: 700}}}\n")
        eventually(lambda: service.events("config_reload_failed"), what="the edit refused")
        time.sleep(1)  # a second refusal (a worker reading the file too) would show now
        assert len(service.events("config_reload_failed")) == 1
        assert service.pids() == old

        write_config(tmp_path, versioned('"two"'))
        eventually(lambda: service.events("workers_rolled"), what="the roll done")
        new = eventually(
            lambda: service.replaced(old),
            what="only new workers serving",
        )
        eventually(lambda: load.answers.get('"two"', 0) > 50, what="the new config serving")
    finally:
        load.stop()
    assert load.failures == []
    assert load.answers.get('"one"', 0) > 0
    replaced = service.events("worker_replaced")
    assert {e["old"] for e in replaced} == old
    assert {e["new"] for e in replaced} == new
    assert service.stop() == 0


def test_sighup_rolls_the_workers_one_by_one_and_fails_no_request(
    tmp_path: Path, services: list[Service]
) -> None:
    service = Service(tmp_path, write_config(tmp_path, versioned('"one"')))
    services.append(service)
    old = service.wait_ready()
    load = Load(f"{service.url}/v")
    try:
        eventually(lambda: load.total() > 50, what="the load running")
        service.proc.send_signal(signal.SIGHUP)
        eventually(
            lambda: service.replaced(old),
            what="only new workers serving",
        )
        served = load.total()
        eventually(lambda: load.total() > served + 50, what="the new workers serving")
    finally:
        load.stop()
    assert load.failures == []
    started = [e["new"] for e in service.events("worker_replaced")]
    assert len(started) == 2
    assert service.stop() == 0
