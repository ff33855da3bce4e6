"""Worker supervision: each slot holds one worker process, spawned, watched, renewed.

The Supervisor owns the worker slots of one plugin: it spawns a worker into each,
sends it the INIT frame, learns when it is ready, respawns it after a death with
backoff (0.1 s doubling to 5 s, reset once a worker answers a call), recycles it
when it is due, stops it on purpose (SIGTERM, then SIGKILL) and reaps it. It knows
nothing of calls: it tells the call side (backend.py) what happens through the
`SlotEvents` protocol, and hands it every frame that answers a call.

- Starting a worker (spawn, loading, `init`, READY) has a budget of its own,
  `start_timeout_ms`: a busy machine may take far longer to start a worker than to
  answer a call. A worker that does not start in time, or whose `init` fails, fails
  the plugin: nothing is respawned any more. So do 3 deaths in a row before ready.
- Recycling (`max_calls_per_worker`, or resident memory near `memory_limit_mb`) is a
  handover: a successor is spawned beside the worker, which keeps taking calls until
  the successor is ready. Then the successor takes its slot and the old worker
  drains: it finishes what it holds, runs the plugin's `shutdown` and exits. No call
  fails because of a recycle. A successor that dies before it is ready is tried
  again after a backoff; 3 in a row fail the plugin, as for any start.
- A warm standby (`standby`, see config.ProcessLimits) is one more worker, started
  once every slot is ready, initialised, and idle. When a slot's worker dies (or is
  stopped), the standby takes its place at once, with its history, and a new standby
  is started: the calls retried after the death run without waiting for a respawn.
  A standby that becomes ready while a slot waits out its backoff takes that slot.
  The standby also runs a crash's suspect alone (backend.py), so a poison request
  kills only the standby, never the worker serving the innocent calls. Its deaths
  before ready count like any start (START_ATTEMPTS fail the plugin); its deaths
  after are respawned with the same backoff as a slot's.
- `memory_limit_mb` is RLIMIT_AS in the worker on top of its baseline address space
  (see worker.limit_address_space). Going over it is not a signal of its own: the
  plugin's allocation fails and it crashes or aborts, or returns BW_FAIL. When a
  worker dies after its own peak RSS grew by most of the limit, the exit text says
  it most likely ran out of memory. Only the worker's own accounting counts: its RSS
  read after each call, and the kernel's peak at reaping where it exceeds what the
  worker inherited from the host (process.py). A spike it died of that stayed below
  the host's own peak cannot be told apart: then nothing is claimed. Memory reserved
  but never touched is not seen that way either; the death is still reported by
  signal.

Everything here runs on the event-loop thread; no locks.
"""

from __future__ import annotations

import asyncio
import functools
import os
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
RETIRE_GRACE = 10.0  # a drained worker's `shutdown` may take this long, then it is stopped
# A worker that died after its own peak RSS grew by this share of memory_limit_mb
# most likely hit the limit (a failed allocation turned into a crash).
MEMORY_HINT_SHARE = 0.8
# A worker whose RSS grew past this share of memory_limit_mb is recycled before an
# allocation fails; the rest of the limit carries its calls until the successor is
# ready ...
RECYCLE_MEMORY_SHARE = 0.75
# ... if at least this share of the limit came after it was ready: what `init` takes
# comes back in every successor, and recycling for it would never end.
RECYCLE_GROWTH_SHARE = 0.1

STARTING = "starting"
READY = "ready"
DRAINING = "draining"  # replaced by its successor: finishes its calls, takes no new ones
STOPPING = "stopping"
BACKOFF = "backoff"  # dead, waiting to be respawned
STOPPED = "stopped"
FAILED = "failed"
STANDBY_INDEX = -1  # a standby's Slot.index until it takes a position


def _backoff(attempt: int) -> float:
    return float(min(BACKOFF_FIRST * 2 ** (attempt - 1), BACKOFF_MAX))


class Slot:
    """One worker position: the process running there now, its history, its successor.

    A successor (a recycle's replacement, still starting) is a Slot of its own with
    the same index; once ready it takes the position over, with the history, and the
    old Slot is retired: it drains, stops, and is never respawned.
    """

    __slots__ = (
        "answered",
        "baseline_rss_kb",
        "crashes",
        "failures_in_a_row",
        "index",
        "last_exit",
        "log_sink",
        "peak_rss_kb",
        "proc",
        "ready_rss_kb",
        "recycle_after",
        "recycle_failures",
        "recycles",
        "replaces",
        "restarts",
        "retired",
        "starts_failed",
        "state",
        "stop_reason",
        "successor",
        "timer",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: WorkerProcess | None = None
        self.state = STOPPED
        self.restarts = 0
        self.crashes = 0
        self.recycles = 0
        self.failures_in_a_row = 0  # crashes since a worker here last answered a call
        self.starts_failed = 0  # deaths in a row before READY
        self.last_exit: str | None = None
        self.stop_reason: str | None = None  # set when the host stops the worker
        self.timer: asyncio.TimerHandle | None = None
        self.log_sink: LogSink | None = None
        # Of the worker running here now:
        self.answered = 0  # calls it answered
        self.baseline_rss_kb = 0  # its RSS before the plugin was loaded; 0 = not ready
        self.ready_rss_kb = 0  # its RSS when it became ready
        self.peak_rss_kb = 0  # the highest RSS read after its calls
        # Recycling:
        self.successor: Slot | None = None  # a replacement starting beside this worker
        self.replaces: Slot | None = None  # on a successor: the position it will take
        self.retired = False  # replaced: draining, then stopped; never respawned
        self.recycle_failures = 0  # successors that died before ready, in a row
        self.recycle_after = 0.0  # loop time before which no successor is started

    def cancel_timer(self) -> None:
        """Forgets a pending respawn or start deadline."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def take_over(self, old: Slot) -> None:
        """This successor takes `old`'s position: the position's history goes on."""
        self.replaces = None
        old.successor = None
        self.restarts = old.restarts + 1
        self.recycles = old.recycles + 1
        self.crashes = old.crashes
        self.last_exit = old.last_exit


class SlotEvents(Protocol):
    """What the call side hears from the Supervisor."""

    def worker_ready(self, slot: Slot) -> None:
        """A worker in `slot` took its INIT and can take calls."""

    def worker_draining(self, slot: Slot) -> None:
        """The worker in `slot` was replaced: no new calls; `retire` it once it has none."""

    def worker_frame(self, slot: Slot, kind: int, call_id: int, body: bytes) -> None:
        """A frame about a call (RESPONSE, NONE, FAILED, CPU_EXCEEDED) from `slot`."""

    def worker_lost(
        self,
        slot: Slot,
        exit_text: str,
        stop_reason: str | None,
        started: frozenset[int],
        unsent: frozenset[int] = frozenset(),
    ) -> int:
        """The worker in `slot` is gone; returns how many calls it held.

        `stop_reason` is set when the host stopped it on purpose; `started` holds the
        ids of the calls its threads had begun (the others never reached the plugin);
        `unsent` those of them that had returned, their answers lost with the worker.
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
        start_timeout: float,
        threads: int = 1,
        events: SlotEvents,
    ) -> None:
        self.name = name
        self.path = path
        self.limits = limits
        self.start_timeout = start_timeout
        self.slots = [Slot(i) for i in range(limits.workers)]
        self.retiring: list[Slot] = []  # replaced workers, draining or stopping
        self.standby: Slot | None = None  # the warm standby, when limits.standby
        self.failure: fr.StartError | None = None
        self.closing = False
        self.standby_crashes = 0  # deaths of standbys (a poison request's, mostly)
        self._standby_start_failures = 0
        self._standby_due = False
        self._init_frame = init_frame
        self._threads = threads
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

    def ready_states(self) -> list[Slot]:
        """Every ready worker holding a plugin state: the positions and the standby."""
        standby = self.standby
        extra = [standby] if standby is not None and standby.state == READY else []
        return self.ready_slots() + extra

    def ready_standby(self) -> Slot | None:
        """The standby, when it is ready to take a position or a suspect."""
        standby = self.standby
        if standby is None or standby.state != READY or standby.proc is None:
            return None
        return standby

    def seats(self) -> list[Slot]:
        """Every Slot that may hold a process: the positions, successors, retiring ones."""
        seats = list(self.slots)
        seats += [slot.successor for slot in self.slots if slot.successor is not None]
        if self.standby is not None:
            seats.append(self.standby)
        return seats + self.retiring

    def begin_shutdown(self) -> None:
        """No more respawns; workers still starting are stopped (no state to shut down)."""
        self.closing = True
        standby = self.standby
        if standby is not None and standby.state != READY:  # a ready one runs `shutdown`
            standby.cancel_timer()
            self.stop(standby, "the plugin is shutting down")
            standby.state = STOPPED
        for slot in self.slots:
            if slot.successor is not None:
                self.stop(slot.successor, "the plugin is shutting down")
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
        for slot in self.seats():
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
        standby = self.standby
        if standby is not None and standby.state != READY:
            standby.cancel_timer()
            self.stop(standby, "the plugin failed")
            standby.state = FAILED
        for slot in self.slots:
            successor = slot.successor
            if successor is not None:
                successor.cancel_timer()
                self.stop(successor, "the plugin failed")
            if slot.state in (STARTING, BACKOFF):
                slot.cancel_timer()
                if slot.proc is not None:
                    self.stop(slot, "the plugin failed")
                slot.state = FAILED
        self._events.plugin_failed(error)

    # -- one slot ----------------------------------------------------------------------

    def answered(self, slot: Slot) -> None:
        """A worker in `slot` answered a call: its crash streak is over; renew it if due."""
        slot.failures_in_a_row = 0
        slot.answered += 1
        if slot.index == STANDBY_INDEX:  # a suspect it ran: never recycled for that
            return
        limits = self.limits
        reason = None
        if limits.memory_limit_mb:  # read even while a recycle is under way: the peak counts
            reason = self._memory_due(slot, limits.memory_limit_mb)
        if limits.max_calls_per_worker and slot.answered >= limits.max_calls_per_worker:
            reason = f"it answered {slot.answered} calls (max_calls_per_worker)"
        if reason is not None:
            self.recycle(slot, reason)  # unless one is under way already

    def recycle(self, slot: Slot, reason: str) -> None:
        """Starts a successor for the worker in `slot`; it takes over once ready."""
        proc = slot.proc
        if (
            proc is None
            or slot.state != READY
            or slot.successor is not None
            or slot.retired
            or self.closing
            or self.failure is not None
        ):
            return
        assert self._loop is not None
        if self._loop.time() < slot.recycle_after:
            return
        successor = Slot(slot.index)
        successor.replaces = slot
        slot.successor = successor
        log.info(
            "plugin_worker_recycling",
            plugin=self.name,
            pid=proc.pid,
            slot=slot.index,
            reason=reason,
        )
        self._spawn(successor)

    def retire(self, slot: Slot) -> None:
        """The replaced worker in `slot` holds no calls now: it shuts its state down, exits."""
        proc = slot.proc
        if proc is None or slot.state != DRAINING:
            return
        slot.state = STOPPING
        proc.send(fr.frame(fr.SHUTDOWN, 0))  # the worker exits once `shutdown` returns
        assert self._loop is not None
        slot.timer = self._loop.call_later(RETIRE_GRACE, self._retire_overdue, slot, proc)

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

    def _memory_due(self, slot: Slot, limit_mb: int) -> str | None:
        """Why the worker in `slot` should be recycled for its memory, if it should."""
        if slot.proc is None:
            return None
        rss = slot.proc.rss_kb()
        slot.peak_rss_kb = max(slot.peak_rss_kb, rss)
        limit_kb = limit_mb * 1024
        grown = rss - slot.baseline_rss_kb
        if (
            slot.baseline_rss_kb
            and grown >= RECYCLE_MEMORY_SHARE * limit_kb
            and rss - slot.ready_rss_kb >= RECYCLE_GROWTH_SHARE * limit_kb
        ):
            return (
                f"its memory grew by {grown / 1024:.0f} MB, near its memory_limit_mb of {limit_mb}"
            )
        return None

    def _retire_overdue(self, slot: Slot, proc: WorkerProcess) -> None:
        slot.timer = None
        if slot.proc is proc:
            self.stop(slot, f"its shutdown did not return within {RETIRE_GRACE:.0f} s")

    def _spawn(self, slot: Slot) -> None:
        try:
            proc = WorkerProcess.spawn(
                functools.partial(self._on_frame, slot),
                functools.partial(self._on_exit, slot),
                env=self._env,
                threads=self._threads,
            )
        except OSError as e:
            slot.state = FAILED
            self.fail(PluginLoadError(self.path, f"cannot start a worker process: {e}"))
            return
        slot.proc = proc
        slot.state = STARTING
        slot.stop_reason = None
        slot.answered = slot.baseline_rss_kb = slot.ready_rss_kb = slot.peak_rss_kb = 0
        slot.log_sink = plugin_log_sink(self.name, worker_pid=proc.pid)
        proc.send(self._init_frame)
        assert self._loop is not None
        slot.timer = self._loop.call_later(self.start_timeout, self._start_overdue, slot, proc)

    def _start_overdue(self, slot: Slot, proc: WorkerProcess) -> None:
        slot.timer = None
        if slot.proc is proc and slot.state == STARTING:
            ms = round(self.start_timeout * 1000)
            msg = f"a worker did not start within start_timeout_ms of {ms} ms"
            self.fail(PluginInitError(self.name, msg))

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
        if slot.state != STARTING or slot.proc is None:
            return
        slot.cancel_timer()
        slot.state = READY
        slot.starts_failed = 0
        slot.baseline_rss_kb = ready.baseline_rss_kb
        if self.limits.memory_limit_mb:
            slot.ready_rss_kb = slot.peak_rss_kb = slot.proc.rss_kb()
        log.info("plugin_worker_ready", plugin=self.name, pid=ready.pid, slot=slot.index)
        if slot is self.standby:
            self._standby_ready(slot)
            return
        old = slot.replaces
        if old is None:
            self._events.worker_ready(slot)
            self._ensure_standby()
            return
        # The handover: the successor serves from now on; the old worker drains.
        slot.take_over(old)
        self.slots[old.index] = slot
        old.retired = True
        self.retiring.append(old)
        self._events.worker_ready(slot)
        if old.state == READY and old.proc is not None:
            old.state = DRAINING
            log.info("plugin_worker_draining", plugin=self.name, pid=old.proc.pid, slot=old.index)
            self._events.worker_draining(old)

    def _exit_text(self, slot: Slot, proc: WorkerProcess) -> str:
        text = proc.describe_exit()
        if proc.status is None or proc.killed_by_host:
            return text
        limit = self.limits.memory_limit_mb
        if limit and slot.baseline_rss_kb:
            # The kernel's peak is the worker's own only above what it inherited.
            reaped_peak = proc.maxrss_kb if proc.maxrss_kb > proc.rss_floor_kb else 0
            grown_mb = (max(slot.peak_rss_kb, reaped_peak) - slot.baseline_rss_kb) / 1024
            if grown_mb >= MEMORY_HINT_SHARE * limit:
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
        if proc.crash_dump:  # one event per native crash, the dump a field of it
            log.error(
                "plugin_worker_crash_output",
                plugin=self.name,
                pid=proc.pid,
                exit=text,
                dump=proc.crash_dump,
            )
        # The standby takes a dead serving worker's place before the calls it held are
        # sorted out: those sent again go to it at once, a suspect waits for the next.
        standby = self._successor_standby(slot, before_ready)
        if standby is not None:
            if stop_reason is None:
                slot.crashes += 1
                slot.failures_in_a_row += 1
            self._take_position(slot, standby)
        calls_lost = self._events.worker_lost(
            slot, text, stop_reason, proc.started_calls(), proc.unsent_answers()
        )
        if standby is not None:
            self._promoted(slot, proc, text, stop_reason, calls_lost)
            return
        if slot is self.standby:
            self._standby_lost(slot, proc, text, stop_reason, before_ready, calls_lost)
            return
        if slot.replaces is not None:
            self._successor_lost(slot, text, stop_reason)
            return
        if slot.retired:
            self._retired_exit(slot, proc, text, stop_reason, calls_lost)
            return
        if self.closing or self.failure is not None:
            if slot.state != FAILED:
                slot.state = STOPPED
            return
        if stop_reason is None:
            slot.crashes += 1
        successor = slot.successor
        if successor is not None:  # a recycle was under way: its successor takes over now
            successor.take_over(slot)
            self.slots[slot.index] = successor
            slot.state = STOPPED
            log.warning(
                "plugin_worker_replaced_early",
                plugin=self.name,
                pid=proc.pid,
                exit=text,
                reason=stop_reason,
                calls_lost=calls_lost,
            )
            return
        if stop_reason is not None:  # stopped on purpose: replace it at once
            log.info("plugin_worker_replacing", plugin=self.name, exit=text, reason=stop_reason)
            slot.restarts += 1
            self._spawn(slot)
            return
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
        delay = _backoff(slot.failures_in_a_row)
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

    def _successor_lost(self, successor: Slot, text: str, stop_reason: str | None) -> None:
        """A recycle's successor died before it was ready; the old worker serves on."""
        old = successor.replaces
        assert old is not None
        successor.replaces = None
        successor.state = STOPPED
        if old.successor is successor:
            old.successor = None
        if stop_reason is not None or self.closing or self.failure is not None:
            return
        old.recycle_failures += 1
        if old.recycle_failures >= START_ATTEMPTS:
            reason = (
                f"its worker died {old.recycle_failures} times in a row before becoming "
                f"ready; last: {text}"
            )
            self.fail(PluginInitError(self.name, reason))
            return
        delay = _backoff(old.recycle_failures)
        assert self._loop is not None
        old.recycle_after = self._loop.time() + delay
        log.warning(
            "plugin_worker_recycle_failed",
            plugin=self.name,
            exit=text,
            retry_in_ms=round(delay * 1000),
        )

    def _retired_exit(
        self,
        slot: Slot,
        proc: WorkerProcess,
        text: str,
        stop_reason: str | None,
        calls_lost: int,
    ) -> None:
        """A replaced worker is gone: after its `shutdown`, or it died draining."""
        if slot in self.retiring:
            self.retiring.remove(slot)
        slot.state = STOPPED
        status = proc.status
        if stop_reason is not None or (
            status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        ):
            log.info("plugin_worker_retired", plugin=self.name, pid=proc.pid, exit=text)
            return
        self.slots[slot.index].crashes += 1
        log.warning(
            "plugin_worker_crashed",
            plugin=self.name,
            pid=proc.pid,
            exit=text,
            calls_lost=calls_lost,
            reason="it died while draining; its successor already serves",
        )

    # -- the standby ----------------------------------------------------------------

    def _ensure_standby(self, delay: float = 0.0) -> None:
        """Starts a standby (after `delay` s) if one is wanted and none is there."""
        if not self.limits.standby or self.standby is not None:
            return
        if self.closing or self.failure is not None:
            return
        # Not before every slot was ready once: starting the plugin is not slowed down.
        if not self._standby_due and not self.all_ready():
            return
        self._standby_due = True
        standby = self.standby = Slot(STANDBY_INDEX)
        if delay <= 0:
            self._spawn(standby)
            return
        standby.state = BACKOFF
        assert self._loop is not None
        standby.timer = self._loop.call_later(delay, self._respawn_standby, standby)

    def _respawn_standby(self, standby: Slot) -> None:
        standby.timer = None
        if self.standby is standby and not self.closing and self.failure is None:
            self._spawn(standby)

    def _standby_ready(self, standby: Slot) -> None:
        """A standby is ready: it takes a slot whose worker waits out a backoff, if any."""
        self._events.worker_ready(standby)  # the call side may give it a suspect now
        for slot in self.slots:
            if slot.state == BACKOFF:
                slot.cancel_timer()
                self._take_position(slot, standby)
                self._ensure_standby()
                return

    def _take_position(self, slot: Slot, standby: Slot) -> None:
        """The ready `standby` becomes the worker of `slot`'s position, with its history."""
        self.standby = None
        standby.index = slot.index
        standby.restarts = slot.restarts + 1
        standby.crashes = slot.crashes
        standby.recycles = slot.recycles
        standby.last_exit = slot.last_exit
        standby.failures_in_a_row = slot.failures_in_a_row
        slot.state = STOPPED
        self.slots[slot.index] = standby
        assert standby.proc is not None
        log.info("plugin_standby_promoted", plugin=self.name, pid=standby.proc.pid, slot=slot.index)
        self._events.worker_ready(standby)

    def _successor_standby(self, slot: Slot, before_ready: bool) -> Slot | None:
        """The standby that takes the place of `slot`'s dead worker now, if any."""
        if (
            before_ready
            or slot is self.standby
            or slot.replaces is not None
            or slot.retired
            or slot.successor is not None
            or self.closing
            or self.failure is not None
            or self.slots[slot.index] is not slot
        ):
            return None
        return self.ready_standby()

    def _promoted(
        self,
        slot: Slot,
        proc: WorkerProcess,
        text: str,
        stop_reason: str | None,
        calls_lost: int,
    ) -> None:
        """The standby took the place of `slot`'s dead worker: logged, and replenished."""
        log.warning(
            "plugin_worker_crashed" if stop_reason is None else "plugin_worker_replacing",
            plugin=self.name,
            pid=proc.pid,
            exit=text,
            reason=stop_reason,
            calls_lost=calls_lost,
            replaced_by="standby",
        )
        # A crash loop starts standbys no faster than its slot would respawn.
        self._ensure_standby(_backoff(slot.failures_in_a_row) if slot.failures_in_a_row > 1 else 0)

    def _standby_lost(
        self,
        standby: Slot,
        proc: WorkerProcess,
        text: str,
        stop_reason: str | None,
        before_ready: bool,
        calls_lost: int,
    ) -> None:
        """The standby died (or was stopped): a new one after a backoff, if still wanted."""
        self.standby = None
        if standby.state != FAILED:
            standby.state = STOPPED
        if self.closing or self.failure is not None:
            return
        if before_ready and stop_reason is None:
            self._standby_start_failures += 1
            if self._standby_start_failures >= START_ATTEMPTS:
                reason = (
                    f"its standby worker died {self._standby_start_failures} times in a row "
                    f"before becoming ready; last: {text}"
                )
                self.fail(PluginInitError(self.name, reason))
                return
        else:
            self._standby_start_failures = 0
        if stop_reason is None:
            self.standby_crashes += 1
        failures = standby.failures_in_a_row + (stop_reason is None)
        delay = _backoff(failures) if failures > 1 else 0.0
        log.warning(
            "plugin_worker_crashed" if stop_reason is None else "plugin_worker_replacing",
            plugin=self.name,
            pid=proc.pid,
            exit=text,
            reason=stop_reason,
            calls_lost=calls_lost,
            standby=True,
            restart_in_ms=round(delay * 1000),
        )
        self._ensure_standby(delay)
        if self.standby is not None:
            self.standby.failures_in_a_row = failures

    def _respawn(self, slot: Slot) -> None:
        slot.timer = None
        if self.closing or self.failure is not None:
            return
        slot.restarts += 1
        self._spawn(slot)
