"""ProcessBackend: a plugin's calls run in worker processes, so a crash costs the calls on it.

It implements `runtime.backend.Backend` for `isolation: process`. The workers
themselves are the Supervisor's (supervisor.py); this module routes calls to them.
Each worker takes `concurrency_per_worker` calls at once (1 unless the plugin is
BW_FLAG_THREAD_SAFE: ABI rule 4 holds per process). Calls beyond that wait here, in
the host, until a ready worker has room; the one with the fewest calls gets it.

What happens when things go wrong:

- A worker that dies (any signal, `exit`, `abort`) fails the calls it held with
  PluginCrashedError naming how it died; the runner answers 502 and counts a failure
  on the breaker. Calls still waiting here never reached it: they go to the next
  ready worker.
- A plugin that cannot start (see supervisor.py) fails the calls waiting here, and
  every later one, with PluginUnavailableError and the reason.
- A call the host gives up on (`abandon`, after the runner set its cancel flag) is
  cancelled in the worker; if it has not returned after CANCEL_GRACE the worker is
  stopped and replaced. Its future completes only when the worker is gone, so the
  concurrency slot frees exactly when the work has really stopped. Other calls
  running on that worker die with it.
- `cpu_limit_ms` overruns are caught in the worker (see worker.CpuWatchdog) and
  treated like an abandoned call; the call fails with PluginTimeoutError. Only the
  calling thread's CPU time counts; threads the plugin starts itself are not charged.

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
    PluginCrashedError,
    PluginError,
    PluginLoadError,
    PluginTimeoutError,
    PluginUnavailableError,
    reason_of,
)
from backworks.isolation import framing as fr
from backworks.isolation.process import SUPPORTED
from backworks.isolation.supervisor import Slot, Supervisor
from backworks.plugins.loading import PluginSpec
from backworks.runtime.backend import PluginCalls

log = structlog.get_logger("backworks.isolation")

CANCEL_GRACE = 0.1  # a cancelled call may still return by itself within this


class _Group:
    """One call made on every worker's state (health, shutdown), answered as one."""

    __slots__ = ("combine", "error", "future", "left", "results")

    def __init__(
        self,
        future: asyncio.Future[Any],
        parts: int,
        combine: Callable[[list[Response]], Response | None],
    ) -> None:
        self.future = future
        self.left = parts
        self.combine = combine
        self.results: list[Response] = []
        self.error: BaseException | None = None

    def part_done(self, result: Response | None, error: BaseException | None) -> None:
        self.left -= 1
        if error is not None:
            self.error = self.error or error
        elif result is not None:
            self.results.append(result)
        if self.left == 0 and not self.future.done():
            if self.error is not None:
                self.future.set_exception(self.error)
            else:
                self.future.set_result(self.combine(self.results))


class _Call:
    __slots__ = ("abandoned", "call_id", "cpu_used_ms", "frame", "future", "group", "slot")

    def __init__(
        self,
        call_id: int,
        frame: bytes,
        future: asyncio.Future[Any] | None,
        group: _Group | None = None,
    ) -> None:
        self.call_id = call_id
        self.frame = frame
        self.future = future
        self.group = group
        self.slot: Slot | None = None
        self.abandoned = False
        self.cpu_used_ms: int | None = None


def _worst_health(reports: list[Response]) -> Response | None:
    """The least healthy report of all workers: 503 (or anything odd) > 429 > 200."""

    def severity(r: Response) -> int:
        return 0 if r.status == 200 else 1 if r.status == 429 else 2

    return max(reports, key=severity, default=None)


class ProcessBackend:
    """Runs one plugin's calls in worker processes (see the module's doc)."""

    def __init__(
        self,
        info: PluginInfo,
        spec: PluginSpec,
        limits: ProcessLimits | None = None,
        *,
        concurrency_per_worker: int = 1,
        init_timeout_ms: int = 30_000,
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
        init_frame = fr.encode_init(
            fr.WorkerInit(
                path=str(spec.path),
                name=spec.name,
                config_json=spec.config_json,
                allow_insecure_permissions=spec.allow_insecure_permissions,
                sha256=spec.sha256 or "",
                threads=concurrency_per_worker,
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
            init_timeout=init_timeout_ms / 1000,
            events=self,
        )
        # The calls each worker holds now, by slot index.
        self._running: list[dict[int, _Call]] = [{} for _ in self._workers.slots]
        self._queue: collections.deque[_Call] = collections.deque()
        self._by_future: dict[asyncio.Future[Any], _Call] = {}
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
        return self._submit(call_id, fr.encode_call(fr.HANDLE, call_id, req))

    def start_on_request(self, req: Request, cancel: CancelFlag) -> asyncio.Future[Response | None]:
        call_id = self._new_id()
        return self._submit(call_id, fr.encode_call(fr.ON_REQUEST, call_id, req))

    def start_on_response(
        self, req: Request, upstream: Response, cancel: CancelFlag
    ) -> asyncio.Future[Response | None]:
        call_id = self._new_id()
        return self._submit(call_id, fr.encode_call(fr.ON_RESPONSE, call_id, req, upstream))

    def start_health(self) -> asyncio.Future[Response | None]:
        """Asks every ready worker's state; answers with the least healthy report."""
        return self._on_every_state(fr.HEALTH, _worst_health)

    def start_shutdown(self) -> asyncio.Future[None]:
        """Runs the plugin's `shutdown` in every ready worker; the workers then exit."""
        self._workers.begin_shutdown()
        self._fail_queued(PluginUnavailableError(self.name, "the plugin is shutting down"))
        return self._on_every_state(fr.SHUTDOWN, lambda _: None)

    def abandon(self, call: asyncio.Future[Any]) -> None:
        """Cancels the call in its worker; stops the worker if the call keeps running."""
        entry = self._by_future.get(call)
        if entry is None or call.done():
            return
        slot = entry.slot
        if slot is None:  # still waiting here: it never reached a worker
            self._queue.remove(entry)
            self._finish(entry, None, PluginCancelledError(self.name, "given up on in the queue"))
            return
        if entry.abandoned or slot.proc is None:
            return
        entry.abandoned = True
        slot.proc.send_control(fr.frame(fr.CANCEL, entry.call_id))
        self._expect_return(slot, entry)

    def inline_calls(self) -> PluginCalls | None:
        """None: the plugin lives in other processes, never on the event loop."""
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
                    "in_flight": len(self._running[slot.index]),
                    "last_exit": slot.last_exit,
                }
                for slot in self._workers.slots
            ],
            "memory_limit_mb": self.limits.memory_limit_mb,
            "cpu_limit_ms": self.limits.cpu_limit_ms,
            "worker_failure": reason_of(failure) if failure is not None else None,
        }

    # -- the SlotEvents protocol of supervisor.py --------------------------------

    def worker_ready(self, slot: Slot) -> None:
        self._dispatch()
        settled = self._settled
        if settled is not None and not settled.done() and self._workers.all_ready():
            settled.set_result(None)

    def worker_frame(self, slot: Slot, kind: int, call_id: int, body: bytes) -> None:
        running = self._running[slot.index]
        if fr.RESPONSE <= kind <= fr.FAILED:
            call = running.pop(call_id, None)
            if call is None:
                return
            if kind == fr.RESPONSE:
                self._finish(call, fr.decode_response(body), None)
            elif kind == fr.NONE:
                self._finish(call, None, None)
            else:
                self._finish(call, None, self._call_error(*fr.decode_failure(body)))
            self._workers.answered(slot)
            if self._queue:
                self._dispatch()
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

    def worker_lost(self, slot: Slot, exit_text: str, stop_reason: str | None) -> int:
        calls, self._running[slot.index] = self._running[slot.index], {}
        for call in calls.values():
            if call.abandoned:
                error: PluginError = PluginTimeoutError(
                    self.name, f"the call ignored cancellation and was stopped: {exit_text}"
                )
            elif stop_reason is not None:
                error = PluginCrashedError(self.name, f"{exit_text}: stopped because {stop_reason}")
            else:
                error = PluginCrashedError(self.name, exit_text)
            self._finish(call, None, error)
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

    def _submit(self, call_id: int, frame: bytes) -> asyncio.Future[Any]:
        if self._loop is None:
            msg = f"plugin {self.name!r}: ProcessBackend.start() was not called"
            raise RuntimeError(msg)
        fut = self._loop.create_future()
        if self._workers.failure is not None or self._workers.closing:
            fut.set_exception(self._unavailable())
            return fut
        call = _Call(call_id, frame, fut)
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

    def _free_slot(self) -> Slot | None:
        """The ready worker with the fewest calls in flight, if any has room."""
        best, fewest = None, self.concurrency_per_worker
        for slot in self._workers.ready_slots():
            held = len(self._running[slot.index])
            if held < fewest:
                best, fewest = slot, held
        return best

    def _send(self, slot: Slot, call: _Call) -> None:
        assert slot.proc is not None
        self._running[slot.index][call.call_id] = call
        call.slot = slot
        frame, call.frame = call.frame, b""
        slot.proc.send(frame)

    def _dispatch(self) -> None:
        queue = self._queue
        while queue:
            slot = self._free_slot()
            if slot is None:
                return
            self._send(slot, queue.popleft())

    def _on_every_state(
        self, kind: int, combine: Callable[[list[Response]], Response | None]
    ) -> asyncio.Future[Any]:
        """`kind` on every ready worker (callers hold the state alone: ABI rule 5)."""
        workers = self._workers
        targets = workers.ready_slots()
        if not targets and kind == fr.HEALTH and workers.failure is None and not workers.closing:
            call_id = self._new_id()  # no worker ready yet: the first one answers
            return self._submit(call_id, fr.frame(kind, call_id))
        assert self._loop is not None
        fut = self._loop.create_future()
        if not targets:
            if kind == fr.SHUTDOWN:
                fut.set_result(None)
            else:
                fut.set_exception(self._unavailable())
            return fut
        group = _Group(fut, len(targets), combine)
        for slot in targets:
            if kind == fr.SHUTDOWN:
                workers.mark_stopping(slot)
            call_id = self._new_id()
            self._send(slot, _Call(call_id, fr.frame(kind, call_id), None, group))
        return fut

    def _finish(self, call: _Call, result: Any, error: BaseException | None) -> None:
        if call.cpu_used_ms is not None:
            msg = (
                f"the call used {call.cpu_used_ms} ms of CPU time, more than its "
                f"cpu_limit_ms of {self.limits.cpu_limit_ms}"
            )
            result, error = None, PluginTimeoutError(self.name, msg)
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

    def _fail_queued(self, error: PluginError) -> None:
        queue, self._queue = self._queue, collections.deque()
        for call in queue:
            self._finish(call, None, error)

    def _call_error(self, error: int, message: str) -> PluginError:
        if error == fr.ERR_CANCELLED:
            return PluginCancelledError(self.name, message)
        if error == fr.ERR_CALL:
            return PluginCallError(self.name, message)
        return PluginCallError(self.name, f"the worker failed around the call: {message}")

    def _expect_return(self, slot: Slot, call: _Call) -> None:
        """Stops the worker unless `call` returns within CANCEL_GRACE."""
        assert self._loop is not None
        self._loop.call_later(CANCEL_GRACE, self._check_returned, slot, slot.proc, call)

    def _check_returned(self, slot: Slot, proc: object, call: _Call) -> None:
        if slot.proc is not proc or proc is None or call.call_id not in self._running[slot.index]:
            return
        why = (
            "a call overran its cpu_limit_ms"
            if call.cpu_used_ms is not None
            else "a call ignored cancellation"
        )
        self._workers.stop(slot, why)
