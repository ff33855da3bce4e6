"""The inline watchdog: a thread that notices when an inline call holds the event loop.

An inline call runs on the event-loop thread, so a plugin that declares
BW_FLAG_NONBLOCKING and then blocks (waits on a socket, sleeps) stops every request
of the server while it does, and the runner's own judgement (on CPU time, after the
call) comes only when it returns: maybe never. The watchdog looks every
POLL_S from a thread of its own (cffi releases the GIL during native calls, so it
runs while the loop is held) at the inline call in progress, if any:

- blocked in the kernel (its thread sleeping, not running or runnable) for longer
  than the inline budget: the plugin lied about not blocking;
- or on the loop, in any state, for longer than STALL_S: nothing excuses that.

Either way it logs the culprit and demotes it to its pool for good; the call in
progress can only be waited for (native code cannot be stopped from outside), but
no later call of that plugin runs on the loop. Costs the hot path one reference
assignment before and after each inline call. `held_inline_call` tells the stall
guard (server/stall.py) which call holds the loop, when it must end the process.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import structlog

log = structlog.get_logger("backworks.watchdog")

POLL_S = 0.01
STALL_S = 0.5  # on the loop this long, whatever the thread is doing: a culprit


class Demotable(Protocol):
    """What the watchdog needs of a runner."""

    name: str

    def demote(self, reason: str, held_s: float) -> None:
        """Moves the plugin's calls off the event loop, for good."""


class InlineWatchdog:
    """One per process, for the event-loop thread that makes inline calls."""

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        # (runner, start, function, request) of the inline call in progress, or None.
        # Written by the loop thread, read by the watchdog: one reference, so it is
        # always one call's tuple.
        self.current: tuple[Demotable, float, Any, Any] | None = None
        self._loop_thread = threading.get_native_id()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="inline-watchdog", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stops watching (the thread ends within POLL_S)."""
        self._stop.set()

    def _watch(self) -> None:
        judged: object = None
        while not self._stop.wait(POLL_S):
            current = self.current
            if current is None or current is judged:
                continue
            runner, started, _, _ = current
            held = time.perf_counter() - started
            if held <= self.budget_s:
                continue
            blocked = _blocked(self._loop_thread)
            if held > STALL_S or blocked:
                judged = current
                why = (
                    "blocked in an inline call (it declared BW_FLAG_NONBLOCKING)"
                    if blocked
                    else "held the event loop in an inline call"
                )
                log.error("plugin_holds_event_loop", plugin=runner.name, held_ms=round(held * 1000))
                runner.demote(why, held)


def _blocked(tid: int) -> bool:
    """Whether thread `tid` of this process sleeps in the kernel (Linux; else False)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        stat = Path(f"/proc/self/task/{tid}/stat").read_bytes()
    except OSError:
        return False
    # The state follows the command name, which is in parentheses and may hold spaces.
    return stat.rpartition(b")")[2][1:2] in (b"S", b"D")


class HeldCall(NamedTuple):
    """The inline call holding the event loop: whose, which, for which request."""

    plugin: str
    call: str
    request_id: str
    held_s: float


def held_inline_call() -> HeldCall | None:
    """The inline call in progress, if any (from any thread)."""
    watchdog = _watchdog
    current = watchdog.current if watchdog is not None else None
    if current is None:
        return None
    runner, started, fn, request = current
    return HeldCall(
        runner.name,
        getattr(fn, "__name__", "call"),
        getattr(request, "request_id", ""),
        time.perf_counter() - started,
    )


_watchdog: InlineWatchdog | None = None
_lock = threading.Lock()


def inline_watchdog(budget_s: float) -> InlineWatchdog:
    """The process's watchdog, started on first use (from the event-loop thread)."""
    global _watchdog
    with _lock:
        if _watchdog is None:
            _watchdog = InlineWatchdog(budget_s)
        return _watchdog
