"""The stall bound: a serving process whose event loop is held too long ends itself.

An in-process plugin flagged BW_FLAG_NONBLOCKING runs on the event-loop thread. If
its call never returns, the inline watchdog (runtime/watchdog.py) can demote the
plugin, but the call in progress still holds the loop: no request is answered, and a
Python signal handler never runs, since it waits for the loop's thread. A process in
that state is worse than a dead one: systemd or Kubernetes would restart a dead one.

So a thread of its own watches the loop turn (a beat every BEAT_S) and:

- when the loop has not turned for `server.stall_timeout_ms`, writes one log line
  (`server_stalled`, naming the plugin and the call holding it, when an inline call
  does) and ends the process with EXIT_STALLED;
- when a stop signal (SIGTERM, SIGINT, SIGQUIT) came and the loop has not turned for
  STOP_HELD_S since, writes `server_stopped_while_held` the same way and ends the
  process with EXIT_STOPPED_WHILE_HELD: the signal always ends the process.

How it learns of a signal while the loop's thread is stuck: the interpreter's C-level
handler runs on whatever thread the kernel picks and writes the signal's number to
the wakeup fd. The guard takes the wakeup fd over (after the loop installed its signal
handlers, which set theirs) and relays every byte to the loop's own fd, noting stop
signals on the way; the loop sees its signals as before.

A worker process of an isolated plugin dies with the host (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import threading
import time

import structlog

from backworks.runtime.watchdog import held_inline_call

log = structlog.get_logger("backworks.server")

EXIT_STALLED = 70  # EX_SOFTWARE: the loop was held past server.stall_timeout_ms
EXIT_STOPPED_WHILE_HELD = 143  # 128 + SIGTERM: stopped without a drain, the loop was held
BEAT_S = 0.05
POLL_S = 0.05
STOP_HELD_S = 1.0  # a stop signal, and no loop turn for this long since: end at once
_STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})


class StallGuard:
    """Watches one event loop from a thread (see the module's doc); made on the loop."""

    def __init__(self, timeout_ms: int) -> None:
        self.timeout_s = timeout_ms / 1000  # 0: no stall bound, only the signal rule
        self._loop = asyncio.get_running_loop()
        self._beat = time.monotonic()
        self._stop_at: float | None = None
        self._closed = threading.Event()
        self._timer = self._loop.call_later(BEAT_S, self._on_beat)
        self._relay_in, relay_out = socket.socketpair()
        relay_out.setblocking(False)
        self._relay_out = relay_out
        # The main thread only (set_wakeup_fd's rule): the loop runs there.
        self._loop_fd = signal.set_wakeup_fd(relay_out.fileno(), warn_on_full_buffer=False)
        threading.Thread(target=self._relay, name="stall-signals", daemon=True).start()
        threading.Thread(target=self._watch, name="stall-watchdog", daemon=True).start()

    def close(self) -> None:
        """Stops watching and gives the wakeup fd back to the loop (on the main thread)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._timer.cancel()
        with contextlib.suppress(ValueError):  # not the main thread: nothing to restore
            signal.set_wakeup_fd(self._loop_fd)
        with contextlib.suppress(OSError):
            self._relay_out.shutdown(socket.SHUT_RDWR)
        self._relay_out.close()

    def _on_beat(self) -> None:
        self._beat = time.monotonic()
        if not self._closed.is_set():
            self._timer = self._loop.call_later(BEAT_S, self._on_beat)

    def _relay(self) -> None:
        sock = self._relay_in
        with sock:
            while True:
                try:
                    data = sock.recv(64)
                except OSError:
                    return
                if not data:
                    return
                if self._stop_at is None and any(b in _STOP_SIGNALS for b in data):
                    self._stop_at = time.monotonic()
                if self._loop_fd >= 0:
                    with contextlib.suppress(OSError):  # full: the loop has signals to read
                        os.write(self._loop_fd, data)

    def _watch(self) -> None:
        while not self._closed.wait(POLL_S):
            now = time.monotonic()
            held = now - self._beat
            if self.timeout_s and held > self.timeout_s:
                self._end("server_stalled", EXIT_STALLED, held)
            stop_at = self._stop_at
            if stop_at is not None and self._beat < stop_at and now - stop_at > STOP_HELD_S:
                self._end("server_stopped_while_held", EXIT_STOPPED_WHILE_HELD, held)

    def _end(self, event: str, status: int, held_s: float) -> None:
        """One line naming the culprit, flushed; then the process ends without cleanup."""
        held = held_inline_call()
        log.critical(
            event,
            plugin=held.plugin if held else None,
            call=held.call if held else None,
            request_id=held.request_id if held else None,
            held_ms=round(held_s * 1000),
            stall_timeout_ms=round(self.timeout_s * 1000),
            exit_status=status,
            reason=(
                "the event loop was held past server.stall_timeout_ms"
                if status == EXIT_STALLED
                else "a stop signal came while the event loop was held"
            ),
        )
        for stream in (sys.stderr, sys.stdout):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(status)
