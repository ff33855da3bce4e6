"""What every answered request leaves behind, whichever engine answered it.

A request id (the client's X-Request-Id when it is short and plain, else a random
per-app prefix and a counter), one access-log line, and its entry in the Traffic
record that /metrics and the dashboard read. The access log names the route pattern,
the client (forwarded.py: X-Forwarded-For only from a trusted proxy), its user agent,
the bytes in and out, and the trace and span ids when tracing is on. Both HTTP
engines call `Recorder`, so a request is counted and logged the same way on the lane
and on aiohttp.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
from collections.abc import Iterable

import structlog

from backworks.http.forwarded import ClientAddress
from backworks.http.traffic import Answered, Traffic

access_log = structlog.get_logger("backworks.access")

# An incoming X-Request-Id is kept only when it is short and plain, so that log lines
# and plugins never receive an attacker's control characters.
_GOOD_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

# Answers to clients that went away before their answer was written (nginx's 499).
CLIENT_GONE = 499

# What an access-log line is made of, kept until the loop turn's flush: method, path,
# route, status, seconds, plugin, request id, peer, headers, bytes in, bytes out, trace.
_Line = tuple[
    str, str, str, int, float, str | None, str, str | None, Iterable[tuple[str, str]], int, int,
    tuple[str, str] | None,
]  # fmt: skip


class Recorder:
    """Hands out request ids and records each answered request (see the module doc)."""

    def __init__(self, traffic: Traffic, trusted_proxies: Iterable[str] = ()) -> None:
        self.traffic = traffic
        self.client = ClientAddress(trusted_proxies)
        # Asked once: logging is configured before the app is made and only a restart
        # changes it; asking structlog per request costs more than the record itself.
        self._log_access = access_log.bind().is_enabled_for(logging.INFO)
        self.logging = self._log_access  # whether `answered` writes a line (else: counts)
        # Unique across processes and restarts without a uuid4 per request: a random
        # prefix per app (each server process builds its own) and a counter.
        self._prefix = secrets.token_hex(6)
        self._counter = itertools.count(1)
        # The access-log lines of this loop turn, written when the turn's requests are
        # counted (Traffic.flush).
        self._lines: list[_Line] = []
        if self._log_access:
            traffic.on_flush = self._log_lines

    def request_id(self, incoming: str | None) -> str:
        """The client's id when it is plain, else a new one."""
        if incoming and _GOOD_REQUEST_ID.fullmatch(incoming):
            return incoming
        return f"{self._prefix}{next(self._counter):010x}"

    def answered(
        self,
        method: str,
        path: str,
        route: str,
        status: int,
        seconds: float,
        plugin: str | None,
        request_id: str,
        peer: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        bytes_in: int = 0,
        bytes_out: int = 0,
        trace: tuple[str, str] | None = None,
    ) -> None:
        """The traffic record, and one access-log line (when the level lets it through),
        both written when this loop turn ends (traffic.py).

        `headers`: (lower-case name, value) pairs; only user-agent and x-forwarded-for
        are read, and only when the line is written. `trace`: (trace id, span id).
        """
        if self._log_access:
            self._lines.append(
                (method, path, route, status, seconds, plugin, request_id, peer, headers,
                 bytes_in, bytes_out, trace)
            )  # fmt: skip
        self.traffic.record(method, route, path, status, seconds, plugin, request_id)

    def _log_lines(self, _: list[Answered]) -> None:
        """One access-log line per request answered since the last flush."""
        lines, self._lines = self._lines, []
        for line in lines:
            method, path, route, status, seconds, plugin, request_id = line[:7]
            peer, headers, bytes_in, bytes_out, trace = line[7:]
            agent = forwarded = None
            for name, value in headers:
                if name == "user-agent":
                    agent = value
                elif name == "x-forwarded-for":
                    forwarded = value if forwarded is None else f"{forwarded}, {value}"
            fields = {
                "request_id": request_id,
                "method": method[:16],
                "path": path[:512],
                "route": route,
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
                "plugin": plugin,
                "client": self.client.resolve(peer, forwarded),
                "user_agent": agent[:256] if agent else None,
                "bytes_in": bytes_in,
                "bytes_out": bytes_out,
            }
            if trace is not None:
                fields["trace_id"], fields["span_id"] = trace
            access_log.info("request" if status != CLIENT_GONE else "client_gone", **fields)
