"""The lane's pooled calls: handed to the plugin's threads with a callback, no coroutine
per call (runtime/pooled.py), under the same guards as the awaited path.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import pytest

from backworks.abi import Request, Response, open_plugin_library
from backworks.abi.hostlog import plugin_log_sink
from backworks.errors import (
    CircuitOpenError,
    PluginCallError,
    PluginSaturatedError,
    PluginTimeoutError,
)
from backworks.http.aio.state import HOST
from backworks.runtime.backend import ThreadBackend
from backworks.runtime.breaker import CircuitBreaker
from backworks.runtime.native_pool import NativePool
from backworks.runtime.pooled import PooledCall
from backworks.runtime.runner import PluginRunner
from tests.conftest import BuildPlugin
from tests.serving import KIT, Kit, Serve, eventually
from tests.wire import exchange


class MakeRunner(Protocol):
    def __call__(
        self, *, timeout_ms: int = ..., queue_timeout_ms: int = ..., threshold: int = ...
    ) -> PluginRunner: ...


@pytest.fixture
def make_runner(build_plugin: BuildPlugin) -> MakeRunner:
    """The test kit in this process behind a pooled runner with one slot."""

    def make(
        *, timeout_ms: int = 10_000, queue_timeout_ms: int = 10_000, threshold: int = 5
    ) -> PluginRunner:
        path = build_plugin(KIT, name="kit")
        instance = open_plugin_library(path).instantiate(b"{}", plugin_log_sink("kit"))
        return PluginRunner(
            ThreadBackend(instance, 1),
            max_concurrency=1,
            timeout_ms=timeout_ms,
            queue_timeout_ms=queue_timeout_ms,
            breaker=CircuitBreaker(failure_threshold=threshold),
        )

    return make


class Outcomes:
    """A call's `done`: keeps every outcome it is given (there must be exactly one)."""

    def __init__(self) -> None:
        self.given: list[tuple[Response | None, BaseException | None]] = []

    def __call__(self, resp: Response | None, error: BaseException | None) -> None:
        self.given.append((resp, error))


def submitted(runner: PluginRunner, path: str, query: str = "") -> tuple[PooledCall, Outcomes]:
    outcomes = Outcomes()
    call = runner.submit(Request("GET", path, query=query), outcomes)
    assert isinstance(call, PooledCall), "a pooled call with a free slot is handed over"
    return call, outcomes


async def test_a_pooled_call_answers_through_its_callback(make_runner: MakeRunner) -> None:
    runner = make_runner()
    assert runner.hands_off
    _call, outcomes = submitted(runner, "/kit/status", "code=201")
    await eventually(lambda: outcomes.given)
    [(resp, error)] = outcomes.given
    assert error is None
    assert resp is not None
    assert resp.status == 201
    stats = runner.stats
    assert (stats.calls, stats.ok, stats.in_flight) == (1, 1, 0)
    assert runner.gate.active == 0
    await runner.close(5)


async def test_a_timeout_answers_at_once_and_the_call_keeps_its_slot_until_it_returns(
    make_runner: MakeRunner,
) -> None:
    runner = make_runner(timeout_ms=100)
    call, outcomes = submitted(runner, "/kit/wait", "ms=20000")
    await eventually(lambda: outcomes.given)
    [(resp, error)] = outcomes.given
    assert resp is None
    assert isinstance(error, PluginTimeoutError)
    assert call.cancel_flag.is_set, "the plugin is told through its cancel word"
    assert runner.breaker.consecutive_failures == 1
    # The plugin polls the word and returns (cancelled) well before its 20 s: only
    # then is the slot free, and that late outcome changes nothing more.
    await eventually(lambda: runner.stats.in_flight == 0, timeout=10)
    assert runner.gate.active == 0
    assert len(outcomes.given) == 1
    stats = runner.stats
    assert (stats.timed_out, stats.failed, stats.cancelled) == (1, 0, 0)
    assert runner.breaker.consecutive_failures == 1, "one call, one failure"
    await runner.close(5)


async def test_a_late_answer_is_dropped_and_its_slot_released_once(
    make_runner: MakeRunner,
) -> None:
    runner = make_runner(timeout_ms=50, queue_timeout_ms=20_000)
    # /sleep ignores the cancel word: its answer comes late, whatever the host says.
    _call, outcomes = submitted(runner, "/kit/sleep", "ms=1500")
    await eventually(lambda: outcomes.given)
    assert isinstance(outcomes.given[0][1], PluginTimeoutError)
    assert runner.gate.active == 1, "the running call keeps its slot"
    # The next call waits for that slot, then runs: the slot came back exactly once.
    waits = runner.submit(Request("GET", "/kit/status", query="code=200"), Outcomes())
    assert not isinstance(waits, PooledCall)
    resp = await waits
    assert resp.status == 200
    assert len(outcomes.given) == 1, "the late answer reached nobody"
    stats = runner.stats
    assert (stats.ok, stats.timed_out, stats.in_flight) == (1, 1, 0)
    assert runner.gate.active == 0
    await runner.close(5)


async def test_a_client_that_goes_away_cancels_the_call(make_runner: MakeRunner) -> None:
    runner = make_runner()
    call, outcomes = submitted(runner, "/kit/wait", "ms=20000")
    call.cancel()
    assert outcomes.given == [(None, None)], "told at once: nobody to answer"
    assert call.cancel_flag.is_set
    call.cancel()  # once is all it takes: a second cancel changes nothing
    await eventually(lambda: runner.stats.in_flight == 0, timeout=10)
    assert outcomes.given == [(None, None)]
    stats = runner.stats
    assert (stats.cancelled, stats.failed, stats.timed_out) == (1, 0, 0)
    assert runner.breaker.consecutive_failures == 0, "a cancelled call says nothing"
    assert runner.gate.active == 0
    await runner.close(5)


async def test_a_call_with_no_slot_within_its_queue_timeout_is_saturated(
    make_runner: MakeRunner,
) -> None:
    runner = make_runner(queue_timeout_ms=50)
    _call, held = submitted(runner, "/kit/sleep", "ms=1000")
    waits = runner.submit(Request("GET", "/kit/status"), Outcomes())
    assert not isinstance(waits, PooledCall), "no free slot: it waits as awaited calls do"
    with pytest.raises(PluginSaturatedError):
        await waits
    assert runner.stats.rejected == 1
    await eventually(lambda: held.given)
    await runner.close(5)


async def test_an_open_breaker_refuses_the_call_before_it_is_made(
    make_runner: MakeRunner,
) -> None:
    runner = make_runner(threshold=1)
    _call, outcomes = submitted(runner, "/kit/fail")
    await eventually(lambda: outcomes.given)
    [(_, error)] = outcomes.given
    assert isinstance(error, PluginCallError)
    assert runner.breaker.state.value == "open"
    with pytest.raises(CircuitOpenError):
        runner.submit(Request("GET", "/kit/status"), Outcomes())
    stats = runner.stats
    assert (stats.calls, stats.failed, stats.rejected) == (1, 1, 1)
    await runner.close(5)


async def test_a_raising_callback_strands_nothing_else_in_its_batch() -> None:
    pool = NativePool(1, "t")
    got: list[Any] = []

    def bad(result: Any, error: BaseException | None) -> None:
        msg = "a caller's bug"
        raise RuntimeError(msg)

    def good(result: Any, error: BaseException | None) -> None:
        got.append((result, error))

    pool.run(bad, lambda: 1, ())
    pool.run(good, lambda: 2, ())
    pool.run(good, lambda: 1 / 0, ())
    await eventually(lambda: len(got) == 2)
    assert got[0] == (2, None)
    assert isinstance(got[1][1], ZeroDivisionError)
    pool.close()


async def test_the_submitted_future_path_and_the_callback_path_share_the_threads() -> None:
    pool = NativePool(1, "t")
    got: list[Any] = []
    pool.run(lambda result, error: got.append(result), lambda: "cb", ())
    assert await pool.submit(lambda: "fut") == "fut"
    await eventually(lambda: got)
    assert got == ["cb"]
    assert len(pool._threads) == 1
    pool.close()


async def test_the_lane_answers_a_pooled_timeout_in_its_turn(kit: Kit, serve: Serve) -> None:
    kit("kit")
    client = await serve({"plugins": {"kit": {"timeout_ms": 200}}})
    assert client.port is not None
    runner = client.app[HOST].runners["kit"]
    assert runner.hands_off, "the kit is pooled: the lane hands its calls over"
    slow = b"GET /plugins/kit/wait?ms=20000 HTTP/1.1\r\nHost: x\r\nX-Request-Id: one\r\n\r\n"
    then = b"GET /plugins/kit/status?code=201 HTTP/1.1\r\nHost: x\r\nX-Request-Id: two\r\n\r\n"
    answers, _ = await exchange(client.port, slow + then)
    assert [(a.status, a.header("X-Request-Id")) for a in answers] == [(504, "one"), (201, "two")]
    assert json.loads(answers[0].body)["error"]["code"] == "plugin_timeout"
