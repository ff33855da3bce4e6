"""Fault containment through the real server: one bad call costs one answer.

Real C plugins (tests/plugins/crashkit.c crashes on demand, testkit.c starts slowly
on demand) served by the real app over loopback, with default breaker settings.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from backworks.http.aio.state import HOST, RELOADER
from backworks.ops.views import plugin_rows
from tests.conftest import BuildPlugin
from tests.serving import Client, Kit, Serve, error_of

CRASHKIT = (Path(__file__).parent / "plugins" / "crashkit.c").read_text()


async def plugin_row(client: Client, name: str) -> dict[str, Any]:
    """The plugin's admin row as an operator sees it (with the plugin's own words)."""
    rows = plugin_rows(client.app[HOST], client.app[RELOADER], details=True)
    return next(r for r in rows if r["name"] == name)


async def until(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    ("flags", "workers"),
    [
        ("BW_FLAG_THREAD_SAFE", 1),
        ("BW_FLAG_THREAD_SAFE | BW_FLAG_NONBLOCKING", 1),
        ("0", 2),
    ],
    ids=[
        "8 calls on one thread-safe worker's threads",
        "calls queued in turn on one non-blocking worker",
        "one call on each of 2 workers",
    ],
)
async def test_one_crashing_request_among_steady_traffic_costs_one_answer(
    build_plugin: BuildPlugin, plugins_dir: Path, serve: Serve, flags: str, workers: int
) -> None:
    build_plugin(
        CRASHKIT,
        name="crashy",
        folder=plugins_dir,
        extra_flags=('-DKIT_NAME="crashy"', f"-DKIT_FLAGS=({flags})"),
    )
    # Default breaker (5 failures open it); a generous wait for a free slot, so the
    # figure measures the crash and not a busy machine.
    settings = {"isolation": "process", "workers": workers, "queue_timeout_ms": 60_000}
    client = await serve({"plugins": {"crashy": settings}})
    statuses: list[int] = []
    stop = asyncio.Event()

    async def steady() -> None:  # calls that are inside the worker when it dies
        while not stop.is_set():
            statuses.append((await client.get("/plugins/crashy/wait?ms=20")).status)

    with capture_logs() as logs:
        clients = [asyncio.create_task(steady()) for _ in range(8)]
        await until(lambda: len(statuses) >= 40)
        crash = await client.get("/plugins/crashy/segv")
        after = len(statuses)
        await until(lambda: len(statuses) >= after + 80)
        stop.set()
        await asyncio.gather(*clients)

    assert crash.status == 502
    error = await error_of(crash)
    assert error["code"] == "plugin_crashed"
    assert set(statuses) == {200}, "the crash cost its neighbours nothing"
    poison = [e for e in logs if e["event"] == "plugin_poison_request"]
    assert [e["request_id"] for e in poison] == [error["request_id"]]
    row = await plugin_row(client, "crashy")
    assert row["circuit"] == "closed"
    assert row["counters"]["crashed"] == 1
    assert sum(w["crashes"] for w in row["workers"]) == 2, "tried once more, not a third time"


@pytest.mark.parametrize("isolation", ["in-process", "process"])
async def test_a_start_slower_than_the_call_timeout_is_within_its_start_budget(
    kit: Kit, serve: Serve
) -> None:
    kit("slow")
    # init takes 1 s; calls may take 200 ms: starting is not a call.
    client = await serve({"plugins": {"slow": {"timeout_ms": 200, "config": {"init_ms": 1000}}}})
    assert (await client.get("/plugins/slow/status?code=200")).status == 200
    assert (await plugin_row(client, "slow"))["state"] == "ready"


@pytest.mark.parametrize("isolation", ["in-process", "process"])
async def test_a_start_over_start_timeout_ms_fails_naming_that_budget(
    kit: Kit, serve: Serve
) -> None:
    kit("slow")
    config = {"start_timeout_ms": 1000, "timeout_ms": 60_000, "config": {"init_ms": 4000}}
    client = await serve({"plugins": {"slow": config}})
    resp = await client.get("/plugins/slow/status?code=200")
    assert resp.status == 503
    row = await plugin_row(client, "slow")
    assert row["state"] == "failed"
    assert "within start_timeout_ms of 1000 ms" in row["error"]
