"""The lane: the HTTP/1.1 engine that reads every connection, for both engines.

An asyncio protocol on httptools (llhttp, the parser of Node.js and uvicorn) that
reads requests straight off the socket under the edge's rules (http/edge.py), answers
them through the request core (http/answer.py) and writes each answer with one
`write` of prebuilt bytes (wire.py). Requests for the operations surface
(/_backworks/..., /metrics), and every request under `server.engine: aiohttp`, are
answered by aiohttp's handler in memory (relay.py), in their turn.

What a hostile client can and cannot make the lane do, per connection:
- a request head is bounded as its bytes arrive: each line and field, the field
  count, and the whole head (edge.MAX_HEAD), refused with 431 at once; bytes that
  move no request on (an endless field, an endless trailer) count against it too;
- at most MAX_QUEUED requests, QUEUE_BYTES of them, are read ahead of their answers;
  while the client reads nothing the transport goes over its high-water mark, and
  then the lane stops reading and starts no answer (flow.py), so it holds at most one
  answer beyond the transport's buffer; a client that reads nothing for the body
  timeout is dropped;
- a refused request (400, 408, 413, 417, 431, 501, 505) is answered after the ones
  before it, with `Connection: close`, then the connection is closed lingering: the
  lane half-closes, reads and discards up to LINGER_BYTES for LINGER_S, then
  closes, so the client reads the answer instead of a reset;
- nothing is read after a request that closes the connection, and only the last
  answer says `Connection: close`;
- trailer fields are dropped, never merged into the head; an `Upgrade` nobody takes
  is an ordinary request whose body is read by its framing; CONNECT is refused.

A request is answered eagerly: the core's answer is made at once, in the parser's
callback, and most (inline calls, static endpoints) are done there. One that waits
(a pooled call, a worker process, a hook) is driven by done-callbacks (waiting.py);
the connection's later requests queue behind it, so answers leave in order. With
tracing on, every request runs as a task: its span is current in its own context.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from functools import partial
from typing import Any, cast

import httptools
import structlog

from backworks import tracing
from backworks.abi import Response
from backworks.abi.step import Wire
from backworks.http.answer import answer
from backworks.http.edge import MAX_FIELD, MAX_FIELDS, MAX_HEAD, MAX_LINE, read_head
from backworks.http.exchange import Exchange
from backworks.http.forwarded import peer_of
from backworks.http.lane.flow import QUEUE_FULL, REFUSED, WRITE_FULL, Flow
from backworks.http.lane.settings import LaneSettings
from backworks.http.lane.target import BadTarget, split_target
from backworks.http.lane.waiting import Relaying, Waiting, traced
from backworks.http.lane.wire import (
    CLOSE,
    CONTINUE,
    KEEP_ALIVE,
    relayed_answer,
    relayed_request,
    render,
)
from backworks.http.routing import is_operations_path, route
from backworks.http.traffic import UNMATCHED
from backworks.httpspec import EMPTY_BODY_STATUSES
from backworks.runtime.pooled import PooledCall

log = structlog.get_logger("backworks.lane")

# Requests read ahead of their answers, in count and in bytes; past either the lane
# stops reading.
MAX_QUEUED = 32
QUEUE_BYTES = 1024 * 1024
# The lingering close after a refusal or a closing answer.
LINGER_S = 2.0
LINGER_BYTES = 1024 * 1024
# How long a client that half-closed is given the answers to the requests it sent.
EOF_GRACE_S = 1.0
# When the server drains, how long a connection accepted just before, with nothing
# read yet, is given for its first request to arrive: closing it at once would drop a
# request its client has already sent.
FRESH_GRACE_S = 0.25

# What stops httptools' feed_data: an error, or an upgrade (not an HttpParserError).
_PARSER_STOPS = (httptools.HttpParserError, httptools.HttpParserUpgrade)

# Where the connection is in the request it reads.
_IDLE, _HEAD, _BODY = 0, 1, 2


class _Refused(Exception):
    """A request the lane answers with an error and a closed connection."""

    def __init__(self, status: int) -> None:
        self.status = status
        super().__init__(status)


class _Stop(Exception):
    """Raised from a parser callback: nothing more is read on this connection."""


# A queued request's match when aiohttp answers it.
RELAY: Any = object()


class _Queued:
    """A request read whole and waiting for its turn to be answered."""

    __slots__ = ("ex", "head", "http10", "keep_alive", "match", "relayed", "size", "started")

    def __init__(
        self,
        ex: Exchange,
        match: Any,
        keep_alive: bool,
        started: float,
        size: int = 0,
        http10: bool = False,
    ) -> None:
        self.ex = ex
        self.match = match  # the route, a ready answer, or RELAY
        self.head = ex.method == "HEAD"
        self.keep_alive = keep_alive
        self.http10 = http10  # an HTTP/1.0 client that asked to keep the connection
        self.started = started
        self.size = size  # bytes it holds, against QUEUE_BYTES
        self.relayed = b""  # the request as aiohttp is to read it


class Lane(asyncio.Protocol):
    """One client connection (see the module's doc)."""

    def __init__(self, settings: LaneSettings) -> None:
        self.settings = settings
        self.edge = settings.edge
        self.deadline = 0.0  # monotonic time this connection times out; 0: never
        self._transport: asyncio.Transport | None = None
        self._peer: str | None = None  # the client's IP, for the access log and the span
        self._flow: Flow | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque[_Queued] = deque()
        self._queued_bytes = 0
        # The answer being made (of the request at the queue's head).
        self._task: Waiting | Relaying | PooledCall | None = None
        self._closing = False  # no request after the ones read will be read
        self._broken = False  # the parser is done with: nothing more is fed to it
        self._lingering = 0  # > 0: closing lingering; bytes discarded so far, plus one
        self._eof = False  # the client half-closed (or closed): it sends nothing more
        # The request being read.
        self._phase = _IDLE
        self._moved = False  # a read moved a request on (see data_received)
        self._stalled = 0  # bytes read in a row that moved no request on
        self._head_size = 0
        self._url = b""
        self._fields: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._ex: Exchange | None = None
        self._match: Any = None
        self._keep_alive = True
        self._http10 = False  # the request being read is HTTP/1.0
        self._answering: _Queued | None = None  # the request _next is answering
        self._wire = self._wire_fields  # bound once: handed to the core per request
        self._on_pooled = self._answered
        self._continue = False  # `100 Continue` owed once the request is the one answered
        self._upgrade: tuple[int, bool] | None = None  # an upgrade's body framing
        self._resync: tuple[Exchange, Any] | None = None
        self._resyncing = False
        self._started = 0.0  # when the request being read began; 0: none yet

    # -- the connection ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._peer = peer_of(transport)
        self._flow = Flow(self._transport)
        self.settings.connections.add(self)
        self._idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.settings.connections.discard(self)
        self._transport = None
        self.deadline = 0.0
        ex = self._ex
        if self._phase != _IDLE and ex is not None:  # gone in the middle of its request
            ex.route = ex.route or UNMATCHED
            self.edge.gone(ex, self._started, peer=self._peer)
        task = self._task
        if task is not None:
            # The client went away while its answer was being made: cancelling it sets
            # the plugin call's cancel word (the runner's cancellation path).
            task.cancel()
        for queued in self._queue:
            if queued.match is not RELAY:
                self.edge.gone(queued.ex, queued.started, peer=self._peer)
        self._queue.clear()

    def eof_received(self) -> bool:
        """The client sends nothing more (it half-closed, or closed).

        The requests it sent whole are still answered, for EOF_GRACE_S: a client that
        only half-closed reads them. What is still waiting then is cancelled, as for a
        client that went away (its calls' cancel words are set, 499).
        """
        if self._lingering or self._phase != _IDLE or not (self._queue or self._task):
            return False  # nothing owed (or a request cut short): close now
        self._closing = self._broken = self._eof = True
        self.deadline = time.monotonic() + EOF_GRACE_S
        return True

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            self._lingering += len(data)
            if self._lingering > LINGER_BYTES:
                self.abort()
            return
        if self._broken:
            return
        self._moved = False
        try:  # _feed, inlined: the hot path
            self._parser.feed_data(data)
        except _PARSER_STOPS as e:  # a refusal, a stop, an upgrade, bad bytes
            stop: Exception | None = e
        else:
            stop = None
        if stop is not None:  # handled outside the except block: see _stopped
            self._stopped(stop, data)
        if self._broken or self._phase == _IDLE or self._moved:
            self._stalled = 0
            return
        # Bytes that moved no request on: a head still being read, a trailer, a chunk
        # extension. httptools keeps them out of sight until they end, so they are
        # counted here, per read, never after a field ends.
        self._stalled += len(data)
        if self._stalled > MAX_HEAD:
            self._refuse(431)

    def _feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except _PARSER_STOPS as e:
            stop: Exception | None = e
        else:
            stop = None
        if stop is not None:
            self._stopped(stop, data)

    def _stopped(self, e: Exception, data: bytes) -> None:
        """What the parser's stop in `data` means: an upgrade, a refusal or stop raised
        by a callback (the exception's __context__), or bytes that are not HTTP.

        Called outside the except block that caught `e`: an upgrade feeds the parser
        again, and an exception raised while another is handled would take that one
        as its __context__, not the callback's.
        """
        if isinstance(e, httptools.HttpParserUpgrade):
            self._after_upgrade(data[e.args[0] :])
            return
        if isinstance(e, httptools.HttpParserCallbackError):
            cause = e.__context__
            if isinstance(cause, _Refused):
                self._refuse(cause.status)
            elif isinstance(cause, _Stop):
                self._broken = True
            else:
                raise e
            return
        if self._closing:
            # Bytes behind a request that closes the connection (llhttp's "data after
            # Connection: close"): never read, never answered.
            self._broken = True
            return
        log.info("bad_request", reason=type(e).__name__, engine="lane")
        self._refuse(400)

    def pause_writing(self) -> None:
        """The client reads slower than we answer: stop reading, start no answer."""
        assert self._flow is not None
        self._flow.stop(WRITE_FULL)
        # A client that reads nothing at all is not waited for forever.
        self.deadline = time.monotonic() + self.settings.body_timeout

    def resume_writing(self) -> None:
        """The client caught up."""
        if self._flow is not None:
            self._flow.go(WRITE_FULL)
            if self._phase == _IDLE and not self._lingering:
                self.deadline = 0.0
            self._next()

    def timed_out(self) -> None:
        """The sweep found this connection past its deadline."""
        self.deadline = 0.0
        flow = self._flow
        if self._lingering or self._eof or (flow is not None and not flow.writable):
            self.abort()
        elif self._phase != _IDLE:
            log.info("request_timeout", engine="lane")
            self._refuse(408)
        elif self._task is None and not self._queue:
            self.abort()  # idle past the keep-alive timeout

    def drain(self) -> None:
        """The server is stopping: close after the answers owed; soon, if idle.

        An idle connection (nothing read yet, or between keep-alive requests) gets
        FRESH_GRACE_S for a request its client has already sent, which is then answered
        with `Connection: close`: closing it at once would reset that request, and a
        client cannot tell a reset POST from one that ran.
        """
        if self._phase != _IDLE or self._task is not None or self._queue:
            self._closing = True
        elif not self._lingering:
            self.deadline = min(self.deadline or math.inf, time.monotonic() + FRESH_GRACE_S)

    def abort(self) -> None:
        """Closes the connection now."""
        transport = self._transport
        if transport is not None:
            transport.close()

    # -- the parser's callbacks ----------------------------------------------------

    def on_message_begin(self) -> None:
        if self._resyncing:
            return
        if self._closing:  # pipelined after a request that closes: never read
            raise _Stop
        self._phase = _HEAD
        self._head_size = 0
        self._url = b""
        self._fields = []
        self._body = []
        self._body_size = 0
        self._continue = False
        self._upgrade = None
        self._started = time.perf_counter()
        self.deadline = time.monotonic() + self.settings.header_timeout

    def on_url(self, url: bytes) -> None:
        if self._resyncing:
            return
        self._url += url
        if len(self._url) > MAX_LINE:
            raise _Refused(431)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._resyncing:
            return
        name_size = len(name)
        value_size = len(value)
        head_size = self._head_size = self._head_size + name_size + value_size + 4
        if self._phase == _BODY:
            # A trailer field (RFC 9110 6.5): never merged into the head; counted.
            if head_size > MAX_HEAD:
                raise _Refused(431)
            return
        fields = self._fields
        if (
            name_size > MAX_FIELD
            or value_size > MAX_FIELD
            or head_size > MAX_HEAD
            or len(fields) >= MAX_FIELDS
        ):
            raise _Refused(431)
        # Trailing whitespace is not part of a value (RFC 9112 5); the bytes are kept
        # losslessly (surrogateescape), as aiohttp would decode them.
        fields.append(
            (
                name.decode("latin-1").lower(),
                value.rstrip(b" \t").decode("utf-8", "surrogateescape"),
            )
        )

    def on_headers_complete(self) -> None:
        self._moved = True
        settings = self.settings
        if self._resyncing:  # the stand-in head of an upgrade's body: the request goes on
            self._resyncing = False
            assert self._resync is not None
            self._ex, self._match = self._resync
            self._resync = None
            self._phase = _BODY
            self.deadline = time.monotonic() + settings.body_timeout
            return
        parser = self._parser
        version = parser.get_http_version()
        self._http10 = version == "1.0"
        method = parser.get_method().decode("ascii", "replace")
        url = self._url
        fields = self._fields
        refused, declared, chunked, request_id, expect = read_head(version, method, url, fields)
        if refused:
            raise _Refused(refused)
        try:
            path, query = split_target(url)
        except BadTarget as e:
            raise _Refused(400) from e
        if expect is not None:  # the edge answers Expect itself: no plugin sees it
            fields = [field for field in fields if field[0] != "expect"]
        ex = self._ex = Exchange(
            method, path, query, tuple(fields), b"", self.edge.request_id(request_id)
        )
        if settings.relay_all or is_operations_path(path):
            self._match = RELAY
        else:
            self._match = route(settings.host, ex)
        if declared > self.edge.max_body:
            raise _Refused(413)
        self._keep_alive = parser.should_keep_alive()
        if parser.should_upgrade() and (declared or chunked):
            self._upgrade = (declared, chunked)
        self._phase = _BODY
        if declared or chunked:
            self.deadline = time.monotonic() + settings.body_timeout
            if expect == "100-continue" and version == "1.1":
                if self._task is None and not self._queue:
                    self._write_raw(CONTINUE)
                else:
                    self._continue = True  # once the answers before it are out
        else:
            self.deadline = 0.0

    def on_body(self, body: bytes) -> None:
        self._moved = True
        self._body_size += len(body)
        if self._body_size > self.edge.max_body:
            raise _Refused(413)
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._moved = True
        ex = self._ex
        assert ex is not None
        if self._upgrade is not None:
            # llhttp stops at an upgrade's head and would take its body for the next
            # request: the body is read by its framing instead (_after_upgrade).
            self._resync = (ex, self._match)
            return
        self._phase = _IDLE
        self.deadline = 0.0
        self._ex = None
        body = self._body
        if body:
            ex.body = body[0] if len(body) == 1 else b"".join(body)
        match, self._match = self._match, None
        # From SIGTERM on (the host drains before the listener does), every answer says
        # `Connection: close`, so clients move to another server between requests.
        settings = self.settings
        keep_alive = self._keep_alive and not (settings.draining or settings.host.draining)
        if not keep_alive:
            self._closing = True
        size = len(ex.body) + self._head_size
        http10 = keep_alive and self._http10
        queued = _Queued(ex, match, keep_alive, self._started, size, http10)
        if match is RELAY:
            version = "1.0" if self._http10 else "1.1"
            queued.relayed = relayed_request(ex.method, self._url, version, ex.headers, ex.body)
        queue = self._queue
        queue.append(queued)
        self._queued_bytes += size
        if self._task is None and len(queue) == 1:
            self._next()
        elif len(queue) >= MAX_QUEUED or self._queued_bytes >= QUEUE_BYTES:
            assert self._flow is not None
            self._flow.stop(QUEUE_FULL)

    def _after_upgrade(self, rest: bytes) -> None:
        """llhttp stopped at an upgrade nobody here takes: the connection goes on as HTTP.

        A fresh parser reads on. When the upgrade had a body, the parser is first given
        a stand-in head with the same framing (and its callbacks are skipped), so the
        body is read as the body it is, never as a request of its own.
        """
        self._parser = httptools.HttpRequestParser(self)
        if self._resync is None:
            if rest:
                self._feed(rest)
            return
        declared, chunked = self._upgrade or (0, False)
        self._upgrade = None
        framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % declared
        self._resyncing = True
        self._feed(b"PUT / HTTP/1.1\r\n%s\r\n\r\n%s" % (framing, rest))

    # -- answering -----------------------------------------------------------------

    def _next(self) -> None:
        """Answers queued requests in order, each at once unless it has to wait."""
        flow = self._flow
        settings = self.settings
        host = settings.host
        while self._queue and self._task is None and self._transport is not None:
            if flow is not None and flow.reasons & WRITE_FULL:
                return  # resume_writing goes on
            queued = self._queue[0]
            match = queued.match
            if match is RELAY:
                self._task = Relaying(
                    self.settings.relay_protocol,
                    self._transport,
                    queued.relayed,
                    partial(self._relayed, queued),
                    head_only=queued.head,
                )
                return
            if isinstance(match, Response):
                self._queue.popleft()
                self._write(queued, match)
                continue
            made: Any
            if tracing.TRACER is not None:
                made = traced(self.edge, queued.ex, match, self._peer)
            else:
                self._answering = queued
                try:
                    made = answer(host, queued.ex, match, self._wire, self._on_pooled)
                except Exception:
                    made = self.edge.failed(queued.ex, engine="lane")
                kind = type(made)
                if kind is Response:
                    self._queue.popleft()
                    self._write(queued, made)
                    continue
                if kind is Wire:
                    self._queue.popleft()
                    self._write_wire(queued, made)
                    continue
                if kind is PooledCall:  # on the plugin's threads: _answered goes on
                    self._task = made
                    return
            try:
                waiting = made.send(None)
            except StopIteration as done:
                self._queue.popleft()
                self._write(queued, done.value)
                continue
            except Exception:
                self._queue.popleft()
                self._write(queued, self.edge.failed(queued.ex, engine="lane"))
                continue
            self._task = Waiting(
                made,
                waiting,
                partial(self._finished, queued),
                self.edge,
                queued.ex,
            )
            return
        if self._transport is None or self._task is not None:
            return
        queue = self._queue
        if (
            flow is not None
            and flow.reasons & QUEUE_FULL
            and len(queue) < MAX_QUEUED
            and self._queued_bytes < QUEUE_BYTES
        ):
            flow.go(QUEUE_FULL)
        if queue:
            return
        if self._phase == _BODY and self._continue:
            self._continue = False
            self._write_raw(CONTINUE)
        if self._phase == _IDLE:
            if self._closing:
                self._linger()
            else:
                self._idle()

    def _wire_fields(self) -> tuple[bytes, bytes, bytes, bool]:
        """What the compiled step renders the answer being made with (answer.WireFields):
        the answer's own fields as they will be when it is written now."""
        queued = self._answering
        assert queued is not None
        block, _ = self.edge.global_block()
        connection = self._connection_for(queued, len(self._queue) - 1)
        return self.settings.date, block, connection, queued.head

    def _answered(self, made: Response | None) -> None:
        """A pooled call's answer (None: cancelled), for the request at the queue's head.

        The head is the request whose answer is being made while `_task` is set:
        nothing else is taken off the queue until it is done.
        """
        self._finished(self._queue[0], made)

    def _finished(self, queued: _Queued, made: Response | None) -> None:
        """The answer a `Waiting` waited for (None: nobody to give it to any more)."""
        self._task = None
        if self._queue and self._queue[0] is queued:
            self._queue.popleft()
        if made is None:
            self._queued_bytes -= queued.size
            self.edge.gone(queued.ex, queued.started, peer=self._peer)
            return
        self._write(queued, made)
        self._next()

    def _relayed(self, queued: _Queued, raw: bytes) -> None:
        """aiohttp's answer to a relayed request (it recorded the request itself)."""
        self._task = None
        if self._queue and self._queue[0] is queued:
            self._queue.popleft()
        self._queued_bytes -= queued.size
        if self._transport is None:
            return
        out = relayed_answer(raw, self._connection_field(queued), queued.head)
        if out is None:  # aiohttp gave no answer: ours, and the connection ends
            log.error("relay_failed", request_id=queued.ex.request_id, path=queued.ex.path[:512])
            self._closing = True
            answer500 = self.edge.refused(500, queued.ex.request_id)
            self._write(_Queued(queued.ex, None, False, queued.started), answer500)
        else:
            self._write_raw(out)
        self._next()

    def _connection_field(self, queued: _Queued) -> bytes:
        """The Connection field of `queued`'s answer: close on the last answer only."""
        if queued.keep_alive and not (self._closing or queued.http10 or self._host_draining()):
            return b""  # the common answer, said fast
        field = self._connection_for(queued, len(self._queue))
        if field is CLOSE:
            self._closing = True
        return field

    def _host_draining(self) -> bool:
        """Whether the server is stopping (from SIGTERM on: every answer closes)."""
        return self.settings.host.draining

    def _connection_for(self, queued: _Queued, behind: int) -> bytes:
        """`_connection_field` with `behind` requests queued after `queued`; changes nothing.

        From SIGTERM on (the host drains before the listener does) every answer closes.
        """
        last = self._closing and not behind and self._phase == _IDLE
        if not queued.keep_alive or last or self.settings.host.draining:
            return CLOSE
        return KEEP_ALIVE if queued.http10 else b""

    def _write_wire(self, queued: _Queued, made: Wire) -> None:
        """Writes an answer the compiled step rendered (with `_wire_fields`)."""
        self._queued_bytes -= queued.size
        self._connection_field(queued)  # as rendered: nothing has changed since
        transport = self._transport
        assert transport is not None  # _next answers only while connected
        data = made.data
        transport.write(data)
        sent = 0 if queued.head else len(data) - data.find(b"\r\n\r\n") - 4
        self.edge.record(queued.ex, made.status, queued.started, self._peer, sent)

    def _write(self, queued: _Queued, made: Response) -> None:
        self._queued_bytes -= queued.size
        transport = self._transport
        if transport is None:
            self.edge.gone(queued.ex, queued.started, peer=self._peer)
            return
        ex = queued.ex
        block, names = self.edge.global_block()
        headers = self.settings.host.config.global_headers if made.headers else None
        connection = self._connection_field(queued)
        transport.write(
            render(
                made,
                ex.request_id.encode(),
                self.settings.date,
                block,
                names,
                headers,
                connection,
                queued.head,
            )
        )
        sent = 0 if queued.head or made.status in EMPTY_BODY_STATUSES else len(made.body)
        self.edge.record(ex, made.status, queued.started, self._peer, sent)

    def _write_raw(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    def _refuse(self, status: int) -> None:
        """Answers a request that cannot be read with `status`, after the ones before it,
        then closes the connection lingering."""
        if self._lingering or self._transport is None:
            return  # the last answer is out already: nothing more is written
        self._broken = self._closing = True
        self._phase = _IDLE
        self._resyncing = False
        self.deadline = 0.0
        if self._flow is not None:
            self._flow.stop(REFUSED)
        ex = self._ex or Exchange("", "", "", (), b"", self.edge.request_id(None))
        self._ex = None
        ex.route = UNMATCHED
        queued = _Queued(
            ex,
            self.edge.refused(status, ex.request_id),
            keep_alive=False,
            started=self._started or time.perf_counter(),
        )
        self._queue.append(queued)
        if self._task is None and len(self._queue) == 1:
            self._next()

    def _linger(self) -> None:
        """The last answer is out: half-close, discard what the client still sends, close.

        Closing with unread bytes would make the kernel send a reset, and a client that
        is still sending would lose the answer it has not read yet.
        """
        transport = self._transport
        if transport is None or self._lingering:
            return
        if self._eof:  # the client sends nothing more: nothing to linger for
            transport.close()
            return
        self._lingering = 1
        self.deadline = time.monotonic() + LINGER_S
        if not transport.can_write_eof():
            transport.close()
            return
        try:
            transport.write_eof()
        except OSError:  # the client is gone already
            transport.close()
            return
        if self._flow is not None:
            self._flow.reasons = 0
        transport.resume_reading()

    def _idle(self) -> None:
        self.deadline = time.monotonic() + self.settings.keepalive_timeout
