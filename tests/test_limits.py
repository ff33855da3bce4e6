from __future__ import annotations

import asyncio

import pytest

from backworks.runtime.gate import CallGate


async def test_admits_up_to_the_limit_then_queues() -> None:
    gate = CallGate(2)
    assert gate.try_enter()
    assert gate.try_enter()
    assert not gate.try_enter()
    waiter = asyncio.ensure_future(gate.enter(timeout=5))
    await asyncio.sleep(0)
    assert not waiter.done()
    gate.leave()
    await asyncio.wait_for(waiter, 10)
    assert gate.active == 2


async def test_waiting_for_a_slot_times_out() -> None:
    gate = CallGate(1)
    assert gate.try_enter()
    with pytest.raises(TimeoutError):
        await gate.enter(timeout=0.02)
    gate.leave()
    assert gate.try_enter(), "the expired waiter must not hold a place in the queue"


async def test_exclusive_waits_for_shared_calls_and_blocks_new_ones() -> None:
    gate = CallGate(4)
    assert gate.try_enter()
    exclusive = asyncio.ensure_future(gate.enter_exclusive(timeout=5))
    await asyncio.sleep(0)
    assert not exclusive.done()
    assert not gate.try_enter(), "a queued exclusive caller is not overtaken"
    gate.leave()
    await asyncio.wait_for(exclusive, 10)
    shared = asyncio.ensure_future(gate.enter(timeout=5))
    await asyncio.sleep(0)
    assert not shared.done()
    gate.leave_exclusive()
    await asyncio.wait_for(shared, 10)
    assert gate.active == 1


async def test_cancelled_waiter_gives_its_place_back() -> None:
    gate = CallGate(1)
    assert gate.try_enter()
    waiter = asyncio.ensure_future(gate.enter(timeout=5))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    gate.leave()
    assert gate.active == 0
    assert gate.try_enter()


async def test_trying_for_the_state_alone_never_queues() -> None:
    """What a scheduled health check does: take the state if idle, else come back later."""
    gate = CallGate(2)
    assert gate.try_enter()
    assert not gate.try_enter_exclusive(), "a call is running"
    waiter = asyncio.ensure_future(gate.enter_exclusive(timeout=5))
    await asyncio.sleep(0)
    gate.leave()
    await asyncio.wait_for(waiter, 1)
    assert not gate.try_enter_exclusive(), "another holds the state"
    gate.leave_exclusive()
    assert gate.try_enter()
    assert gate.try_enter()
    queued = asyncio.ensure_future(gate.enter(timeout=5))
    await asyncio.sleep(0)
    assert not gate.try_enter_exclusive(), "calls are running and one waits"
    assert len(gate._waiters) == 1, "the failed try took no place in the queue"
    gate.leave()
    await asyncio.wait_for(queued, 1)
    gate.leave()
    gate.leave()
    assert gate.active == 0
    assert gate.try_enter_exclusive(), "idle: taken at once"
    assert not gate.try_enter()
    gate.leave_exclusive()


async def test_the_words_the_compiled_step_reads_say_when_a_slot_is_free() -> None:
    """`free()` (what abi/step.c checks in CallGate.words) is try_enter's answer, kept
    right as waiters come, are served, time out or are cancelled."""
    gate = CallGate(1)
    assert gate.free()
    assert gate.try_enter()
    assert not gate.free()  # full
    served = asyncio.ensure_future(gate.enter(5.0))
    expiring = asyncio.ensure_future(gate.enter(0.01))
    cancelled = asyncio.ensure_future(gate.enter(5.0))
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        await expiring
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    gate.leave()  # the first waiter takes the slot
    await served
    assert not gate.free()
    gate.leave()
    assert gate.free(), "nobody holds or waits: free again"
    assert gate.try_enter_exclusive()
    assert not gate.free()
    gate.leave_exclusive()
    assert gate.free()
    assert gate.try_enter()
    gate.leave()
    assert gate.active == 0
