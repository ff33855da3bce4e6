from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref

import pytest

from backworks.runtime.native_pool import NativePool


async def test_results_and_errors_come_back_to_the_awaiting_side() -> None:
    pool = NativePool(4, "t")
    assert await pool.submit(lambda a, b: a + b, 2, 3) == 5
    with pytest.raises(ZeroDivisionError):
        await pool.submit(lambda: 1 / 0)
    pool.close()


async def test_quick_calls_keep_one_thread() -> None:
    """More threads for microsecond calls only add GIL hand-offs."""
    pool = NativePool(8, "t")
    results = await asyncio.gather(*(pool.submit(lambda i=i: i) for i in range(2000)))
    assert results == list(range(2000))
    assert len(pool._threads) == 1
    pool.close()


async def test_slow_calls_get_a_thread_each_up_to_the_limit() -> None:
    pool = NativePool(4, "t")
    running, peak = 0, 0
    lock = threading.Lock()

    def slow() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(1.0)  # slow even when a busy machine delays the pool's growth check
        with lock:
            running -= 1

    await asyncio.gather(*(pool.submit(slow) for _ in range(6)))
    assert peak == 4, "blocked calls must not wait behind each other"
    assert len(pool._threads) == 4
    pool.close()


async def test_calls_of_a_few_milliseconds_get_threads_when_calls_queue_behind_them() -> None:
    """A 10 ms call finishes well within the growth check's 20 ms, but the calls queued
    behind it wait: one thread would serve 100 a second, whatever the offered rate."""
    pool = NativePool(4, "t")
    await asyncio.gather(*(pool.submit(time.sleep, 0.01) for _ in range(40)))
    assert len(pool._threads) == 4
    pool.close()


class Big:
    """Stands for a large answer or request: an object a weak reference can watch."""


async def _freed(ref: weakref.ref[Big]) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        gc.collect()
        if ref() is None:
            return True
        await asyncio.sleep(0.01)
    return False


async def test_an_idle_thread_keeps_no_reference_to_its_last_answer_or_request() -> None:
    """Threads wait for their next job for as long as there is none; what the last one
    held (a 500 MB answer, say) must be freed when its caller drops it, not then."""
    pool = NativePool(1, "t")
    request = Big()
    answer = await pool.submit(lambda r: Big(), request)
    answer_ref, request_ref = weakref.ref(answer), weakref.ref(request)
    del answer, request
    assert await _freed(answer_ref), "the idle thread still holds the last answer"
    assert await _freed(request_ref), "the idle thread still holds the last request"

    def fail(r: Big) -> None:
        raise ValueError(r)  # the error (and its traceback) holds the request

    request = Big()
    with pytest.raises(ValueError, match="Big object"):
        await pool.submit(fail, request)
    request_ref = weakref.ref(request)
    del request
    assert await _freed(request_ref), "the idle thread still holds the last failure"
    pool.close()
