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
