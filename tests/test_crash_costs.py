"""What a worker's crash costs the calls that did not cause it, through the real server.

Real C plugins (tests/plugins/crashkit.c) in worker processes, served by the real app
over loopback: a warm standby takes the dead worker's place, a POST lost beside the
crasher is told its outcome is unknown, a call that never reached a worker is not a
timeout.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from backworks.http.aio.state import HOST, RELOADER
from backworks.ops.views import plugin_rows
from tests.conftest import BuildPlugin
from tests.serving import Client, Serve, error_of, eventually

CRASHKIT = (Path(__file__).parent / "plugins" / "crashkit.c").read_text()
# The bound the issue sets for an innocent request during a crash window; a respawn
# (a new Python process loading the plugin) takes longer than this on a busy machine.
INNOCENT_BOUND_S = 1.0


def crashkit(build_plugin: BuildPlugin, plugins_dir: Path, flags: str = "0") -> None:
    build_plugin(
        CRASHKIT,
        name="crashy",
        folder=plugins_dir,
        extra_flags=('-DKIT_NAME="crashy"', f"-DKIT_FLAGS=({flags})"),
    )


def row_of(client: Client) -> dict[str, object]:
    rows = plugin_rows(client.app[HOST], client.app[RELOADER], details=True)
    return next(r for r in rows if r["name"] == "crashy")


def standby_of(client: Client) -> dict[str, Any]:
    standby = row_of(client)["standby"]
    assert isinstance(standby, dict)
    return standby


async def test_with_one_worker_innocent_requests_do_not_wait_for_a_respawn(
    build_plugin: BuildPlugin, plugins_dir: Path, serve: Serve
) -> None:
    crashkit(build_plugin, plugins_dir)
    settings = {"isolation": "process", "workers": 1, "queue_timeout_ms": 60_000}
    client = await serve({"plugins": {"crashy": settings}})
    await eventually(lambda: standby_of(client)["state"] == "ready")
    took: list[tuple[int, float]] = []
    stop = asyncio.Event()

    async def steady() -> None:
        while not stop.is_set():
            started = time.monotonic()
            status = (await client.get("/plugins/crashy/pid")).status
            took.append((status, time.monotonic() - started))

    with capture_logs() as logs:
        clients = [asyncio.create_task(steady()) for _ in range(8)]
        await eventually(lambda: len(took) >= 40)
        crash = await client.get("/plugins/crashy/segv")
        after = len(took)
        await eventually(lambda: len(took) >= after + 80)
        stop.set()
        await asyncio.gather(*clients)

    assert crash.status == 502
    assert (await error_of(crash))["code"] == "plugin_crashed"
    assert {status for status, _ in took} == {200}
    slowest = max(seconds for _, seconds in took)
    assert slowest < INNOCENT_BOUND_S, f"an innocent request waited {slowest:.2f} s"
    events = [e["event"] for e in logs]
    assert "plugin_standby_promoted" in events, "the standby took the dead worker's place"
    # The suspect ran alone on the standby: the culprit killed it, not the serving worker.
    assert standby_of(client)["crashes"] == 1
    await eventually(lambda: standby_of(client)["state"] == "ready")


async def test_posts_lost_beside_a_crashing_get_are_told_their_outcome_is_unknown(
    build_plugin: BuildPlugin, plugins_dir: Path, serve: Serve
) -> None:
    crashkit(build_plugin, plugins_dir, "BW_FLAG_THREAD_SAFE")
    settings = {"isolation": "process", "workers": 1, "max_concurrency": 8}
    # The POSTs run in the worker (slow), the crash comes while they do.
    client = await serve({"plugins": {"crashy": settings}})
    posts = [
        asyncio.create_task(client.post("/plugins/crashy/wait?ms=30000", data=b"x"))
        for _ in range(4)
    ]
    await eventually(lambda: row_of(client)["workers"][0]["in_flight"] == 4)  # type: ignore[index]
    crash = await client.get("/plugins/crashy/segv")
    answers = await asyncio.gather(*posts)

    assert crash.status == 502
    assert (await error_of(crash))["code"] == "plugin_crashed", "the crasher alone"
    for resp in answers:
        assert resp.status == 502
        assert resp.headers["Retry-After"] == "1"
        error = await error_of(resp)
        assert error["code"] == "plugin_outcome_unknown"
        assert error["plugin"] == "crashy"
    metrics = await (await client.get("/metrics")).text()
    line = 'backworks_plugin_calls_total{outcome="outcome_unknown",plugin="crashy"} 4.0'
    assert line in metrics
    assert 'backworks_plugin_calls_total{outcome="crashed",plugin="crashy"} 1.0' in metrics


async def test_a_call_no_worker_took_in_time_is_503_with_retry_after_not_a_timeout(
    build_plugin: BuildPlugin, plugins_dir: Path, serve: Serve, tmp_path: Path
) -> None:
    crashkit(build_plugin, plugins_dir)
    slow = tmp_path / "slow-starts"
    settings = {
        "isolation": "process",
        "workers": 1,
        "standby": False,  # the respawn is all there is
        "timeout_ms": 500,
        "queue_timeout_ms": 60_000,
        "config": {"slow_init_if": str(slow)},
    }
    client = await serve({"plugins": {"crashy": settings}})
    assert (await client.get("/plugins/crashy/pid")).status == 200
    slow.touch()  # from now on a worker takes 3 s to start
    with capture_logs() as logs:
        exit_call = asyncio.create_task(client.get("/plugins/crashy/exit?code=3"))
        await eventually(lambda: row_of(client)["workers"][0]["state"] != "ready")  # type: ignore[index]
        started = time.monotonic()
        resp = await client.get("/plugins/crashy/pid")
        waited = time.monotonic() - started
        exit_call.cancel()

    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    assert (await error_of(resp))["code"] == "plugin_restarting"
    assert waited < 2.5, "answered at its timeout, not when the worker finally started"
    assert not [e for e in logs if e["event"] == "plugin_timeout"]
    assert [e["request_id"] for e in logs if e["event"] == "plugin_call_not_started"]


async def test_a_native_crash_is_one_json_event_with_the_dump_as_a_field(
    build_plugin: BuildPlugin,
    plugins_dir: Path,
    serve: Serve,
    capfd: pytest.CaptureFixture[str],
) -> None:
    crashkit(build_plugin, plugins_dir)
    client = await serve({"plugins": {"crashy": {"isolation": "process", "standby": False}}})
    with capture_logs() as logs:
        assert (await client.post("/plugins/crashy/segv")).status == 502
        await eventually(lambda: row_of(client)["workers"][0]["state"] == "ready")  # type: ignore[index]

    [event] = [e for e in logs if e["event"] == "plugin_worker_crash_output"]
    assert event["plugin"] == "crashy"
    assert "SIGSEGV" in event["exit"]
    assert "Segmentation fault" in event["dump"]
    assert "instance" in event["dump"] or "handle" in event["dump"], "where it crashed"
    assert json.loads(json.dumps(event))["dump"] == event["dump"]
    assert "Fatal Python error" not in capfd.readouterr().err, "no text in the log stream"


async def test_a_post_that_crashes_its_worker_alone_is_the_crasher_not_unknown(
    build_plugin: BuildPlugin, plugins_dir: Path, serve: Serve
) -> None:
    crashkit(build_plugin, plugins_dir)
    client = await serve({"plugins": {"crashy": {"isolation": "process"}}})

    resp = await client.post("/plugins/crashy/segv")

    assert resp.status == 502
    assert (await error_of(resp))["code"] == "plugin_crashed"
    assert "Retry-After" not in resp.headers, "trying it again would crash again"
    assert (await client.post("/plugins/crashy/pid")).status == 200, "the standby serves"
