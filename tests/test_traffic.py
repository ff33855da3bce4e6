"""The traffic record counts a loop turn's requests together, and never hides one from a reader."""

from __future__ import annotations

import asyncio

from backworks.http.traffic import FLUSH_AT, Answered, Traffic


def answered(traffic: Traffic, status: int = 200, plugin: str | None = "kit") -> None:
    traffic.record("GET", "/items/{id}", "/items/1", status, 0.001, plugin, "rid-1")


async def test_a_request_is_seen_by_a_reader_in_the_same_loop_turn() -> None:
    traffic = Traffic()
    answered(traffic)
    answered(traffic, status=503)
    assert traffic.requests == {("GET", "/items/{id}", 200): 1, ("GET", "/items/{id}", 503): 1}
    assert sum(traffic.latency["GET", "/items/{id}"].counts) == 2
    assert [r["status"] for r in traffic.recent_json()] == [503, 200]
    assert traffic.last_error_json("kit") is not None


async def test_a_loop_turn_s_requests_are_flushed_together_when_it_ends() -> None:
    traffic = Traffic()
    batches: list[list[Answered]] = []
    traffic.on_flush = batches.append
    for _ in range(3):
        answered(traffic)
    assert batches == [], "nothing is written while the turn goes on"
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert [len(batch) for batch in batches] == [3]


def test_without_a_running_loop_a_request_is_counted_at_once() -> None:
    traffic = Traffic()
    batches: list[list[Answered]] = []
    traffic.on_flush = batches.append
    answered(traffic)
    assert [len(batch) for batch in batches] == [1]


async def test_without_an_access_log_requests_are_counted_when_read_or_every_flush_at() -> None:
    traffic = Traffic()
    for _ in range(FLUSH_AT - 1):
        answered(traffic)
    await asyncio.sleep(0)
    assert len(traffic._pending) == FLUSH_AT - 1, "no callback per loop turn: nothing to log"
    answered(traffic)
    assert traffic._pending == [], "the bound: counted at FLUSH_AT"
    answered(traffic)
    assert sum(traffic.requests.values()) == FLUSH_AT + 1, "a read counts what is pending"
