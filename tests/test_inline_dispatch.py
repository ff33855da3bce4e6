"""The inline dispatch: a non-blocking plugin's calls run on the event-loop thread itself,
and a plugin whose inline calls keep overrunning the budget is moved to its pool for good.
"""

from __future__ import annotations

import json
import threading
from typing import Protocol

import pytest
from structlog.testing import capture_logs

from backworks.abi import Request, open_plugin_library
from backworks.abi.hostlog import plugin_log_sink
from backworks.http.aio.state import HOST
from backworks.names import Dispatch
from backworks.runtime import runner as runner_module
from backworks.runtime.backend import ThreadBackend
from backworks.runtime.breaker import CircuitBreaker
from backworks.runtime.runner import INLINE_STRIKE_WINDOW, INLINE_STRIKES, PluginRunner
from backworks.runtime.watchdog import STALL_S
from tests.conftest import BuildPlugin
from tests.serving import KIT, Kit, Serve


class MakeRunner(Protocol):
    def __call__(self, *, flags: str = ..., dispatch: Dispatch = ...) -> PluginRunner: ...


@pytest.fixture
def make_runner(build_plugin: BuildPlugin) -> MakeRunner:
    """`make_runner(flags=..., dispatch=...)`: the test kit in this process behind a runner."""

    def make(*, flags: str = "BW_FLAG_NONBLOCKING", dispatch: Dispatch = "auto") -> PluginRunner:
        path = build_plugin(KIT, name="kit", extra_flags=(f"-DKIT_FLAGS={flags}",))
        instance = open_plugin_library(path).instantiate(b"{}", plugin_log_sink("kit"))
        return PluginRunner(
            ThreadBackend(instance, 1),
            max_concurrency=1,
            timeout_ms=5_000,
            queue_timeout_ms=5_000,
            breaker=CircuitBreaker(),
            dispatch=dispatch,
        )

    return make


async def thread_of_call(runner: PluginRunner) -> int:
    """The kernel id of the thread the plugin's `handle` ran on."""
    answer = await runner.handle(Request("GET", "/kit/thread"))
    return int(json.loads(answer.body)["tid"])


async def spin(runner: PluginRunner, ms: int) -> None:
    await runner.handle(Request("GET", "/kit/spin", query=f"ms={ms}"))


async def test_a_nonblocking_plugin_is_called_on_the_event_loop_thread(
    make_runner: MakeRunner,
) -> None:
    runner = make_runner()
    assert runner.dispatch == "inline"
    assert await thread_of_call(runner) == threading.get_native_id()
    await runner.close(1.0)


async def test_dispatch_pool_keeps_a_nonblocking_plugin_off_the_loop(
    make_runner: MakeRunner,
) -> None:
    runner = make_runner(dispatch="pool")
    assert runner.dispatch == "pool"
    assert await thread_of_call(runner) != threading.get_native_id()
    await runner.close(1.0)


@pytest.mark.parametrize(("dispatch", "expected"), [("auto", "pool"), ("inline", "inline")])
async def test_without_the_flag_only_dispatch_inline_runs_on_the_loop(
    make_runner: MakeRunner, dispatch: Dispatch, expected: str
) -> None:
    runner = make_runner(flags="0", dispatch=dispatch)
    assert runner.dispatch == expected
    on_loop = await thread_of_call(runner) == threading.get_native_id()
    assert on_loop == (expected == "inline")
    await runner.close(1.0)


async def test_an_inline_call_keeps_the_runners_accounting(make_runner: MakeRunner) -> None:
    runner = make_runner()
    await thread_of_call(runner)
    await runner.handle(Request("GET", "/kit/status", query="code=503"))  # a deliberate 503
    stats = runner.stats.to_json()
    assert (stats["calls"], stats["ok"], stats["failed"], stats["in_flight"]) == (2, 2, 0, 0)
    assert runner.gate.active == 0, "the slot is given back after each inline call"
    await runner.close(1.0)


async def test_repeated_overruns_demote_the_plugin_to_its_pool_for_good(
    make_runner: MakeRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A budget far below the spin, so the verdict does not depend on the machine's speed.
    monkeypatch.setattr(runner_module, "INLINE_BUDGET_S", 0.001)
    runner = make_runner()
    with capture_logs() as logs:
        # The first overrun is seen in wall time; from then on calls are measured in
        # CPU time, and each that overruns there is a strike.
        for _ in range(INLINE_STRIKES):
            await spin(runner, 20)
        assert runner.dispatch == "inline", "an overrun or two may be the machine's fault"
        await spin(runner, 20)
    assert runner.dispatch == "pool"
    overruns = [e for e in logs if e["event"] == "plugin_inline_overrun"]
    demoted = [e for e in logs if e["event"] == "plugin_demoted_to_pool"]
    assert len(overruns) == INLINE_STRIKES - 1
    assert len(demoted) == 1
    assert demoted[0]["plugin"] == "kit"
    assert demoted[0]["log_level"] == "warning"
    assert await thread_of_call(runner) != threading.get_native_id()
    await runner.close(1.0)


async def test_overruns_far_apart_are_forgiven(
    make_runner: MakeRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Strikes count within INLINE_STRIKE_WINDOW calls; a rare slow call never demotes."""
    monkeypatch.setattr(runner_module, "INLINE_BUDGET_S", 0.001)
    runner = make_runner()
    for _ in range(3):
        for _ in range(INLINE_STRIKES):  # as many as can be forgiven: one suspicion, two strikes
            await spin(runner, 20)
        for _ in range(INLINE_STRIKE_WINDOW):
            await runner.handle(Request("GET", "/kit/status", query="code=200"))
    assert runner.dispatch == "inline"
    await runner.close(1.0)


async def test_a_plugin_that_blocks_while_claiming_not_to_is_demoted_during_the_call(
    make_runner: MakeRunner,
) -> None:
    """The liar: BW_FLAG_NONBLOCKING, then sleeps. The watchdog sees the loop's thread
    asleep in the call and moves the plugin to its pool before the call returns; the
    next slow call is then timed out as the config asks."""
    runner = make_runner()
    with capture_logs() as logs:
        await runner.handle(Request("GET", "/kit/sleep", query="ms=300"))
    assert runner.dispatch == "pool"
    [held] = [e for e in logs if e["event"] == "plugin_holds_event_loop"]
    assert held["plugin"] == "kit"
    [demoted] = [e for e in logs if e["event"] == "plugin_demoted_to_pool"]
    assert "blocked" in demoted["reason"]
    assert await thread_of_call(runner) != threading.get_native_id()
    await runner.close(1.0)


async def test_a_plugin_that_holds_the_loop_with_work_is_demoted_while_it_runs(
    make_runner: MakeRunner,
) -> None:
    runner = make_runner()
    with capture_logs() as logs:
        await spin(runner, int(STALL_S * 1000) + 300)
    assert runner.dispatch == "pool"
    assert any(e["event"] == "plugin_holds_event_loop" for e in logs)
    await runner.close(1.0)


async def test_inline_calls_can_be_turned_off_for_the_whole_server(kit: Kit, serve: Serve) -> None:
    kit("fast")
    client = await serve(
        {"plugins": {"fast": {"dispatch": "inline"}}, "server": {"inline_calls": False}}
    )
    assert client.app[HOST].runners["fast"].dispatch == "pool"
