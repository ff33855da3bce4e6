"""The compiled step admits an inline call itself only when Python would admit it with
nothing to record: a free shared slot in the gate and a calm breaker (closed, no
failure counted). Otherwise it declines, calls nothing, and the runner's Python path
admits the call with its ticket, as it always did; every outcome is recorded once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from backworks.abi import Request, Response, open_plugin_library, step
from backworks.abi.hostlog import plugin_log_sink
from backworks.abi.step import Wire
from backworks.errors import CircuitOpenError, PluginError
from backworks.runtime.backend import ThreadBackend
from backworks.runtime.breaker import CircuitBreaker
from backworks.runtime.runner import PluginRunner
from tests.conftest import BuildPlugin
from tests.serving import KIT

pytestmark = pytest.mark.skipif(not step.enabled(), reason="the compiled step is off or not built")

WIRE = (b"Sun, 06 Dec 2026 21:08:00 GMT", b"", b"", False)
OK = Request("GET", "/kit/status", query="code=200")
FAIL = Request("GET", "/kit/fail")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def runner(build_plugin: BuildPlugin, clock: FakeClock) -> PluginRunner:
    """The test kit inline behind a runner: 2 slots, a breaker opening at 2 failures."""
    path = build_plugin(KIT, name="kit", extra_flags=("-DKIT_FLAGS=BW_FLAG_NONBLOCKING",))
    instance = open_plugin_library(path).instantiate(b"{}", plugin_log_sink("kit"))
    made = PluginRunner(
        ThreadBackend(instance, 1),
        max_concurrency=2,
        timeout_ms=5_000,
        queue_timeout_ms=5_000,
        breaker=CircuitBreaker(failure_threshold=2, recovery_timeout_ms=1_000, clock=clock),
        dispatch="inline",
    )
    assert made.snapshot()["compiled_step"]
    return made


def call(runner: PluginRunner, req: Request = OK) -> Any:
    return runner.call_wire(req, *WIRE)


def counters(runner: PluginRunner) -> tuple[int, int, int, int]:
    stats = runner.stats
    return stats.calls, stats.ok, stats.failed, stats.rejected


async def test_a_calm_breaker_and_a_free_slot_let_the_step_answer_alone(
    runner: PluginRunner,
) -> None:
    for _ in range(3):
        assert type(call(runner)) is Wire
    assert counters(runner) == (3, 3, 0, 0)
    assert runner.gate.active == 0
    assert runner.breaker.consecutive_failures == 0
    await runner.close(1.0)


async def test_a_failure_is_counted_once_and_the_step_declines_until_a_success(
    runner: PluginRunner,
) -> None:
    with pytest.raises(PluginError):
        call(runner, FAIL)  # the step called it: the failure comes back through Python
    assert runner.breaker.consecutive_failures == 1
    assert counters(runner) == (1, 0, 1, 0)
    # A failure is counted: the breaker is not calm, the Python path takes the call,
    # and its success (a closed ticket) forgets the failure.
    assert type(call(runner)) is Response
    assert runner.breaker.consecutive_failures == 0
    assert type(call(runner)) is Wire, "calm again: the step answers alone"
    assert counters(runner) == (3, 2, 1, 0)
    await runner.close(1.0)


async def test_an_open_breaker_refuses_and_its_half_open_probe_goes_through_python(
    runner: PluginRunner, clock: FakeClock
) -> None:
    for _ in range(2):
        with pytest.raises(PluginError):
            call(runner, FAIL)
    assert runner.breaker.state.value == "open"
    with pytest.raises(CircuitOpenError):
        call(runner)
    assert counters(runner) == (2, 0, 2, 1)
    clock.now += 1.0  # the recovery timeout passed: one probe may try
    assert type(call(runner)) is Response, "the probe's ticket is Python's"
    assert runner.breaker.state.value == "closed"
    assert type(call(runner)) is Wire
    assert counters(runner) == (4, 2, 2, 1)
    assert runner.breaker.times_opened == 1
    await runner.close(1.0)


async def test_a_failed_probe_opens_the_breaker_again(
    runner: PluginRunner, clock: FakeClock
) -> None:
    for _ in range(2):
        with pytest.raises(PluginError):
            call(runner, FAIL)
    clock.now += 1.0
    with pytest.raises(PluginError):
        call(runner, FAIL)
    assert runner.breaker.state.value == "open"
    assert runner.breaker.times_opened == 2
    with pytest.raises(CircuitOpenError):
        call(runner)
    assert counters(runner) == (3, 0, 3, 1)
    await runner.close(1.0)


async def test_an_answer_the_step_leaves_to_python_is_still_one_success(
    runner: PluginRunner,
) -> None:
    # 204 is one of the shapes the step leaves to the Python path, unreleased.
    made = call(runner, Request("GET", "/kit/status", query="code=204"))
    assert type(made) is Response
    assert made.status == 204
    assert counters(runner) == (1, 1, 0, 0)
    assert type(call(runner)) is Wire
    await runner.close(1.0)


async def awaited(made: Any) -> Response:
    assert asyncio.iscoroutine(made), f"the call should wait for the gate, got {made!r}"
    coro: Coroutine[Any, Any, Response] = made
    return await coro


async def test_a_full_gate_makes_the_call_wait_in_python(runner: PluginRunner) -> None:
    gate = runner.gate
    assert gate.try_enter()
    assert gate.try_enter()
    pending = asyncio.ensure_future(awaited(call(runner)))
    await asyncio.sleep(0)
    assert not pending.done()
    gate.leave()
    assert (await pending).status == 200
    gate.leave()
    assert gate.active == 0
    assert counters(runner) == (1, 1, 0, 0)
    await runner.close(1.0)


async def test_an_exclusive_holder_makes_the_call_wait_in_python(runner: PluginRunner) -> None:
    gate = runner.gate
    assert gate.try_enter_exclusive()  # a health check holds the state alone
    pending = asyncio.ensure_future(awaited(call(runner)))
    await asyncio.sleep(0)
    assert not pending.done()
    gate.leave_exclusive()
    assert (await pending).status == 200
    assert counters(runner) == (1, 1, 0, 0)
    await runner.close(1.0)


async def test_a_queued_waiter_is_served_before_a_call_finding_a_slot_free(
    runner: PluginRunner,
) -> None:
    gate = runner.gate
    assert gate.try_enter()  # one of two slots held
    exclusive = asyncio.ensure_future(gate.enter_exclusive(5.0))  # queued behind it
    await asyncio.sleep(0)
    assert gate.active < gate.limit
    assert not exclusive.done()
    pending = asyncio.ensure_future(awaited(call(runner)))  # first come, first served
    await asyncio.sleep(0)
    gate.leave()
    await exclusive
    assert not pending.done(), "the exclusive waiter came first"
    gate.leave_exclusive()
    assert (await pending).status == 200
    assert type(call(runner)) is Wire, "nobody waits any more: the step answers alone"
    assert counters(runner) == (2, 2, 0, 0)
    await runner.close(1.0)
