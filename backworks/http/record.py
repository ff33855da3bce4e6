"""What every answered request leaves behind, whichever engine answered it.

A request id (the client's X-Request-Id when it is short and plain, else a random
per-app prefix and a counter), one access-log line, and its entry in the Traffic
record that /metrics and the dashboard read. Both HTTP engines call `Recorder`, so a
request is counted and logged the same way on the lane and on aiohttp.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets

import structlog

from backworks.http.traffic import Answered, Traffic

access_log = structlog.get_logger("backworks.access")

# An incoming X-Request-Id is kept only when it is short and plain, so that log lines
# and plugins never receive an attacker's control characters.
_GOOD_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

# Answers to clients that went away before their answer was written (nginx's 499).
CLIENT_GONE = 499


class Recorder:
    """Hands out request ids and records each answered request (see the module doc)."""

    def __init__(self, traffic: Traffic) -> None:
        self.traffic = traffic
        # Asked once: logging is configured before the app is made and only a restart
        # changes it; asking structlog per request costs more than the record itself.
        self._log_access = access_log.bind().is_enabled_for(logging.INFO)
        # Unique across processes and restarts without a uuid4 per request: a random
        # prefix per app (each server process builds its own) and a counter.
        self._prefix = secrets.token_hex(6)
        self._counter = itertools.count(1)
        if self._log_access:
            traffic.on_flush = _log_lines

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
    ) -> None:
        """The traffic record, and one access-log line (when the level lets it through),
        both written when this loop turn ends (traffic.py)."""
        self.traffic.record(method, route, path, status, seconds, plugin, request_id)


def _log_lines(answered: list[Answered]) -> None:
    """One access-log line per answered request."""
    for method, _, path, status, seconds, plugin, request_id in answered:
        access_log.info(
            "request" if status != CLIENT_GONE else "client_gone",
            request_id=request_id,
            method=method[:16],
            path=path[:512],
            status=status,
            duration_ms=round(seconds * 1000, 3),
            plugin=plugin,
        )
