"""ProcessBackend: a plugin's calls run in worker processes, so a crash costs one answer.

It implements `runtime.backend.Backend` for `isolation: process`. The workers
themselves are the Supervisor's (supervisor.py); this module routes calls to them.
Each worker takes `concurrency_per_worker` calls at once (1 unless the plugin is
BW_FLAG_THREAD_SAFE: ABI rule 4 holds per process), on as many threads, or in turn
on one when the plugin is BW_FLAG_NONBLOCKING. Calls beyond that wait here, in
the host, until a ready worker has room: the one with the fewest calls gets the
next, ties taken in turn, so even sequential traffic is spread over the workers.

What happens when things go wrong:

- A worker that dies (any signal, `exit`, `abort`) takes the calls it held. Each of
  them is sent again, once, to another (or the respawned) worker when that is safe:
  the call had not started (the worker's running table says so; see process.py), or
  it is idempotent (GET or HEAD, or any method with `retry_on_crash`). A call that
  was running when its worker died is a suspect: sent again, it runs alone on its
  worker, so if that worker dies too the call is the culprit. A culprit (a call
  running at two worker deaths) is a poison request: it is answered with
  PluginCrashedError (502) without a third try, and logged with its request id.
  Other calls that cannot be retried fail with PluginCrashedError naming how the
  worker died. A death counts once on the breaker: of the calls it fails, only the
  first has `counted` set.
- With a warm standby (supervisor.py) the lost calls do not wait for a respawn: the
  standby takes the dead worker's place at once. A suspect then waits for the
  standby (not for an idle worker that serves others) and runs there alone; calls
  behind it go on. Were the suspect the culprit, only the standby dies.
- A call that ran beside others on a worker that died, and may not be repeated, is
  answered PluginOutcomeUnknownError (calls.py); a call that waited here for a
  worker past its timeout never ran: `abandon` says so, and the runner answers 503.
- A worker the host stops on purpose (a call ignoring cancellation, or overrunning
  its `cpu_limit_ms`) costs its innocent neighbours nothing either: they are retried
  by the same rules, without a mark against them, and never counted.
- A plugin that cannot start (see supervisor.py) fails the calls waiting here, and
  every later one, with PluginUnavailableError and the reason.
- A call the host gives up on (`abandon`, after the runner set its cancel flag) is
  cancelled in the worker; if it has not returned after CANCEL_GRACE the worker is
  stopped and replaced. Its future completes only when the worker is gone, so the
  concurrency slot frees exactly when the work has really stopped.
- `cpu_limit_ms` overruns are caught in the worker (see worker.CpuWatchdog) and
  treated like an abandoned call; the call fails with PluginTimeoutError. Only the
  calling thread's CPU time counts; threads the plugin starts itself are not charged.
- A recycled worker (supervisor.py) takes no new calls once its successor is ready;
  when it holds none it is retired: `shutdown`, then exit.

Everything here runs on the event-loop thread; no locks.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any

import structlog

from backworks.abi import DEFAULT_MAX_RESPONSE_BYTES, CancelFlag, PluginInfo, Request, Response
from backworks.config import ProcessLimits
from backworks.errors import (
    PluginCallError,
    PluginCancelledError,
    PluginError,
    PluginLoadError,
    PluginTimeoutError,
    PluginUnavailableError,
    reason_of,
)
from backworks.isolation import framing as fr
from backworks.isolation.calls import IDEMPOTENT, Call, Group, sort_out_lost, worst_health
from backworks.isolation.process import SUPPORTED
from backworks.isolation.supervisor import READY, Slot, Supervisor
from backworks.plugins.loading import PluginSpec
from backworks.runtime.backend import PluginCalls, RunHandle

log = structlog.get_logger("backworks.isolation")

CANCEL_GRACE = 0.1  # a cancelled call may still return by itself within this


class ProcessBackend:
    """Runs one plugin's calls in worker processes (see the module's doc)."""

    def __init__(
        self,
        info: PluginInfo,
        spec: PluginSpec,
        limits: ProcessLimits | None = None,
        *,
        concurrency_per_worker: int = 1,
        start_timeout_ms: int = 10_000,
        max_response_mb: int = DEFAULT_MAX_RESPONSE_BYTES >> 20,
    ) -> None:
        limits = limits or ProcessLimits()
        if concurrency_per_worker < 1 or (concurrency_per_worker > 1 and not info.thread_safe):
            msg = (
                f"'concurrency_per_worker' must be 1 for a plugin without BW_FLAG_THREAD_SAFE, "
                f"else at least 1 (got {concurrency_per_worker})"
            )
            raise ValueError(msg)
        if not SUPPORTED:  # pragma: no cover
            raise PluginLoadError(spec.path, "process isolation needs pidfd or waitid (Linux)")
        self.info = info
        self.name = spec.name
        self.limits = limits
        self.concurrency_per_worker = concurrency_per_worker
        # A plugin whose calls never block (BW_FLAG_NONBLOCKING) is called on the
        # worker's reading thread, one call after the other, however many it holds:
        # calls of microseconds only lose time to hand-offs between threads, and the
        # ones queued behind wait in the channel, where a crash cannot have started them.
        threads = 1 if info.nonblocking else concurrency_per_worker
        init_frame = fr.encode_init(
            fr.WorkerInit(
                path=str(spec.path),
                name=spec.name,
                config_json=spec.config_json,
                allow_insecure_permissions=spec.allow_insecure_permissions,
                sha256=spec.sha256 or "",
                threads=threads,
                memory_limit_mb=limits.memory_limit_mb or 0,
                cpu_limit_ms=limits.cpu_limit_ms or 0,
                max_response_mb=max_response_mb,
            )
        )
        self._workers = Supervisor(
            spec.name,
            str(spec.path),
            init_frame,
            limits,
            start_timeout=start_timeout_ms / 1000,
            threads=threads,
            events=self,
        )
        # The calls each worker holds now (ready, draining or stopping workers).
        self._running: dict[Slot, dict[int, Call]] = {}
        # Workers running a suspect: it runs alone, so no other call goes there.
        self._alone: set[Slot] = set()
        self._turn = 0  # the position the search for a free worker starts at
        self._queue: collections.deque[Call] = collections.deque()
        # Suspects waiting for the standby (with one): innocent calls need not wait.
        self._suspects: collections.deque[Call] = collections.deque()
        self._by_future: dict[asyncio.Future[Any], Call] = {}
        # Replaced workers still to exit: a plugin shutdown waits for their `shutdown`.
        self._retiring: dict[Slot, asyncio.Future[None]] = {}
        self._last_id = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._settled: asyncio.Future[None] | None = None
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Spawns the workers and waits until all are ready.

        Raises PluginLoadError (or AbiMismatchError) when the library cannot be loaded,
        PluginInitError with the plugin's own message when `init` fails, or when the
        workers keep dying before they become ready.
        """
        if self._loop is not None:
            msg = f"plugin {self.name!r}: ProcessBackend.start() was already called"
            raise RuntimeError(msg)
        self._loop = asyncio.get_running_loop()
        self._settled = self._loop.create_future()
        self._workers.start()
        try:
            await self._settled
        except BaseException:
            self._settled.cancel()
            self.close()
            raise

    def close(self) -> None:
        """Kills every worker still running and reaps it; the backend is unusable after.

        After an orderly `start_shutdown` the workers have exited already; otherwise
        (calls stuck past the drain timeout) they are killed now: a worker never
        outlives its plugin.
        """
        if self._closed:
            return
        self._closed = True
        self._workers.closing = True
        self._fail_queued(PluginUnavailableError(self.name, "the plugin is shutting down"))
        self._workers.close()

    # -- the Backend protocol ----------------------------------------------------

    def start_handle(self, req: Request, cancel: CancelFlag) -> asyncio.Future[Response]:
        call_id = self._new_id()
        return self._submit(call_id, fr.encode_call(fr.HANDLE, call_id, req), req)

    def start_on_request(self, req: Request, cancel: CancelFlag) -> asyncio.Future[Response | None]:
        call_id = self._new_id()
        return self._submit(call_id, fr.encode_call(fr.ON_REQUEST, call_id, req), req)

    def start_on_response(
        self, req: Request, upstream: Response, cancel: CancelFlag
    ) -> asyncio.Future[Response | None]:
        call_id = self._new_id()
        return self._submit(call_id, fr.encode_call(fr.ON_RESPONSE, call_id, req, upstream), req)

    def start_health(self) -> asyncio.Future[Response | None]:
        """Asks every ready worker's state; answers with the least healthy report."""
        return self._on_every_state(fr.HEALTH, worst_health)

    def start_shutdown(self) -> asyncio.Future[None]:
        """Runs the plugin's `shutdown` in every ready worker; the workers then exit.

        Completes when replaced workers still draining have exited too (they run
        their own `shutdown` once they hold no calls).
        """
        self._workers.begin_shutdown()
        self._fail_queued(PluginUnavailableError(self.name, "the plugin is shutting down"))
        states: asyncio.Future[None] = self._on_every_state(fr.SHUTDOWN, lambda _: None)
        retiring = [fut for fut in self._retiring.values() if not fut.done()]
        if not retiring:
            return states
        return asyncio.ensure_future(_after(retiring, states))

    def abandon(self, call: asyncio.Future[Any]) -> bool:
        """Cancels the call in its worker; stops the worker if the call keeps running.

        True when the call was still waiting here for a worker: it never ran.
        """
        entry = self._by_future.get(call)
        if entry is None or call.done():
            return False
        slot = entry.slot
        if slot is None:  # still waiting here: it never reached a worker
            self._unqueue(entry)
            self._finish(entry, None, PluginCancelledError(self.name, "given up on in the queue"))
            return True
        if entry.abandoned or slot.proc is None:
            return False
        entry.abandoned = True
        slot.proc.send_control(fr.frame(fr.CANCEL, entry.call_id))
        self._expect_return(slot, entry)
        return False

    def inline_calls(self) -> PluginCalls | None:
        """None: the plugin lives in other processes, never on the event loop."""
        return None

    def handle_runner(self) -> RunHandle | None:
        """None: a worker's calls are tracked by their futures (its running table)."""
        return None

    def snapshot(self) -> dict[str, Any]:
        failure = self._workers.failure
        return {
            "isolation": "process",
            "workers": [
                {
                    "pid": slot.proc.pid if slot.proc is not None else None,
                    "state": slot.state,
                    "restarts": slot.restarts,
                    "crashes": slot.crashes,
                    "recycles": slot.recycles,
                    "recycling": slot.successor is not None,
                    "calls": slot.answered,
                    "in_flight": len(self._running.get(slot, ())),
                    "last_exit": slot.last_exit,
                }
                for slot in self._workers.slots
            ],
            "retiring_workers": [
                {
                    "pid": slot.proc.pid if slot.proc is not None else None,
                    "state": slot.state,
                    "in_flight": len(self._running.get(slot, ())),
                }
                for slot in self._workers.retiring
            ],
            "memory_limit_mb": self.limits.memory_limit_mb,
            "cpu_limit_ms": self.limits.cpu_limit_ms,
            "max_calls_per_worker": self.limits.max_calls_per_worker,
            "retry_on_crash": self.limits.retry_on_crash,
            "standby": self._standby_row(),
            "worker_failure": reason_of(failure) if failure is not None else None,
        }

    def _standby_row(self) -> dict[str, Any] | None:
        workers = self._workers
        standby = workers.standby
        if not self.limits.standby:
            return None
        proc = standby.proc if standby is not None else None
        return {
            "pid": proc.pid if proc is not None else None,
            "state": standby.state if standby is not None else "stopped",
            "crashes": workers.standby_crashes,
            "in_flight": len(self._running.get(standby, ())) if standby is not None else 0,
        }

    # -- the SlotEvents protocol of supervisor.py --------------------------------

    def worker_ready(self, slot: Slot) -> None:
        self._running.setdefault(slot, {})
        self._send_queued()
        settled = self._settled
        if settled is not None and not settled.done() and self._workers.all_ready():
            settled.set_result(None)

    def worker_draining(self, slot: Slot) -> None:
        assert self._loop is not None
        self._retiring[slot] = self._loop.create_future()
        if not self._running.get(slot):
            self._workers.retire(slot)

    def worker_frame(self, slot: Slot, kind: int, call_id: int, body: bytes) -> None:
        running = self._running.get(slot)
        if running is None:
            return
        if fr.RESPONSE <= kind <= fr.FAILED:
            call = running.pop(call_id, None)
            if call is None:  # e.g. the SHUTDOWN of a retired worker (call id 0)
                return
            self._alone.discard(slot)
            if kind == fr.RESPONSE:
                self._finish(call, fr.decode_response(body), None)
            elif kind == fr.NONE:
                self._finish(call, None, None)
            else:
                self._finish(call, None, self._call_error(*fr.decode_failure(body)))
            self._workers.answered(slot)
            if not running and slot.retired:
                self._workers.retire(slot)
            if self._queue or self._suspects:
                self._send_queued()
        elif kind == fr.CPU_EXCEEDED:
            call = running.get(call_id)
            if call is not None and call.cpu_used_ms is None:
                call.cpu_used_ms = fr.decode_cpu_exceeded(body)
                log.warning(
                    "plugin_cpu_limit_exceeded",
                    plugin=self.name,
                    pid=slot.proc.pid if slot.proc else None,
                    cpu_ms=call.cpu_used_ms,
                    cpu_limit_ms=self.limits.cpu_limit_ms,
                )
                self._expect_return(slot, call)
        else:
            msg = f"unexpected frame kind {kind} from worker"
            raise fr.ProtocolError(msg)

    def worker_lost(
        self,
        slot: Slot,
        exit_text: str,
        stop_reason: str | None,
        started: frozenset[int],
        unsent: frozenset[int] = frozenset(),
    ) -> int:
        calls = list(self._running.pop(slot, {}).values())
        self._alone.discard(slot)
        retired = self._retiring.pop(slot, None)
        if retired is not None and not retired.done():
            retired.set_result(None)
        if not calls:
            return 0
        answered, again = sort_out_lost(
            calls,
            plugin=self.name,
            exit_text=exit_text,
            stop_reason=stop_reason,
            started=started,
            unsent=unsent,
            give_up=self._workers.closing or self._workers.failure is not None,
        )
        for call, error in answered:
            self._finish(call, None, error)
        if again:
            self._retry(again, exit_text)
        return len(calls)

    def plugin_failed(self, error: fr.StartError) -> None:
        self._fail_queued(self._unavailable())
        settled = self._settled
        if settled is not None and not settled.done():
            settled.set_exception(error)

    # -- calls -------------------------------------------------------------------

    def _new_id(self) -> int:
        # Ids only need to be unique among calls in flight; 0 means "no call".
        self._last_id = self._last_id % 0xFFFFFFFF + 1
        return self._last_id

    def _submit(self, call_id: int, frame: bytes, req: Request | None) -> asyncio.Future[Any]:
        if self._loop is None:
            msg = f"plugin {self.name!r}: ProcessBackend.start() was not called"
            raise RuntimeError(msg)
        fut = self._loop.create_future()
        if self._workers.failure is not None or self._workers.closing:
            fut.set_exception(self._unavailable())
            return fut
        if req is None:
            call = Call(call_id, frame, fut)
        else:
            retryable = self.limits.retry_on_crash or req.method in IDEMPOTENT
            call = Call(call_id, frame, fut, request_id=req.request_id, retryable=retryable)
        self._by_future[fut] = call
        if not self._queue:
            slot = self._free_slot()
            if slot is not None:
                self._send(slot, call)
                return fut
        self._queue.append(call)
        return fut

    def _unavailable(self) -> PluginUnavailableError:
        failure = self._workers.failure
        if failure is not None:
            return PluginUnavailableError(self.name, f"plugin failed: {reason_of(failure)}")
        return PluginUnavailableError(self.name, "the plugin is shutting down")

    def _free_slot(self, *, idle: bool = False) -> Slot | None:
        """The ready worker with the fewest calls in flight, if any has room.

        Ties go in turn, starting after the worker chosen last. `idle`: only a worker
        holding no call at all (for a suspect, which runs alone).
        """
        slots = self._workers.slots
        count = len(slots)
        best, fewest = None, 1 if idle else self.concurrency_per_worker
        running, alone, turn = self._running, self._alone, self._turn
        for i in range(count):
            slot = slots[(turn + i) % count]
            calls = running.get(slot)
            # No entry: the worker is gone (its slot is READY until its death is handled).
            if calls is None or slot.state != READY or slot in alone:
                continue
            held = len(calls)
            if held < fewest:
                best, fewest = slot, held
                if not held:
                    break
        if best is not None:
            self._turn = best.index + 1
        return best

    def _send(self, slot: Slot, call: Call) -> None:
        assert slot.proc is not None
        self._running[slot][call.call_id] = call
        call.slot = slot
        slot.proc.send(call.frame)

    def _send_queued(self) -> None:
        """Sends waiting calls to free workers, in order; a suspect waits for an idle one."""
        suspects = self._suspects
        while suspects:
            standby = self._workers.ready_standby()
            if standby is None or self._running.get(standby, True):
                break  # not ready, or busy with another suspect
            self._send(standby, suspects.popleft())
            self._alone.add(standby)
        queue = self._queue
        while queue:
            suspect = queue[0].strikes > 0
            slot = self._free_slot(idle=suspect)
            if slot is None:
                return
            self._send(slot, queue.popleft())
            if suspect:
                self._alone.add(slot)

    def _retry(self, calls: list[Call], exit_text: str) -> None:
        """Sends calls lost with a worker again, ahead of the waiting ones.

        Innocent calls go first; suspects after them, each to wait for an idle worker.
        Each gets a new id: ids only increase within a worker (worker.Worker.cancel).
        """
        ordered = sorted(calls, key=lambda c: c.strikes)
        suspects = sum(1 for c in ordered if c.strikes)
        for call in ordered:
            call.slot = None
            call.call_id = self._new_id()
            call.frame = fr.with_call_id(call.frame, call.call_id)
        if self.limits.standby:  # suspects wait for the standby, innocent calls go on
            self._suspects.extend(c for c in ordered if c.strikes)
            ordered = [c for c in ordered if not c.strikes]
        self._queue.extendleft(reversed(ordered))
        log.info(
            "plugin_calls_retried",
            plugin=self.name,
            calls=len(calls),
            suspects=suspects,
            exit=exit_text,
        )
        self._send_queued()

    def _on_every_state(
        self, kind: int, combine: Callable[[list[Response]], Response | None]
    ) -> asyncio.Future[Any]:
        """`kind` on every ready worker (callers hold the state alone: ABI rule 5)."""
        workers = self._workers
        # Every state shuts down, the standby's too; health is the serving workers'.
        targets = workers.ready_states() if kind == fr.SHUTDOWN else workers.ready_slots()
        if not targets and kind == fr.HEALTH and workers.failure is None and not workers.closing:
            call_id = self._new_id()  # no worker ready yet: the first one answers
            return self._submit(call_id, fr.frame(kind, call_id), None)
        assert self._loop is not None
        fut = self._loop.create_future()
        if not targets:
            if kind == fr.SHUTDOWN:
                fut.set_result(None)
            else:
                fut.set_exception(self._unavailable())
            return fut
        group = Group(fut, len(targets), combine)
        for slot in targets:
            if kind == fr.SHUTDOWN:
                workers.mark_stopping(slot)
            call_id = self._new_id()
            self._send(slot, Call(call_id, fr.frame(kind, call_id), None, group))
        return fut

    def _finish(self, call: Call, result: Any, error: BaseException | None) -> None:
        if call.cpu_used_ms is not None:
            msg = (
                f"the call used {call.cpu_used_ms} ms of CPU time, more than its "
                f"cpu_limit_ms of {self.limits.cpu_limit_ms}"
            )
            result, error = None, PluginTimeoutError(self.name, msg)
        call.frame = b""
        if call.group is not None:
            call.group.part_done(result, error)
            return
        fut = call.future
        assert fut is not None
        del self._by_future[fut]
        if fut.done():
            return
        if error is None:
            fut.set_result(result)
        else:
            fut.set_exception(error)

    def _unqueue(self, call: Call) -> None:
        (self._suspects if call in self._suspects else self._queue).remove(call)

    def _fail_queued(self, error: PluginError) -> None:
        queue, self._queue = self._queue, collections.deque()
        queue.extend(self._suspects)
        self._suspects.clear()
        for call in queue:
            self._finish(call, None, error)

    def _call_error(self, error: int, message: str) -> PluginError:
        if error == fr.ERR_CANCELLED:
            return PluginCancelledError(self.name, message)
        if error == fr.ERR_CALL:
            return PluginCallError(self.name, message)
        return PluginCallError(self.name, f"the worker failed around the call: {message}")

    def _expect_return(self, slot: Slot, call: Call) -> None:
        """Stops the worker unless `call` returns within CANCEL_GRACE."""
        assert self._loop is not None
        self._loop.call_later(CANCEL_GRACE, self._check_returned, slot, slot.proc, call)

    def _check_returned(self, slot: Slot, proc: object, call: Call) -> None:
        if slot.proc is not proc or proc is None or call.call_id not in self._running.get(slot, {}):
            return
        why = (
            "a call overran its cpu_limit_ms"
            if call.cpu_used_ms is not None
            else "a call ignored cancellation"
        )
        self._workers.stop(slot, why)


async def _after(retiring: list[asyncio.Future[None]], states: asyncio.Future[None]) -> None:
    """Waits for replaced workers to exit, then for the shutdown of the others."""
    await asyncio.wait(retiring)
    await states
