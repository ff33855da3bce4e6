"""Every rule at the border between a client and the request core, written once.

Both engines call the one `Edge` of a server: the lane (lane/) for what it reads off
the socket, and aiohttp's middleware (aio/) for the operations routes and for an app
that embeds Backworks. What lives here and nowhere else:

- the limits of a request's head (each line and field, the field count, the whole
  head) and of its body, and the verdict on a head once it is read (`refusal`): the
  Host rule, single-valued fields, the request target, the version, `Expect`, CONNECT;
- the request id (the client's when it is plain, else ours);
- the config's global headers, added to every answer;
- a request's span (tracing.py) and its record (access log, metrics, dashboard:
  record.py), 499 for a client that went away;
- an exception no layer below expected: logged with its traceback, answered 500.

The framing itself (reading bytes as they arrive, backpressure, pipelining, lingering
close) is the lane's: it is the only engine that reads bytes from clients. aiohttp
never sees a request the lane has not read whole and checked here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from backworks import tracing
from backworks.abi import Response
from backworks.http.exchange import Exchange
from backworks.http.record import CLIENT_GONE, Recorder
from backworks.http.reply import error_reply
from backworks.http.traffic import UNMATCHED
from backworks.lifecycle.host import Host

log = structlog.get_logger("backworks.server")

# Limits on a request's head: a longer request line or field, more fields, or a head
# larger than MAX_HEAD in all is refused with 431 as its bytes arrive.
MAX_LINE = 8190
MAX_FIELD = 8190
MAX_FIELDS = 128
MAX_HEAD = 64 * 1024

# Fields a request may carry once (as aiohttp's parser holds them): two of them are
# two opinions, and a front that reads the other one is desynchronised from us. Two
# Transfer-Encoding fields are refused for that reason, whatever their values.
SINGLE_VALUED = frozenset(
    {
        "authorization",
        "content-length",
        "content-location",
        "content-range",
        "content-type",
        "etag",
        "host",
        "max-forwards",
        "server",
        "transfer-encoding",
        "user-agent",
    }
)

VERSIONS = frozenset({"1.0", "1.1"})


# What the edge read in a request head (see `read_head`): the status the request is
# refused with (0: it may be answered), the declared body size, whether a
# Transfer-Encoding frames the body, the client's X-Request-Id as sent, and the Expect
# field (lower-case) when there is one. A plain tuple: this is made once per request.
Head = tuple[int, int, bool, str | None, str | None]


def read_head(version: str, method: str, target: bytes, fields: Sequence[tuple[str, str]]) -> Head:
    """The verdict on a request head, and the few fields the edge acts on, in one pass.

    `fields`: the head's (lower-case name, value) pairs, trailing whitespace stripped;
    llhttp has checked that a Content-Length is a number. The refusal, when there is
    one: 505 for a version other than 1.0 and 1.1; 501 for CONNECT (a tunnel: nothing
    here takes one, and its bytes are no request); 400 for a fragment in the target
    (RFC 9112 3.2), `*` with a method other than OPTIONS, a single-valued field given
    twice, or an HTTP/1.1 head without exactly one Host; 417 for an HTTP/1.1 `Expect`
    other than 100-continue.
    """
    status = 0
    if version not in VERSIONS:
        status = 505
    elif method == "CONNECT":
        status = 501
    elif b"#" in target or (target == b"*" and method != "OPTIONS"):
        status = 400
    seen: set[str] = set()
    declared = 0
    chunked = False
    request_id = expect = None
    for name, value in fields:
        if name in SINGLE_VALUED:
            if name in seen:
                status = status or 400
            seen.add(name)
            if name == "content-length":
                declared = int(value)
            elif name == "transfer-encoding":
                chunked = True
        elif name == "x-request-id":
            request_id = value
        elif name == "expect":
            expect = value.lower()
    if version == "1.1" and not status:
        if "host" not in seen:
            status = 400
        elif expect is not None and expect != "100-continue":
            status = 417
    return status, declared, chunked, request_id, expect


class Edge:
    """The rules above, for one server (see the module's doc)."""

    def __init__(self, host: Host, recorder: Recorder) -> None:
        self.host = host
        self.recorder = recorder
        self._globals: tuple[object, bytes, frozenset[str]] = (None, b"", frozenset())

    @property
    def max_body(self) -> int:
        """The body limit; read at start (a reload cannot change it)."""
        return self.host.config.server.max_body_bytes

    def request_id(self, incoming: str | None) -> str:
        """The client's X-Request-Id when it is plain, else a new one."""
        return self.recorder.request_id(incoming)

    def global_headers(self) -> Mapping[str, str]:
        """The config's global headers, as of now (a reload replaces them)."""
        return self.host.config.global_headers

    def global_block(self) -> tuple[bytes, frozenset[str]]:
        """The global headers as wire bytes, and their lower-case names.

        Rebuilt only when a config reload replaced them.
        """
        current = self.host.config.global_headers
        cached, block, names = self._globals
        if cached is not current:
            block = b"".join(f"{k}: {v}\r\n".encode() for k, v in current.items())
            names = frozenset(k.lower() for k in current)
            self._globals = (current, block, names)
        return block, names

    def refused(self, status: int, request_id: str) -> Response:
        """The envelope of a request refused at the edge (400, 408, 413, 431, ...)."""
        return error_reply(status, request_id)

    def failed(self, ex: Exchange, **context: Any) -> Response:
        """An exception nobody below expected: logged with its traceback, answered 500.

        Call from an `except` block.
        """
        log.exception("request_failed", request_id=ex.request_id, path=ex.path[:512], **context)
        return error_reply(500, ex.request_id)

    def client(self, ex: Exchange, peer: str | None) -> str | None:
        """The client's address: the peer, or whom a trusted proxy names (forwarded.py)."""
        forwarded = ", ".join(v for n, v in ex.headers if n == "x-forwarded-for") or None
        return self.recorder.client.resolve(peer, forwarded)

    def span(self, ex: Exchange, peer: str | None = None, scheme: str = "http") -> Any:
        """The request's span when tracing is on (tracing.py), else None.

        Its ids are noted on `ex` for the access log.
        """
        if tracing.TRACER is None:
            return None
        span = tracing.request_started(
            ex.method,
            ex.path,
            dict(ex.headers),
            client_address=self.client(ex, peer),
            scheme=scheme,
        )
        ex.trace = tracing.ids(span)
        return span

    def record(
        self,
        ex: Exchange,
        status: int,
        started: float,
        peer: str | None = None,
        bytes_out: int = 0,
        *,
        bytes_in: int | None = None,
        span: Any = None,
    ) -> None:
        """What an answered request leaves: its record, and the end of its span.

        `status` CLIENT_GONE (499): its client went away before the answer was written.
        `bytes_in`: the body's size, when `ex.body` does not hold it.
        """
        route = ex.route or UNMATCHED
        recorder = self.recorder
        if not recorder.logging:  # the common case in production: counts only
            recorder.traffic.record(
                ex.method,
                route,
                ex.path,
                status,
                time.perf_counter() - started,
                ex.plugin,
                ex.request_id,
            )
            if span is not None:
                tracing.request_finished(span, status, ex.request_id, route)
            return
        recorder.answered(
            ex.method,
            ex.path,
            route,
            status,
            time.perf_counter() - started,
            ex.plugin,
            ex.request_id,
            peer,
            ex.headers,
            len(ex.body) if bytes_in is None else bytes_in,
            bytes_out,
            ex.trace,
        )
        if span is not None:
            tracing.request_finished(span, status, ex.request_id, route)

    def gone(
        self, ex: Exchange, started: float, *, peer: str | None = None, span: Any = None
    ) -> None:
        """The client went away before its answer: recorded as 499."""
        self.record(ex, CLIENT_GONE, started, peer=peer, span=span)
