"""ProcessBackend: a plugin's calls run in worker processes, so a crash costs one call.

It implements `executor.Backend` for `isolation: process`. Each of `workers` slots
holds one worker process at a time, with `concurrency_per_worker` calls in flight on
it (1 unless the plugin is BW_FLAG_THREAD_SAFE: ABI rule 4 holds per process). Calls
beyond that wait here, in the host, until a ready worker has room.

What happens when things go wrong:

- A worker that dies (any signal, `exit`, `abort`) fails the calls it held with
  PluginCrashedError naming how it died; the runner answers 502 and counts a failure
  on the breaker. Calls still waiting here never reached it: they go to the next
  ready worker. The slot is respawned after a backoff (0.1 s doubling to 5 s, reset
  once a new worker answers a call).
- A worker that dies 3 times in a row before becoming ready, or whose `init` fails,
  fails the plugin: later calls get PluginUnavailableError with the reason at once,
  and nothing is respawned.
- A call the host gives up on (`abandon`, after the runner set its cancel flag) is
  cancelled in the worker; if it has not returned after CANCEL_GRACE the worker is
  stopped (SIGTERM, SIGKILL after KILL_GRACE) and replaced at once. Its future
  completes only when the worker is gone, so the concurrency slot frees exactly when
  the work has really stopped. Other calls running on that worker die with it.
- `cpu_limit_ms` overruns are caught in the worker (see worker.CpuWatchdog) and
  treated like an abandoned call; the call fails with PluginTimeoutError. Only the
  calling thread's CPU time counts; threads the plugin starts itself are not charged.
- `memory_limit_mb` is RLIMIT_AS in the worker on top of its baseline address space
  (see worker.limit_address_space). Going over it is not a signal of its own: the
  plugin's allocation fails and it crashes or aborts, or returns BW_FAIL. When a
  worker dies after its peak RSS (from the kernel, at reaping) grew by most of the
  limit, the crash message says it most likely ran out of memory. Memory reserved
  but never touched is not seen that way; the crash is still reported by signal.

Everything here runs on the event-loop thread; no locks.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import signal
import time
from collections.abc import Callable
from typing import Any

import structlog

from backworks.abi import CancelFlag, LogSink, PluginInfo, Request, Response
from backworks.errors import (
    AbiMismatchError,
    PluginCallError,
    PluginCancelledError,
    PluginCrashedError,
    PluginError,
    PluginInitError,
    PluginLoadError,
    PluginTimeoutError,
    PluginUnavailableError,
)
from backworks.isolation import framing as fr
from backworks.isolation.process import SUPPORTED, WorkerProcess
from backworks.logs import plugin_log_sink
from backworks.registry import PluginSpec

log = structlog.get_logger("backworks.isolation")

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0
START_ATTEMPTS = 3  # deaths in a row before ever becoming ready that fail the plugin
CANCEL_GRACE = 0.1  # a cancelled call may still return by itself within this
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

StartError = PluginError | PluginLoadError


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
        self.slot: _Slot | None = None
        self.abandoned = False
        self.cpu_used_ms: int | None = None


class _Slot:
    """One worker position: the process running there now, and its history."""

    __slots__ = (
        "baseline_rss_kb",
        "calls",
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
        self.calls: dict[int, _Call] = {}
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
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def _worst_health(reports: list[Response]) -> Response | None:
    """The least healthy report of all workers: 503 (or anything odd) > 429 > 200."""

    def severity(r: Response) -> int:
        return 0 if r.status == 200 else 1 if r.status == 429 else 2

    return max(reports, key=severity, default=None)


def _start_error(name: str, error: int, path: str, message: str) -> StartError:
    if error == fr.ERR_ABI:
        return AbiMismatchError(path, message)
    if error == fr.ERR_LOAD:
        return PluginLoadError(path, message)
    return PluginInitError(name, message)


def _reason(error: StartError) -> str:
    return error.message if isinstance(error, PluginError) else str(error)


class ProcessBackend:
    """Runs one plugin's calls in `workers` worker processes (see the module's doc)."""

    def __init__(
        self,
        info: PluginInfo,
        spec: PluginSpec,
        *,
        workers: int = 1,
        concurrency_per_worker: int = 1,
        memory_limit_mb: int | None = None,
        cpu_limit_ms: int | None = None,
        init_timeout_ms: int = 30_000,
    ) -> None:
        problems = []
        if workers < 1:
            problems.append(f"'workers' must be >= 1 (got {workers})")
        if concurrency_per_worker < 1:
            problems.append(f"'concurrency_per_worker' must be >= 1 (got {concurrency_per_worker})")
        elif concurrency_per_worker > 1 and not info.thread_safe:
            problems.append(
                f"'concurrency_per_worker' must be 1 for a plugin without BW_FLAG_THREAD_SAFE "
                f"(got {concurrency_per_worker}); add workers instead"
            )
        if memory_limit_mb is not None and memory_limit_mb < 1:
            problems.append(f"'memory_limit_mb' must be a positive int (got {memory_limit_mb})")
        if cpu_limit_ms is not None and cpu_limit_ms < 1:
            problems.append(f"'cpu_limit_ms' must be a positive int (got {cpu_limit_ms})")
        if problems:
            raise ValueError("; ".join(problems))
        if not SUPPORTED:  # pragma: no cover
            raise PluginLoadError(spec.path, "process isolation needs pidfd or waitid (Linux)")
        self.info = info
        self.name = spec.name
        self.path = str(spec.path)
        self.concurrency_per_worker = concurrency_per_worker
        self.memory_limit_mb = memory_limit_mb
        self.cpu_limit_ms = cpu_limit_ms
        self.init_timeout = init_timeout_ms / 1000
        self._init_frame = fr.encode_init(
            fr.WorkerInit(
                path=str(spec.path),
                name=spec.name,
                config_json=spec.config_json,
                allow_insecure_permissions=spec.allow_insecure_permissions,
                sha256=spec.sha256 or "",
                threads=concurrency_per_worker,
                memory_limit_mb=memory_limit_mb or 0,
                cpu_limit_ms=cpu_limit_ms or 0,
            )
        )
        # With glibc every thread's first allocation may reserve a 64 MiB arena of
        # address space, which would count against RLIMIT_AS: one arena for all.
        self._env = {"MALLOC_ARENA_MAX": "1"} if memory_limit_mb else {}
        self._slots = [_Slot(i) for i in range(workers)]
        self._queue: collections.deque[_Call] = collections.deque()
        self._by_future: dict[asyncio.Future[Any], _Call] = {}
        self._last_id = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._settled: asyncio.Future[None] | None = None
        self._failure: StartError | None = None
        self._closing = False
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
        for slot in self._slots:
            self._spawn(slot)
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
        outlives its plugin. Waits at most CLOSE_WAIT s in total for the reaping; a
        worker not reaped by then is reaped by its pidfd reader later.
        """
        if self._closed:
            return
        self._closed = self._closing = True
        self._fail_queued(PluginUnavailableError(self.name, "the plugin is shutting down"))
        running = []
        for slot in self._slots:
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
        self._closing = True
        self._fail_queued(PluginUnavailableError(self.name, "the plugin is shutting down"))
        for slot in self._slots:
            if slot.state == BACKOFF:
                slot.cancel_timer()
                slot.state = STOPPED
            elif slot.state == STARTING:  # no state to shut down yet
                self._stop(slot, "the plugin is shutting down")
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

    def snapshot(self) -> dict[str, Any]:
        return {
            "isolation": "process",
            "workers": [
                {
                    "pid": slot.proc.pid if slot.proc is not None else None,
                    "state": slot.state,
                    "restarts": slot.restarts,
                    "crashes": slot.crashes,
                    "in_flight": len(slot.calls),
                    "last_exit": slot.last_exit,
                }
                for slot in self._slots
            ],
            "memory_limit_mb": self.memory_limit_mb,
            "cpu_limit_ms": self.cpu_limit_ms,
            "worker_failure": _reason(self._failure) if self._failure is not None else None,
        }

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
        if self._failure is not None or self._closing:
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
        if self._failure is not None:
            return PluginUnavailableError(self.name, f"plugin failed: {_reason(self._failure)}")
        return PluginUnavailableError(self.name, "the plugin is shutting down")

    def _free_slot(self) -> _Slot | None:
        """The ready worker with the fewest calls in flight, if any has room."""
        best, fewest = None, self.concurrency_per_worker
        for slot in self._slots:
            if slot.state == READY and len(slot.calls) < fewest:
                best, fewest = slot, len(slot.calls)
        return best

    def _send(self, slot: _Slot, call: _Call) -> None:
        assert slot.proc is not None
        slot.calls[call.call_id] = call
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
        targets = [slot for slot in self._slots if slot.state == READY]
        if not targets and kind == fr.HEALTH and self._failure is None and not self._closing:
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
                slot.state = STOPPING
            call_id = self._new_id()
            self._send(slot, _Call(call_id, fr.frame(kind, call_id), None, group))
        return fut

    def _finish(self, call: _Call, result: Any, error: BaseException | None) -> None:
        if call.cpu_used_ms is not None:
            msg = (
                f"the call used {call.cpu_used_ms} ms of CPU time, more than its "
                f"cpu_limit_ms of {self.cpu_limit_ms}"
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

    def _expect_return(self, slot: _Slot, call: _Call) -> None:
        """Stops the worker unless `call` returns within CANCEL_GRACE."""
        assert self._loop is not None
        self._loop.call_later(CANCEL_GRACE, self._check_returned, slot, slot.proc, call)

    def _check_returned(self, slot: _Slot, proc: WorkerProcess | None, call: _Call) -> None:
        if slot.proc is not proc or proc is None or call.call_id not in slot.calls:
            return
        why = (
            "a call overran its cpu_limit_ms"
            if call.cpu_used_ms is not None
            else "a call ignored cancellation"
        )
        self._stop(slot, why)

    # -- frames from the workers -------------------------------------------------

    def _on_frame(self, slot: _Slot, kind: int, call_id: int, body: bytes) -> None:
        if fr.RESPONSE <= kind <= fr.FAILED:
            call = slot.calls.pop(call_id, None)
            if call is None:
                return
            if kind == fr.RESPONSE:
                self._finish(call, fr.decode_response(body), None)
            elif kind == fr.NONE:
                self._finish(call, None, None)
            else:
                self._finish(call, None, self._call_error(*fr.decode_failure(body)))
            slot.failures_in_a_row = 0
            if self._queue:
                self._dispatch()
        elif kind == fr.LOG:
            if slot.log_sink is not None:
                slot.log_sink(*fr.decode_log(body))
        elif kind == fr.CPU_EXCEEDED:
            call = slot.calls.get(call_id)
            if call is not None and call.cpu_used_ms is None:
                call.cpu_used_ms = fr.decode_cpu_exceeded(body)
                log.warning(
                    "plugin_cpu_limit_exceeded",
                    plugin=self.name,
                    pid=slot.proc.pid if slot.proc else None,
                    cpu_ms=call.cpu_used_ms,
                    cpu_limit_ms=self.cpu_limit_ms,
                )
                self._expect_return(slot, call)
        elif kind == fr.READY:
            self._ready(slot, fr.decode_ready(body))
        elif kind == fr.START_FAILED:
            self._fail(_start_error(self.name, *fr.decode_start_failed(body)))
        else:
            msg = f"unexpected frame kind {kind} from worker"
            raise fr.ProtocolError(msg)

    def _ready(self, slot: _Slot, ready: fr.Ready) -> None:
        if slot.state != STARTING:
            return
        slot.cancel_timer()
        slot.state = READY
        slot.starts_failed = 0
        slot.baseline_rss_kb = ready.baseline_rss_kb
        log.info("plugin_worker_ready", plugin=self.name, pid=ready.pid, slot=slot.index)
        self._dispatch()
        settled = self._settled
        if (
            settled is not None
            and not settled.done()
            and all(s.state == READY for s in self._slots)
        ):
            settled.set_result(None)

    # -- worker processes --------------------------------------------------------

    def _spawn(self, slot: _Slot) -> None:
        try:
            proc = WorkerProcess.spawn(
                functools.partial(self._on_frame, slot),
                functools.partial(self._on_exit, slot),
                env=self._env,
            )
        except OSError as e:
            slot.state = FAILED
            self._fail(PluginLoadError(self.path, f"cannot start a worker process: {e}"))
            return
        slot.proc = proc
        slot.state = STARTING
        slot.stop_reason = None
        slot.log_sink = plugin_log_sink(self.name, worker_pid=proc.pid)
        proc.send(self._init_frame)
        assert self._loop is not None
        slot.timer = self._loop.call_later(self.init_timeout, self._init_overdue, slot, proc)

    def _init_overdue(self, slot: _Slot, proc: WorkerProcess) -> None:
        slot.timer = None
        if slot.proc is proc and slot.state == STARTING:
            ms = round(self.init_timeout * 1000)
            self._fail(PluginInitError(self.name, f"init did not finish within {ms} ms"))

    def _stop(self, slot: _Slot, reason: str) -> None:
        """Stops the worker in `slot` on purpose (SIGTERM, then SIGKILL)."""
        proc = slot.proc
        if proc is None or slot.stop_reason is not None:
            return
        slot.stop_reason = reason
        slot.state = STOPPING
        log.warning("plugin_worker_stopping", plugin=self.name, pid=proc.pid, reason=reason)
        proc.terminate(KILL_GRACE)

    def _exit_text(self, slot: _Slot, proc: WorkerProcess) -> str:
        text = proc.describe_exit()
        if proc.status is None or proc.killed_by_host:
            return text
        limit = self.memory_limit_mb
        grown_mb = (proc.maxrss_kb - slot.baseline_rss_kb) / 1024
        if limit and grown_mb >= MEMORY_HINT_SHARE * limit:
            return (
                f"{text} after its memory grew by {grown_mb:.0f} MB: it most likely ran out "
                f"of its memory_limit_mb of {limit}"
            )
        if text.endswith("died with SIGKILL"):
            return f"{text} (not sent by this host: the kernel's OOM killer, or an operator)"
        return text

    def _on_exit(self, slot: _Slot, proc: WorkerProcess) -> None:
        if slot.proc is not proc:
            return
        slot.proc = None
        slot.cancel_timer()
        before_ready = slot.state == STARTING
        stop_reason, slot.stop_reason = slot.stop_reason, None
        text = slot.last_exit = self._exit_text(slot, proc)
        calls, slot.calls = slot.calls, {}
        for call in calls.values():
            if call.abandoned:
                error: PluginError = PluginTimeoutError(
                    self.name, f"the call ignored cancellation and was stopped: {text}"
                )
            elif stop_reason is not None:
                error = PluginCrashedError(self.name, f"{text}: stopped because {stop_reason}")
            else:
                error = PluginCrashedError(self.name, text)
            self._finish(call, None, error)

        if self._closing or self._failure is not None:
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
                self._fail(PluginInitError(self.name, reason))
                return
        slot.failures_in_a_row += 1
        delay = min(BACKOFF_FIRST * 2 ** (slot.failures_in_a_row - 1), BACKOFF_MAX)
        slot.state = BACKOFF
        log.warning(
            "plugin_worker_crashed",
            plugin=self.name,
            pid=proc.pid,
            exit=text,
            calls_lost=len(calls),
            restart_in_ms=round(delay * 1000),
        )
        assert self._loop is not None
        slot.timer = self._loop.call_later(delay, self._respawn, slot)

    def _respawn(self, slot: _Slot) -> None:
        slot.timer = None
        if self._closing or self._failure is not None:
            return
        slot.restarts += 1
        self._spawn(slot)

    def _fail(self, error: StartError) -> None:
        """Marks the plugin failed: no more calls, no more respawns.

        Workers still starting are stopped; ready ones finish what they hold and stay
        idle, so their states still get `shutdown` when the plugin is closed.
        """
        if self._failure is not None:
            return
        self._failure = error
        log.error("plugin_workers_failed", plugin=self.name, reason=_reason(error))
        self._fail_queued(self._unavailable())
        for slot in self._slots:
            if slot.state in (STARTING, BACKOFF):
                slot.cancel_timer()
                if slot.proc is not None:
                    self._stop(slot, "the plugin failed")
                slot.state = FAILED
        settled = self._settled
        if settled is not None and not settled.done():
            settled.set_exception(error)


async def probe(spec: PluginSpec, *, timeout: float = 30.0) -> PluginInfo:
    """Reads a library's descriptor in a worker process, never loading it in the host.

    Makes the same file checks as loading for use (permissions, pinned digest, the
    name the config expects) but runs no `init`. Raises PluginLoadError or
    AbiMismatchError naming the fault.
    """
    loop = asyncio.get_running_loop()
    result: asyncio.Future[PluginInfo] = loop.create_future()
    exited: asyncio.Future[None] = loop.create_future()

    def on_frame(kind: int, call_id: int, body: bytes) -> None:
        if result.done():
            return
        if kind == fr.READY:
            result.set_result(fr.decode_ready(body).info)
        elif kind == fr.START_FAILED:
            result.set_exception(_start_error(spec.name, *fr.decode_start_failed(body)))

    def on_exit(proc: WorkerProcess) -> None:
        if not result.done():
            why = f"{proc.describe_exit()} while reading the library's descriptor"
            result.set_exception(PluginLoadError(spec.path, why))
        exited.set_result(None)

    init = fr.WorkerInit(
        path=str(spec.path),
        name=spec.name,
        allow_insecure_permissions=spec.allow_insecure_permissions,
        sha256=spec.sha256 or "",
        probe=True,
    )
    proc = WorkerProcess.spawn(on_frame, on_exit)
    proc.send(fr.encode_init(init))
    try:
        return await asyncio.wait_for(asyncio.shield(result), timeout)
    except TimeoutError:
        msg = f"reading the descriptor did not finish within {timeout * 1000:.0f} ms"
        raise PluginLoadError(spec.path, msg) from None
    finally:
        proc.close_channel()  # EOF: a worker still there leaves
        try:
            await asyncio.wait_for(asyncio.shield(exited), 1.0)
        except TimeoutError:
            proc.signal(signal.SIGKILL)
            proc.wait_blocking(1.0)
        if result.done() and not result.cancelled():
            result.exception()  # retrieved: whatever it was has been raised already
