"""Answers that wait: a coroutine driven by done-callbacks, and a relay to aiohttp.

The lane makes most answers at once, in the parser's callback. One that suspends (a
pooled call, a worker process, a hook) is driven from here as a task would be,
without a task's cost per request: nothing on the request core's path needs a
current task. With tracing on, the answer runs as a real task instead, so its span
is current in a context of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from backworks import tracing
from backworks.abi import Response
from backworks.http.answer import answer
from backworks.http.edge import Edge
from backworks.http.exchange import Exchange
from backworks.http.lane.relay import Relay
from backworks.http.record import CLIENT_GONE

log = structlog.get_logger("backworks.lane")

# Given the answer once it is made; None: nobody is there to give it to any more.
Done = Callable[[Response | None], None]


class Waiting:
    """An answer's coroutine, resumed when what it awaits is done; `done` gets the answer."""

    __slots__ = ("_coro", "_done", "_edge", "_ex", "_waiting")

    def __init__(
        self,
        coro: Coroutine[Any, Any, Response],
        waiting: Any,
        done: Done,
        edge: Edge,
        ex: Exchange,
    ) -> None:
        self._coro = coro
        self._done = done
        self._edge = edge
        self._ex = ex
        self._waiting: Any = None
        self._wait_for(waiting)

    def _wait_for(self, waiting: Any) -> None:
        self._waiting = waiting
        if waiting is None:  # a bare `yield` (asyncio.sleep(0)): the next loop turn
            asyncio.get_running_loop().call_soon(self._step, None)
        else:
            waiting.add_done_callback(self._step)

    def _step(self, _: object) -> None:
        try:
            waiting = self._coro.send(None)
        except StopIteration as finished:
            self._done(finished.value)
            return
        except asyncio.CancelledError:  # what it waited for was cancelled under it
            self._done(None)
            return
        except Exception:
            self._done(self._edge.failed(self._ex, engine="lane"))
            return
        self._wait_for(waiting)

    def cancel(self) -> None:
        """The client went away: the coroutine is cancelled where it waits."""
        waiting = self._waiting
        if waiting is not None:
            waiting.remove_done_callback(self._step)
        try:
            self._coro.throw(asyncio.CancelledError())
        except (asyncio.CancelledError, StopIteration):
            pass
        except Exception:
            log.exception("request_failed", request_id=self._ex.request_id, engine="lane")
        else:  # it went on waiting after all (it caught the cancellation): let it finish
            self._coro.close()
        self._done(None)


class Relaying:
    """A request in aiohttp's hands (relay.py); `done` gets its answer's bytes next turn."""

    __slots__ = ("_relay",)

    def __init__(
        self,
        make_protocol: Callable[[], asyncio.Protocol],
        transport: asyncio.Transport,
        request: bytes,
        done: Callable[[bytes], None],
        *,
        head_only: bool,
    ) -> None:
        loop = asyncio.get_running_loop()

        def answered(raw: bytes) -> None:
            # Called from inside aiohttp's handler as it closes: handed on next turn.
            loop.call_soon(done, raw)

        self._relay = Relay(make_protocol, transport, request, answered, head_only=head_only)

    def cancel(self) -> None:
        """The client went away: aiohttp's handler is cancelled (it records the 499)."""
        self._relay.cancel()


async def traced(edge: Edge, ex: Exchange, match: Any, peer: str | None) -> Response:
    """Answers `ex` inside its request span (see tracing.py), as a task of its own."""
    return await _in_task(_traced(edge, ex, match, peer))


async def _traced(edge: Edge, ex: Exchange, match: Any, peer: str | None) -> Response:
    span = edge.span(ex, peer)
    status = CLIENT_GONE
    try:
        made = answer(edge.host, ex, match)
        if not isinstance(made, Response):
            made = await made
        status = made.status
        return made
    except Exception:
        status = 500
        raise
    finally:
        tracing.request_finished(span, status, ex.request_id, ex.route)


async def _in_task(coro: Coroutine[Any, Any, Response]) -> Response:
    """`coro` run as a task: a span is current in its own context, which a task has."""
    task = asyncio.get_running_loop().create_task(coro)
    try:
        return await task
    except asyncio.CancelledError:
        task.cancel()
        raise
