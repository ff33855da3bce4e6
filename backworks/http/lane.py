"""The plugin lane: a lean HTTP/1.1 engine for the plugin and static endpoints.

A native plugin exists to be faster than the Python it replaces, and inside aiohttp's
request objects no plugin route can be: the host's own per-request path cost more
than a whole Python handler. The lane is an asyncio protocol on httptools (llhttp,
the parser of Node.js and uvicorn) that reads requests straight off the socket,
answers them through the same engine-neutral code as aiohttp does (dispatch.serve),
and writes each answer with one `write` of prebuilt bytes.

One port serves both engines. Every connection starts on the lane. A request for
the operations surface (/_backworks/..., /metrics) is read whole on the lane (its
limits and timeouts hold for every request), then the connection is handed to
aiohttp's own protocol (`transport.set_protocol`) with that request re-serialized
canonically: its parsed head, its body with a Content-Length, and `Connection:
close`, so aiohttp only ever parses bytes the lane has already checked. A WebSocket
upgrade is handed over as it stands, its head re-serialized and the bytes after it
kept.

What the lane does itself, as a front proxy would: HTTP/1.1 keep-alive and
pipelining (answers in order), HTTP/1.0, sized and chunked bodies within
`server.max_body_bytes`, HEAD, `Expect: 100-continue`, `Connection: close`, a
header read timeout (from a request's first byte to the end of its head), a body
read timeout and a keep-alive idle timeout, header count and size limits, the
request id, the JSON error envelope, the global headers and a Date refreshed once a
second. Timeouts are checked by one sweep per server a few times a second, not by a
timer per request.

A request is answered eagerly: the engine-neutral coroutine runs at once, in the
parser's callback, and most plugin answers (inline calls, static endpoints) are done
before it would first suspend. Only a request that really waits (a pooled call, a
worker process, a hook) gets a task of its own; the connection's later requests
queue behind it, so answers leave in order. With tracing on, every request runs
as a task: its span is current in the task's own context.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Coroutine
from email.utils import formatdate
from typing import Any, cast

import httptools
import structlog
import yarl

from backworks import tracing
from backworks.abi import Response
from backworks.http.dispatch import answer_now, is_operations_path, route, serve
from backworks.http.exchange import Exchange
from backworks.http.record import CLIENT_GONE, Recorder
from backworks.http.reply import error_reply
from backworks.http.traffic import UNMATCHED
from backworks.httpspec import EMPTY_BODY_STATUSES, HOST_HEADERS, reason
from backworks.lifecycle.host import Host

log = structlog.get_logger("backworks.lane")

# Limits on a request's head, as aiohttp's defaults: a longer line or field, or more
# fields, is refused (431) before it is buffered.
MAX_LINE = 8190
MAX_FIELD = 8190
MAX_HEADERS = 128
# Pipelined requests parsed ahead of their turn; past this the lane stops reading.
MAX_QUEUED = 32
# When the server drains, how long a connection accepted just before, with nothing
# read yet, is given for its first request to arrive: closing it at once would drop a
# request its client has already sent.
FRESH_GRACE_S = 0.25

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_PREFIXES: dict[tuple[int, str], bytes] = {}


def _prefix(status: int, content_type: str) -> bytes:
    """The status line and Content-Type of an answer, made once per pair."""
    prefix = _PREFIXES.get((status, content_type))
    if prefix is None:
        media = content_type or "application/json"
        prefix = f"HTTP/1.1 {status} {reason(status)}\r\nContent-Type: {media}\r\n".encode()
        if len(_PREFIXES) < 1024:
            _PREFIXES[status, content_type] = prefix
    return prefix


class _Refused(Exception):
    """A request the lane answers with an error and a closed connection."""

    def __init__(self, status: int) -> None:
        self.status = status
        super().__init__(status)


class _Stop(Exception):
    """Raised from a parser callback to stop parsing: the connection changes hands."""


class LaneSettings:
    """What every connection of one server shares: the host, limits, the clock."""

    def __init__(
        self,
        host: Host,
        recorder: Recorder,
        handoff: Callable[[], asyncio.Protocol],
        *,
        header_timeout: float,
        body_timeout: float,
        keepalive_timeout: float,
    ) -> None:
        self.host = host
        self.recorder = recorder
        self.handoff = handoff  # makes aiohttp's protocol for a connection handed over
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.keepalive_timeout = keepalive_timeout
        self.connections: set[Lane] = set()
        self.draining = False
        self.date = b""
        self._globals: tuple[object, bytes, frozenset[str]] = (None, b"", frozenset())
        self._sweeper: asyncio.TimerHandle | None = None
        self._tick()

    @property
    def max_body(self) -> int:
        """The body limit; read at start (a reload cannot change it)."""
        return self.host.config.server.max_body_bytes

    def global_headers(self) -> tuple[bytes, frozenset[str]]:
        """The config's global headers as bytes, and their lower-case names.

        Rebuilt only when a config reload replaced them.
        """
        current = self.host.config.global_headers
        cached, block, names = self._globals
        if cached is not current:
            block = b"".join(f"{k}: {v}\r\n".encode() for k, v in current.items())
            names = frozenset(k.lower() for k in current)
            self._globals = (current, block, names)
        return block, names

    def _tick(self) -> None:
        """Once per sweep: the Date header, and every connection's deadline."""
        self.date = formatdate(usegmt=True).encode()
        self._time_out()
        shortest = min(self.header_timeout, self.body_timeout, self.keepalive_timeout)
        interval = min(1.0, max(0.05, shortest / 5))
        self._sweeper = asyncio.get_running_loop().call_later(interval, self._tick)

    def _time_out(self) -> None:
        now = time.monotonic()
        for lane in list(self.connections):
            if lane.deadline and now >= lane.deadline:
                lane.timed_out()

    def close(self) -> None:
        """Stops the sweep (the server is gone)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    async def drain(self, timeout: float) -> None:
        """Closes idle connections now, busy ones after their answer; waits up to `timeout`."""
        self.draining = True
        for lane in list(self.connections):
            lane.drain()
        deadline = time.monotonic() + timeout
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            self._time_out()
        for lane in list(self.connections):
            lane.abort()


# What a queued request is waiting for: the route it matched (or its ready answer),
# or RELAY: an operations request, for aiohttp.
RELAY: Any = object()


class _Queued:
    """A request read whole and waiting for its turn to be answered."""

    __slots__ = ("ex", "head", "keep_alive", "match", "started")

    def __init__(self, ex: Exchange, match: Any, head: bool, keep_alive: bool, started: float):
        self.ex = ex
        self.match = match
        self.head = head
        self.keep_alive = keep_alive
        self.started = started


class Lane(asyncio.Protocol):
    """One client connection on the lane."""

    def __init__(self, settings: LaneSettings) -> None:
        self.settings = settings
        self.deadline = 0.0  # monotonic time this connection times out; 0: never
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque[_Queued] = deque()
        self._task: _Waiting | None = None  # the answer that is waiting
        self._closing = False  # no request after the queued ones will be read
        self._broken = False  # the parser has failed: nothing more is read
        self._paused = False
        # The request being read.
        self._reading = False
        self._url = b""
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._ex: Exchange | None = None
        self._match: Any = None
        self._upgrading = False
        self._started = 0.0  # when the request being read began; 0: none yet

    # -- the connection ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self.settings.connections.add(self)
        self._idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.settings.connections.discard(self)
        self._transport = None
        self.deadline = 0.0
        ex = self._ex
        if self._reading and ex is not None:  # gone in the middle of sending its request
            ex.route = ex.route or UNMATCHED
            self._record(_Queued(ex, None, False, False, self._started), CLIENT_GONE)
        task = self._task
        if task is not None:
            # The client went away while its answer was being made: cancelling it sets
            # the plugin call's cancel word (the runner's cancellation path).
            task.cancel()
        for queued in self._queue:
            if queued.match is not RELAY:
                self._record(queued, CLIENT_GONE)
        self._queue.clear()

    def data_received(self, data: bytes) -> None:
        if self._broken:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            rest = data[e.args[0] :]
            if self._upgrading:
                self._upgrade(rest)
            elif rest:  # an upgrade nobody here takes: the request was answered as usual
                self.data_received(rest)
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, _Refused):
                self._refuse(cause.status)
            elif not isinstance(cause, _Stop):
                raise
        except httptools.HttpParserError as e:
            log.info("bad_request", reason=type(e).__name__, engine="lane")
            self._refuse(400)

    def pause_writing(self) -> None:
        """The client reads slower than we answer: stop reading until it catches up."""
        self._pause()

    def resume_writing(self) -> None:
        """The client caught up."""
        if len(self._queue) < MAX_QUEUED:
            self._resume()

    def timed_out(self) -> None:
        """The sweep found this connection past its deadline."""
        self.deadline = 0.0
        if self._reading:
            log.info("request_timeout", engine="lane")
            self._refuse(408)
        elif self._task is None and not self._queue:
            self.abort()  # idle past the keep-alive timeout

    def drain(self) -> None:
        """The server is stopping: close after the queued answers; soon, if idle.

        An idle connection (nothing read yet, or between keep-alive requests) gets
        FRESH_GRACE_S for a request its client has already sent, which is then answered
        with `Connection: close`: closing it at once would reset that request, and a
        client (nginx) cannot retry a POST on another server.
        """
        if self._reading or self._task is not None or self._queue:
            self._closing = True
        else:
            grace = time.monotonic() + FRESH_GRACE_S
            self.deadline = min(self.deadline, grace) if self.deadline else grace

    def abort(self) -> None:
        """Closes the connection now."""
        transport = self._transport
        if transport is not None:
            transport.close()

    # -- the parser's callbacks ----------------------------------------------------

    def on_message_begin(self) -> None:
        if self._closing:  # pipelined after a request that closes: never read
            raise _Stop
        self._reading = True
        self._url = b""
        self._raw_headers = []
        self._body = []
        self._body_size = 0
        self._upgrading = False
        self._started = time.perf_counter()
        self.deadline = time.monotonic() + self.settings.header_timeout

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_LINE:
            raise _Refused(431)

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._raw_headers
        if len(name) > MAX_FIELD or len(value) > MAX_FIELD or len(headers) >= MAX_HEADERS:
            raise _Refused(431)
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        settings = self.settings
        # One pass over the fields: the plugin's view of them (lower-case names, the
        # bytes aiohttp would decode), and the few the lane acts on itself.
        headers = []
        special: dict[str, str] = {}
        for name, value in self._raw_headers:
            pair = (name.decode("latin-1").lower(), value.decode("utf-8", "surrogateescape"))
            headers.append(pair)
            if pair[0] in _SPECIAL:
                special.setdefault(pair[0], pair[1])
        url = self._url
        if url[:1] == b"/":
            raw_path, _, query = url.partition(b"?")
        else:  # absolute-form (`GET http://host/path`), as a proxy would send it
            raw_path, query = _absolute_target(url)
        path = _path(raw_path)
        ex = self._ex = Exchange(
            parser.get_method().decode("ascii"),
            path,
            query.decode("utf-8", "surrogateescape"),
            tuple(headers),
            b"",
            settings.recorder.request_id(special.get("x-request-id")),
        )
        if is_operations_path(path):
            self._match = RELAY
            self._upgrading = parser.should_upgrade()
        else:
            self._match = route(settings.host, ex)
        declared = int(special.get("content-length", 0))  # llhttp checked it is a number
        if declared > settings.max_body:
            raise _Refused(413)
        if declared or "transfer-encoding" in special:
            self.deadline = time.monotonic() + settings.body_timeout
            if special.get("expect", "").lower() == "100-continue" and self._transport:
                self._transport.write(_CONTINUE)
        else:
            self.deadline = 0.0

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self.settings.max_body:
            raise _Refused(413)
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._reading = False
        self.deadline = 0.0
        if self._upgrading:
            return  # handed over whole when the parser stops at the upgrade
        ex = self._ex
        assert ex is not None
        self._ex = None
        body = self._body
        if body:
            ex.body = body[0] if len(body) == 1 else b"".join(body)
        match, self._match = self._match, None
        settings = self.settings
        # Draining (from SIGTERM on, through the drain delay): every answer closes its
        # connection, so clients stop reusing it before the server closes anything.
        keep_alive = (
            self._parser.should_keep_alive()
            and match is not RELAY
            and not (settings.draining or settings.host.draining)
        )
        if not keep_alive:
            self._closing = True
        queued = _Queued(ex, match, ex.method == "HEAD", keep_alive, self._started)
        self._queue.append(queued)
        if self._task is None and len(self._queue) == 1:
            self._next()
        elif len(self._queue) >= MAX_QUEUED:
            self._pause()

    # -- answering -----------------------------------------------------------------

    def _next(self) -> None:
        """Answers queued requests in order, each at once unless it has to wait."""
        host = self.settings.host
        while self._queue and self._task is None and self._transport is not None:
            queued = self._queue[0]
            if queued.match is RELAY:
                self._queue.popleft()
                self._hand_over(queued.ex)
                return
            if tracing.TRACER is not None:
                coro = _in_task(_traced(host, queued.ex, queued.match))
            else:
                answer = None
                try:
                    answer = answer_now(host, queued.ex, queued.match)
                except Exception:
                    log.exception("request_failed", request_id=queued.ex.request_id, engine="lane")
                    answer = error_reply(500, queued.ex.request_id)
                if answer is not None:
                    self._queue.popleft()
                    self._write(queued, answer)
                    continue
                coro = serve(host, queued.ex, queued.match)
            try:
                waiting = coro.send(None)
            except StopIteration as done:
                self._queue.popleft()
                self._write(queued, done.value)
                continue
            except Exception:
                self._queue.popleft()
                log.exception("request_failed", request_id=queued.ex.request_id, engine="lane")
                self._write(queued, error_reply(500, queued.ex.request_id))
                continue
            self._task = _Waiting(self, coro, waiting, queued)
            return
        if self._paused and len(self._queue) < MAX_QUEUED and not self._broken:
            self._resume()
        if not self._queue and self._task is None and not self._reading:
            if self._closing:
                self.abort()
            else:
                self._idle()

    def _finished(self, queued: _Queued, answer: Response | None) -> None:
        """The answer `_Waiting` waited for (None: nobody to give it to any more)."""
        self._task = None
        if self._queue and self._queue[0] is queued:
            self._queue.popleft()
        if answer is None:
            self._record(queued, CLIENT_GONE)
            return
        self._write(queued, answer)
        self._next()

    def _write(self, queued: _Queued, answer: Response) -> None:
        transport = self._transport
        if transport is None:
            self._record(queued, CLIENT_GONE)
            return
        settings = self.settings
        ex = queued.ex
        status = answer.status
        block, global_names = settings.global_headers()
        closing = not queued.keep_alive or (self._closing and len(self._queue) <= 1)
        if not answer.headers and status not in EMPTY_BODY_STATUSES and not closing:
            # The common answer: one prebuilt prefix, one formatting, one write.
            body = b"" if queued.head else answer.body
            transport.write(
                b"%sX-Request-Id: %s\r\nDate: %s\r\nContent-Length: %d\r\n%s\r\n%s"
                % (
                    _prefix(status, answer.content_type),
                    ex.request_id.encode(),
                    settings.date,
                    len(answer.body),
                    block,
                    body,
                )
            )
            self._record(queued, status)
            return
        parts = [_prefix(status, answer.content_type), b"X-Request-Id: ", ex.request_id.encode()]
        parts.append(b"\r\n")
        date = True
        if answer.headers:
            own = set()
            for name, value in answer.headers:
                lower = name.lower()
                if lower not in HOST_HEADERS and lower != "x-request-id":
                    own.add(lower)
                    parts.append(f"{name}: {value}\r\n".encode("utf-8", "replace"))
            date = "date" not in own
            if own & global_names:  # a header the answer set itself is not repeated
                block = b"".join(
                    f"{k}: {v}\r\n".encode()
                    for k, v in settings.host.config.global_headers.items()
                    if k.lower() not in own
                )
        if date:
            parts += (b"Date: ", settings.date, b"\r\n")
        body = answer.body
        if status in EMPTY_BODY_STATUSES:
            body = b""
        else:
            parts += (b"Content-Length: ", str(len(body)).encode(), b"\r\n")
        parts.append(block)
        if closing:
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        if not queued.head:
            parts.append(body)
        transport.write(b"".join(parts))
        self._record(queued, status)

    def _record(self, queued: _Queued, status: int) -> None:
        ex = queued.ex
        self.settings.recorder.answered(
            ex.method,
            ex.path,
            ex.route or UNMATCHED,
            status,
            time.perf_counter() - queued.started,
            ex.plugin,
            ex.request_id,
        )

    def _refuse(self, status: int) -> None:
        """Answers a request that cannot be read with `status`, after the ones before it,
        and closes the connection."""
        self._broken = self._closing = True
        self._reading = False
        self.deadline = 0.0
        self._pause()
        ex = self._ex or Exchange("", "", "", (), b"", self.settings.recorder.request_id(None))
        self._ex = None
        ex.route = UNMATCHED
        answer = error_reply(status, ex.request_id)
        self._queue.append(_Queued(ex, answer, False, False, self._started or time.perf_counter()))
        if self._task is None and len(self._queue) == 1:
            self._next()

    # -- handing over --------------------------------------------------------------

    def _hand_over(self, ex: Exchange) -> None:
        """Gives the connection to aiohttp with `ex` re-serialized; it answers and closes."""
        head = _request_head(self._parser, ex.method, self._url, self._raw_headers)
        extra = b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(ex.body)
        self._give_away(head + extra + ex.body)

    def _upgrade(self, rest: bytes) -> None:
        """A WebSocket (or other) upgrade: aiohttp takes the connection as it stands."""
        ex = self._ex
        if self._task is not None or self._queue or ex is None:
            self._refuse(400)  # pipelined behind other requests: not something we relay
            return
        head = _request_head(self._parser, ex.method, self._url, self._raw_headers)
        self._give_away(head + b"\r\n" + rest)

    def _give_away(self, data: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        self.settings.connections.discard(self)
        self.deadline = 0.0
        self._transport = None
        self._broken = True
        protocol = self.settings.handoff()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self._paused:
            transport.resume_reading()
        protocol.data_received(data)

    # -- flow ----------------------------------------------------------------------

    def _idle(self) -> None:
        self.deadline = time.monotonic() + self.settings.keepalive_timeout

    def _pause(self) -> None:
        if not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def _resume(self) -> None:
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()


class _Waiting:
    """An answer whose making waits: its coroutine, resumed when what it awaits is done.

    The lane runs each answer's coroutine at once, in the parser's callback, and most
    finish right there. One that suspends (a pooled call, a worker process, a hook)
    is driven from here by done-callbacks, as a task would be, without a task's cost
    per request. Nothing on the engine-neutral request path needs a current task.
    """

    __slots__ = ("coro", "lane", "queued", "waiting")

    def __init__(
        self, lane: Lane, coro: Coroutine[Any, Any, Response], waiting: Any, queued: _Queued
    ) -> None:
        self.lane = lane
        self.coro = coro
        self.queued = queued
        self.waiting: Any = None
        self._wait_for(waiting)

    def _wait_for(self, waiting: Any) -> None:
        self.waiting = waiting
        if waiting is None:  # a bare `yield` (asyncio.sleep(0)): the next loop turn
            asyncio.get_running_loop().call_soon(self._step, None)
        else:
            waiting.add_done_callback(self._step)

    def _step(self, _: object) -> None:
        try:
            waiting = self.coro.send(None)
        except StopIteration as done:
            self.lane._finished(self.queued, done.value)
            return
        except asyncio.CancelledError:  # what it waited for was cancelled under it
            self.lane._finished(self.queued, None)
            return
        except Exception:
            ex = self.queued.ex
            log.exception("request_failed", request_id=ex.request_id, engine="lane")
            self.lane._finished(self.queued, error_reply(500, ex.request_id))
            return
        self._wait_for(waiting)

    def cancel(self) -> None:
        """The client went away: the coroutine is cancelled where it waits."""
        waiting = self.waiting
        if waiting is not None:
            waiting.remove_done_callback(self._step)
        try:
            self.coro.throw(asyncio.CancelledError())
        except (asyncio.CancelledError, StopIteration):
            pass
        except Exception:
            log.exception("request_failed", request_id=self.queued.ex.request_id, engine="lane")
        else:  # it went on waiting after all (it caught the cancellation): let it finish
            self.coro.close()
        self.lane._finished(self.queued, None)


async def _traced(host: Host, ex: Exchange, match: Any) -> Response:
    """Answers `ex` inside its request span (see tracing.py)."""
    span = tracing.request_started(ex.method, ex.path, dict(ex.headers))
    status = CLIENT_GONE
    try:
        answer = answer_now(host, ex, match)
        if answer is None:
            answer = await serve(host, ex, match)
        status = answer.status
        return answer
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


def _absolute_target(url: bytes) -> tuple[bytes, bytes]:
    """The path and query of an absolute-form target; `*` and the like stay as they are."""
    try:
        parsed = httptools.parse_url(url)
    except httptools.HttpParserInvalidURLError:
        return url, b""
    return parsed.path or b"/", parsed.query or b""


def _path(raw: bytes) -> str:
    """The path as routes match it: percent-decoded exactly as aiohttp (yarl) does."""
    if b"%" not in raw:
        return raw.decode("utf-8", "surrogateescape")
    return yarl.URL.build(path=raw.decode("utf-8", "surrogateescape"), encoded=True).path


# The request fields the lane acts on itself.
_SPECIAL = frozenset({"content-length", "transfer-encoding", "expect", "x-request-id"})


# Hop-by-hop and framing headers the lane sets itself when it re-serializes a request.
_REFRAMED = frozenset({b"content-length", b"transfer-encoding", b"connection", b"expect"})


def _request_head(
    parser: httptools.HttpRequestParser,
    method: str,
    url: bytes,
    headers: list[tuple[bytes, bytes]],
) -> bytes:
    """A request's head as the lane parsed it, without the framing it sets itself.

    An upgrade keeps its Connection header (it names the upgrade).
    """
    version = parser.get_http_version().encode()
    upgrading = parser.should_upgrade()
    lines = [b"%s %s HTTP/%s\r\n" % (method.encode(), url, version)]
    for name, value in headers:
        lower = name.lower()
        if lower in _REFRAMED and not (upgrading and lower == b"connection"):
            continue
        lines.append(b"%s: %s\r\n" % (name, value))
    return b"".join(lines)
