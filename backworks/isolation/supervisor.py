"""Worker supervision: each slot holds one worker process, spawned, watched, replaced.

The Supervisor owns the worker slots of one plugin: it spawns a worker into each,
sends it the INIT frame, learns when it is ready, respawns it after a death with
backoff (0.1 s doubling to 5 s, reset once a worker answers a call), stops it on
purpose (SIGTERM, then SIGKILL) and reaps it. It knows nothing of calls: it tells
the call side (backend.py) what happens through the `SlotEvents` protocol, and
hands it every frame that answers a call.

- A worker that dies 3 times in a row before becoming ready, or whose `init` fails,
  fails the plugin: nothing is respawned any more.
- `memory_limit_mb` is RLIMIT_AS in the worker on top of its baseline address space
  (see worker.limit_address_space). Going over it is not a signal of its own: the
  plugin's allocation fails and it crashes or aborts, or returns BW_FAIL. When a
  worker dies after its peak RSS (from the kernel, at reaping) grew by most of the
  limit, the exit text says it most likely ran out of memory. Memory reserved but
  never touched is not seen that way; the death is still reported by signal.

Everything here runs on the event-loop thread; no locks.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Protocol

import structlog

from backworks.abi import LogSink
from backworks.abi.hostlog import plugin_log_sink
from backworks.config import ProcessLimits
from backworks.errors import PluginInitError, PluginLoadError, reason_of
from backworks.isolation import framing as fr
from backworks.isolation.process import WorkerProcess

log = structlog.get_logger("backworks.isolation")

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0
START_ATTEMPTS = 3  # deaths in a row before ever becoming ready that fail the plugin
KILL_GRACE = 0.2  # SIGTERM, then SIGKILL after this
CLOSE_WAIT = 1.0  # close() waits this long in total for killed workers to be reaped
# A worker that died after its peak RSS grew by this share of memory_limit_mb most
# likely hit the limit (a failed allocation turned into a crash).
MEMORY_HINT_SHARE = 0.8

STARTING = "starting"
READY = "ready"
STOPPING = "stopping"
BACKOFF = "backoff"  # dead, waiting to be respawned
STOPPED = "stopped"
FAILED = "failed"


class Slot:
    """One worker position: the process running there now, and its history."""

    __slots__ = (
        "baseline_rss_kb",
        "crashes",
        "failures_in_a_row",
        "index",
        "last_exit",
        "log_sink",
        "proc",
        "restarts",
        "starts_failed",
        "state",
        "stop_reason",
        "timer",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: WorkerProcess | None = None
        self.state = STOPPED
        self.restarts = 0
        self.crashes = 0
        self.failures_in_a_row = 0  # crashes since a worker here last answered a call
        self.starts_failed = 0  # deaths in a row before READY
        self.last_exit: str | None = None
        self.stop_reason: str | None = None  # set when the host stops the worker
        self.timer: asyncio.TimerHandle | None = None
        self.baseline_rss_kb = 0
        self.log_sink: LogSink | None = None

    def cancel_timer(self) -> None:
        """Forgets a pending respawn or start deadline."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class SlotEvents(Protocol):
    """What the call side hears from the Supervisor."""

    def worker_ready(self, slot: Slot) -> None:
        """A worker in `slot` took its INIT and can take calls."""

    def worker_frame(self, slot: Slot, kind: int, call_id: int, body: bytes) -> None:
        """A frame about a call (RESPONSE, NONE, FAILED, CPU_EXCEEDED) from `slot`."""

    def worker_lost(self, slot: Slot, exit_text: str, stop_reason: str | None) -> int:
        """The worker in `slot` is gone; returns how many calls went with it.

        `stop_reason` is set when the host stopped it on purpose.
        """

    def plugin_failed(self, error: fr.StartError) -> None:
        """The plugin cannot be started: no calls any more, no respawns."""


class Supervisor:
    """The worker slots of one plugin (see the module's doc)."""

    def __init__(
        self,
        name: str,
        path: str,
        init_frame: bytes,
        limits: ProcessLimits,
        *,
        init_timeout: float,
        events: SlotEvents,
    ) -> None:
        self.name = name
        self.path = path
        self.limits = limits
        self.init_timeout = init_timeout
        self.slots = [Slot(i) for i in range(limits.workers)]
        self.failure: fr.StartError | None = None
        self.closing = False
        self._init_frame = init_frame
        self._events = events
        # With glibc every thread's first allocation may reserve a 64 MiB arena of
        # address space, which would count against RLIMIT_AS: one arena for all.
        self._env = {"MALLOC_ARENA_MAX": "1"} if limits.memory_limit_mb else {}
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- the whole set -------------------------------------------------------------

    def start(self) -> None:
        """Spawns a worker into every slot (from the event-loop thread)."""
        self._loop = asyncio.get_running_loop()
        for slot in self.slots:
            self._spawn(slot)

    def all_ready(self) -> bool:
        """Every slot holds a ready worker."""
        return all(slot.state == READY for slot in self.slots)

    def ready_slots(self) -> list[Slot]:
        """The slots whose worker can take calls now."""
        return [slot for slot in self.slots if slot.state == READY]

    def begin_shutdown(self) -> None:
        """No more respawns; workers still starting are stopped (no state to shut down)."""
        self.closing = True
        for slot in self.slots:
            if slot.state == BACKOFF:
                slot.cancel_timer()
                slot.state = STOPPED
            elif slot.state == STARTING:
                self.stop(slot, "the plugin is shutting down")

    def close(self) -> None:
        """Kills every worker still running and reaps it; waits at most CLOSE_WAIT s.

        A worker not reaped by then is reaped by its pidfd reader later.
        """
        self.closing = True
        running = []
        for slot in self.slots:
            slot.cancel_timer()
            if slot.proc is None:
                if slot.state != FAILED:
                    slot.state = STOPPED
                continue
            slot.stop_reason = slot.stop_reason or "the plugin was closed"
            slot.proc.close_channel()
            slot.proc.kill()
            running.append(slot.proc)
        deadline = time.monotonic() + CLOSE_WAIT
        for proc in running:
            if not proc.wait_blocking(max(0.0, deadline - time.monotonic())):
                log.warning("plugin_worker_not_reaped", plugin=self.name, pid=proc.pid)

    def fail(self, error: fr.StartError) -> None:
        """Marks the plugin failed: no more respawns, and the call side is told.

        Workers still starting are stopped; ready ones finish what they hold and stay
        idle, so their states still get `shutdown` when the plugin is closed.
        """
        if self.failure is not None:
            return
        self.failure = error
        log.error("plugin_workers_failed", plugin=self.name, reason=reason_of(error))
        for slot in self.slots:
            if slot.state in (STARTING, BACKOFF):
                slot.cancel_timer()
                if slot.proc is not None:
                    self.stop(slot, "the plugin failed")
                slot.state = FAILED
        self._events.plugin_failed(error)

    # -- one slot ----------------------------------------------------------------------

    def answered(self, slot: Slot) -> None:
        """A worker in `slot` answered a call: its crash streak is over."""
        slot.failures_in_a_row = 0

    def mark_stopping(self, slot: Slot) -> None:
        """The worker in `slot` was sent SHUTDOWN: it takes no more calls."""
        slot.state = STOPPING

    def stop(self, slot: Slot, reason: str) -> None:
        """Stops the worker in `slot` on purpose (SIGTERM, then SIGKILL)."""
        proc = slot.proc
        if proc is None or slot.stop_reason is not None:
            return
        slot.stop_reason = reason
        slot.state = STOPPING
        log.warning("plugin_worker_stopping", plugin=self.name, pid=proc.pid, reason=reason)
        proc.terminate(KILL_GRACE)

    def _spawn(self, slot: Slot) -> None:
        try:
            proc = WorkerProcess.spawn(
                functools.partial(self._on_frame, slot),
                functools.partial(self._on_exit, slot),
                env=self._env,
            )
        except OSError as e:
            slot.state = FAILED
            self.fail(PluginLoadError(self.path, f"cannot start a worker process: {e}"))
            return
        slot.proc = proc
        slot.state = STARTING
        slot.stop_reason = None
        slot.log_sink = plugin_log_sink(self.name, worker_pid=proc.pid)
        proc.send(self._init_frame)
        assert self._loop is not None
        slot.timer = self._loop.call_later(self.init_timeout, self._init_overdue, slot, proc)

    def _init_overdue(self, slot: Slot, proc: WorkerProcess) -> None:
        slot.timer = None
        if slot.proc is proc and slot.state == STARTING:
            ms = round(self.init_timeout * 1000)
            self.fail(PluginInitError(self.name, f"init did not finish within {ms} ms"))

    def _on_frame(self, slot: Slot, kind: int, call_id: int, body: bytes) -> None:
        if kind == fr.LOG:
            if slot.log_sink is not None:
                slot.log_sink(*fr.decode_log(body))
        elif kind == fr.READY:
            self._ready(slot, fr.decode_ready(body))
        elif kind == fr.START_FAILED:
            self.fail(fr.decode_start_error(self.name, body))
        else:
            self._events.worker_frame(slot, kind, call_id, body)

    def _ready(self, slot: Slot, ready: fr.Ready) -> None:
        if slot.state != STARTING:
            return
        slot.cancel_timer()
        slot.state = READY
        slot.starts_failed = 0
        slot.baseline_rss_kb = ready.baseline_rss_kb
        log.info("plugin_worker_ready", plugin=self.name, pid=ready.pid, slot=slot.index)
        self._events.worker_ready(slot)

    def _exit_text(self, slot: Slot, proc: WorkerProcess) -> str:
        text = proc.describe_exit()
        if proc.status is None or proc.killed_by_host:
            return text
        limit = self.limits.memory_limit_mb
        grown_mb = (proc.maxrss_kb - slot.baseline_rss_kb) / 1024
        if limit and grown_mb >= MEMORY_HINT_SHARE * limit:
            return (
                f"{text} after its memory grew by {grown_mb:.0f} MB: it most likely ran out "
                f"of its memory_limit_mb of {limit}"
            )
        if text.endswith("died with SIGKILL"):
            return f"{text} (not sent by this host: the kernel's OOM killer, or an operator)"
        return text

    def _on_exit(self, slot: Slot, proc: WorkerProcess) -> None:
        if slot.proc is not proc:
            return
        slot.proc = None
        slot.cancel_timer()
        before_ready = slot.state == STARTING
        stop_reason, slot.stop_reason = slot.stop_reason, None
        text = slot.last_exit = self._exit_text(slot, proc)
        calls_lost = self._events.worker_lost(slot, text, stop_reason)
        if self.closing or self.failure is not None:
            if slot.state != FAILED:
                slot.state = STOPPED
            return
        if stop_reason is not None:  # stopped on purpose: replace it at once
            log.info("plugin_worker_replacing", plugin=self.name, exit=text, reason=stop_reason)
            slot.restarts += 1
            self._spawn(slot)
            return
        slot.crashes += 1
        if before_ready:
            slot.starts_failed += 1
            if slot.starts_failed >= START_ATTEMPTS:
                slot.state = FAILED
                reason = (
                    f"its worker died {slot.starts_failed} times in a row before becoming "
                    f"ready; last: {text}"
                )
                self.fail(PluginInitError(self.name, reason))
                return
        slot.failures_in_a_row += 1
        delay = min(BACKOFF_FIRST * 2 ** (slot.failures_in_a_row - 1), BACKOFF_MAX)
        slot.state = BACKOFF
        log.warning(
            "plugin_worker_crashed",
            plugin=self.name,
            pid=proc.pid,
            exit=text,
            calls_lost=calls_lost,
            restart_in_ms=round(delay * 1000),
        )
        assert self._loop is not None
        slot.timer = self._loop.call_later(delay, self._respawn, slot)

    def _respawn(self, slot: Slot) -> None:
        slot.timer = None
        if self.closing or self.failure is not None:
            return
        slot.restarts += 1
        self._spawn(slot)
