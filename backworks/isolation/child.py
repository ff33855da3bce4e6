"""The worker process's own main: loads one plugin with backworks.abi, serves the host's calls.

The host starts it as `python -m backworks.isolation.child CALLS CONTROL TABLE
CRASH HOST_PID`: two file descriptors of socketpairs, two of shared memory files, and
the host's pid:

- CALLS carries the INIT frame, then one frame per call each way (and the plugin's
  log lines). The main thread reads it. A plugin that takes one call at a time (not
  BW_FLAG_THREAD_SAFE) runs each call right there, on the thread that read it: no
  hand-off between threads on the way. A thread-safe plugin's calls go to a pool of
  `threads` threads. Answers leave in batches (Outbox): the host writes a loop
  turn's calls in one write, and the answers to what one read brought come back in
  one write too: one wake-up of the host per batch, not per call.
- CONTROL carries CANCEL frames, read by a thread of their own, so a call can be
  cancelled while the main thread is inside it. EOF on it means the host is gone
  or done with us: exit at once, even in the middle of a hung call, and without
  `shutdown` (an orderly stop sends SHUTDOWN first). With PR_SET_PDEATHSIG the
  kernel also kills us when the host dies, even by SIGKILL.
- TABLE is the running table (see process.py): call thread i writes the id of the
  call it runs at entry i before the plugin sees it. Its answer made, the id moves
  to an unsent entry (Outbox), cleared once the write carrying the answer returned.
  The host reads it when we die, to know which calls had started, and which of
  those had finished but lost their answer with us.
- CRASH is where faulthandler writes if we die of a signal; the host reads it when
  we are gone and logs it as one event (process.py).

Limits: `memory_limit_mb` is RLIMIT_AS, set before the library is loaded;
`cpu_limit_ms` is a watchdog thread reading each running call's thread CPU clock.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import itertools
import mmap
import os
import queue
import resource
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from backworks.abi import CancelFlag, PluginInstance
from backworks.errors import (
    AbiMismatchError,
    PluginCallError,
    PluginCancelledError,
    PluginInitError,
    PluginLoadError,
)
from backworks.isolation import framing as fr
from backworks.plugins.loading import PluginSpec, check_file, open_checked

_PR_SET_PDEATHSIG = 1
_READ_SIZE = 256 * 1024
EXIT_PROTOCOL = 3


def die_with_host(host_pid: int) -> None:
    """Linux: have the kernel SIGKILL us when the host's spawning thread exits."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    # The host may have died before prctl took effect: then we are someone else's.
    if os.getppid() != host_pid:
        os._exit(0)


class Channel:
    """The worker's end of the socketpair: blocking reads, locked whole-frame writes."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        self._reader = fr.FrameReader()

    def send(self, data: bytes) -> None:
        try:
            with self._lock:
                self._sock.sendall(data)
        except OSError:
            os._exit(0)  # the host is gone: nobody is left to answer

    def batches(self) -> Iterator[list[tuple[int, int, bytes]]]:
        """The frames each read completes (never an empty list), until EOF."""
        while True:
            try:
                data = self._sock.recv(_READ_SIZE)
            except OSError:
                return
            if not data:
                return
            frames = self._reader.feed(data)
            if frames:
                yield frames


class Outbox:
    """Answers written in batches, without breaking the running table's promise.

    A call whose answer is made but not written yet is neither running nor done: were
    we to die now, its answer would be lost although it ran. Its id therefore moves
    from its thread's running entry to an unsent entry of the table (written there
    first, so a death in between shows it running: the cautious reading) and stays
    until the write that carries its answer has returned: the bytes are in the
    kernel's socket buffer then, and the host drains them even after our death. So
    the host can tell a call that never started (sent again) from one that ran and
    lost its answer (outcome unknown unless it may run twice), and from the one that
    was running (the suspect).

    Writing is group commit: `add(..., write=True)` writes at once unless another
    thread is writing, in which case that writer takes the answer along in its next
    write. The reading thread of a BW_FLAG_NONBLOCKING plugin adds without writing
    and calls `flush` once it has run everything one read brought. When the unsent
    entries run out, the thread that needs one writes first.
    """

    __slots__ = ("_answers", "_channel", "_cond", "_entries", "_free", "_table", "_writing")

    def __init__(self, channel: Channel, table: mmap.mmap | bytearray, entries: range) -> None:
        self._channel = channel
        self._table = table
        self._free = list(reversed(entries))  # offsets of free unsent entries
        self._answers: list[bytes] = []
        self._entries: list[int] = []  # the unsent entries of the answers in _answers
        self._cond = threading.Condition(threading.Lock())
        self._writing = False  # a thread is between taking a batch and freeing its entries

    def add(self, answer: bytes, call_id: int, running: int, *, write: bool) -> None:
        """Queues `answer` of `call_id`, which ran at running entry `running`."""
        table, cond = self._table, self._cond
        with cond:
            while not self._free:
                if self._writing:
                    cond.wait()
                else:
                    self._write_all()
            entry = self._free.pop()
            fr.TABLE_ENTRY.pack_into(table, entry, call_id)  # answered, not sent
            fr.TABLE_ENTRY.pack_into(table, running, 0)  # the thread is free
            self._answers.append(answer)
            self._entries.append(entry)
            if write and not self._writing:
                self._write_all()

    def flush(self) -> None:
        """Returns once every answer added so far is written."""
        with self._cond:
            while self._writing:
                self._cond.wait()
            if self._answers:
                self._write_all()

    def _write_all(self) -> None:
        """Writes batches until none is left; called and returns with the lock held."""
        cond, table, pack = self._cond, self._table, fr.TABLE_ENTRY.pack_into
        self._writing = True
        while self._answers:
            answers, entries = self._answers, self._entries
            self._answers, self._entries = [], []
            cond.release()
            try:
                self._channel.send(answers[0] if len(answers) == 1 else b"".join(answers))
                for entry in entries:  # sent: cleared only now
                    pack(table, entry, 0)
            finally:
                cond.acquire()
            self._free.extend(entries)
        self._writing = False
        cond.notify_all()


# ---------------------------------------------------------------------------
# Limits


def _proc_status_kb(field: str) -> int:
    """A `VmSize`-style line of /proc/self/status in KiB; 0 where there is none."""
    try:
        with Path("/proc/self/status").open(encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def limit_address_space(limit_mb: int) -> None:
    """RLIMIT_AS = what this process maps now + `limit_mb`, soft and hard.

    The interpreter's own baseline (measured here, before the plugin is loaded) is not
    counted against the plugin. What counts after: the library's mappings, its heap,
    thread stacks it creates, and the worker's own later allocations. The hard limit
    is lowered too, so the plugin cannot raise it back.
    """
    baseline = _proc_status_kb("VmSize") * 1024
    limit = baseline + limit_mb * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


class CpuWatchdog:
    """Cancels a call that used more than `limit_ms` of CPU time on its thread.

    Each call's own thread CPU clock (pthread_getcpuclockid) is read, so time other
    calls, the interpreter's other threads or the plugin's helper threads use is not
    charged to it, and time spent sleeping or blocked is not CPU time. Since a thread's
    CPU time cannot grow faster than wall time, the watchdog sleeps exactly until the
    earliest moment a running call could reach its limit: no polling of idle calls.
    An overrun sets the call's cancel word and is reported to the host, which kills
    this worker if the call does not return promptly.
    """

    def __init__(self, limit_ms: int, report: Callable[[int, int], None]) -> None:
        self._limit = limit_ms / 1000
        self._report = report
        self._cond = threading.Condition()
        self._running: dict[int, tuple[int, float, CancelFlag]] = {}
        threading.Thread(target=self._watch, name="cpu-watchdog", daemon=True).start()

    def begin(self, call_id: int, cancel: CancelFlag) -> None:
        clock = time.pthread_getcpuclockid(threading.get_ident())
        with self._cond:
            self._running[call_id] = (clock, time.clock_gettime(clock), cancel)
            self._cond.notify()

    def end(self, call_id: int) -> None:
        with self._cond:
            self._running.pop(call_id, None)

    def _watch(self) -> None:
        while True:
            over: list[tuple[int, float, CancelFlag]] = []
            with self._cond:
                soonest: float | None = None
                for call_id, (clock, start, cancel) in list(self._running.items()):
                    left = self._limit - (time.clock_gettime(clock) - start)
                    if left <= 0:
                        del self._running[call_id]
                        over.append((call_id, self._limit - left, cancel))
                    elif soonest is None or left < soonest:
                        soonest = left
                if not over:
                    self._cond.wait(None if soonest is None else max(soonest, 0.001))
                    continue
            for call_id, used, cancel in over:
                cancel.set()
                self._report(call_id, round(used * 1000))


# ---------------------------------------------------------------------------
# The worker


def spec_of(init: fr.WorkerInit) -> PluginSpec:
    """The PluginSpec an INIT frame describes, for the same checks the host makes."""
    return PluginSpec(
        name=init.name,
        path=Path(init.path),
        config_json=init.config_json,
        allow_insecure_permissions=init.allow_insecure_permissions,
        sha256=init.sha256 or None,
    )


class Worker:
    """One plugin state in this process: loads it, runs the host's calls, reports back."""

    def __init__(
        self, channel: Channel, init: fr.WorkerInit, table: mmap.mmap | bytearray | None = None
    ) -> None:
        self.channel = channel
        self.init = init
        self.instance: PluginInstance | None = None
        # Entry i belongs to call thread i (the main thread is 0 when it runs calls);
        # the entries after the threads' are the outbox's.
        self._threads = max(init.threads, 1)
        self._table = table if table is not None else bytearray(fr.table_size(init.threads))
        first_unsent = self._threads * fr.TABLE_ENTRY.size
        self._outbox = Outbox(
            channel, self._table, range(first_unsent, len(self._table), fr.TABLE_ENTRY.size)
        )
        # Each answer written at once; only a BW_FLAG_NONBLOCKING plugin's calls, run
        # back to back on the reading thread, leave a read's answers for one write.
        self._write_each = True
        self._pool: queue.SimpleQueue[tuple[int, int, bytes, CancelFlag]] | None = None
        self._watchdog: CpuWatchdog | None = None
        # Cancel words of the calls in flight. A CANCEL may overtake its call (they
        # travel on different channels): it is then kept in _early until the call
        # arrives. _last_id tells such a CANCEL from a late one for a finished call.
        self._lock = threading.Lock()
        self._cancels: dict[int, CancelFlag] = {}
        self._early: set[int] = set()
        self._last_id = 0

    def start(self) -> bool:
        """Loads and initialises the plugin; reports READY or START_FAILED."""
        init = self.init
        baseline_rss = 0
        try:
            spec = spec_of(init)
            check_file(spec)
            if init.probe:
                library = open_checked(spec)
            else:
                # Threads first: their stacks belong to the baseline, not to the plugin.
                if init.cpu_limit_ms:
                    self._watchdog = CpuWatchdog(init.cpu_limit_ms, self._cpu_exceeded)
                if init.threads > 1:
                    self._pool = queue.SimpleQueue()
                    for i in range(init.threads):
                        threading.Thread(
                            target=self._serve_pool,
                            args=(self._entry(i),),
                            name=f"plugin-call-{i}",
                            daemon=True,
                        ).start()
                baseline_rss = _proc_status_kb("VmRSS")
                if init.memory_limit_mb:
                    limit_address_space(init.memory_limit_mb)
                library = open_checked(spec)
                self.instance = library.instantiate(
                    init.config_json, self._log, max_response_bytes=init.max_response_mb << 20
                )
                # Its calls take microseconds: holding an answer until the read's
                # other calls ran delays it by little, and saves a write and a wake-up.
                self._write_each = self._pool is not None or not library.info.nonblocking
        except AbiMismatchError as e:
            self.channel.send(fr.encode_start_failed(fr.ERR_ABI, e.path, e.reason))
            return False
        except PluginLoadError as e:
            self.channel.send(fr.encode_start_failed(fr.ERR_LOAD, e.path, e.reason))
            return False
        except PluginInitError as e:
            self.channel.send(fr.encode_start_failed(fr.ERR_INIT, init.path, e.message))
            return False
        except MemoryError:
            reason = f"ran out of memory while starting (memory_limit_mb={init.memory_limit_mb})"
            self.channel.send(fr.encode_start_failed(fr.ERR_INIT, init.path, reason))
            return False
        ready = fr.Ready(
            info=library.info,
            pid=os.getpid(),
            baseline_rss_kb=baseline_rss,
        )
        self.channel.send(fr.encode_ready(ready))
        return not init.probe

    def serve(self, batches: Iterator[list[tuple[int, int, bytes]]]) -> None:
        """Runs (or hands to the pool) every call frame until EOF.

        Calls run here write their answers once the whole read's calls ran.
        """
        pool, execute, register = self._pool, self._execute, self.register
        flush = self._outbox.flush
        entry = self._entry(0)
        for frames in batches:
            for kind, call_id, body in frames:
                if kind not in fr.CALL_KINDS:
                    print(f"backworks worker: unexpected frame kind {kind}", file=sys.stderr)
                    os._exit(EXIT_PROTOCOL)
                cancel = register(call_id)
                if pool is None:
                    execute(kind, call_id, body, cancel, entry)
                else:
                    pool.put((kind, call_id, body, cancel))
            if pool is None:
                flush()

    def _entry(self, index: int) -> int:
        """The offset of call thread `index`'s entry in the running table."""
        return min(index, self._threads - 1) * fr.TABLE_ENTRY.size

    def _serve_pool(self, entry: int) -> None:
        assert self._pool is not None
        pool, execute = self._pool, self._execute
        while True:
            execute(*pool.get(), entry)

    def _execute(
        self, kind: int, call_id: int, body: bytes, cancel: CancelFlag, entry: int
    ) -> None:
        table, watchdog = self._table, self._watchdog
        fr.TABLE_ENTRY.pack_into(table, entry, call_id)  # started: the host must know
        if watchdog is not None:
            watchdog.begin(call_id, cancel)
        try:
            answer = self._run(kind, call_id, body, cancel)
        finally:
            if watchdog is not None:
                watchdog.end(call_id)
            with self._lock:
                del self._cancels[call_id]
        # Its id stays in the table until the answer is written: a call that ran is
        # never taken for one that did not, whatever moment we die at.
        self._outbox.add(answer, call_id, entry, write=self._write_each)
        if kind == fr.SHUTDOWN:
            self._outbox.flush()
            os._exit(0)

    def register(self, call_id: int) -> CancelFlag:
        cancel = CancelFlag()
        with self._lock:
            self._last_id = call_id
            if call_id in self._early:
                self._early.discard(call_id)
                cancel.set()
            self._cancels[call_id] = cancel
        return cancel

    def cancel(self, call_id: int) -> None:
        with self._lock:
            cancel = self._cancels.get(call_id)
            if cancel is not None:
                cancel.set()
            elif 0 < (call_id - self._last_id) % 2**32 < 2**31:  # not arrived yet
                self._early.add(call_id)

    def watch_control(self, sock: socket.socket) -> None:
        """The control thread: CANCEL frames, and EOF when the host is gone."""
        reader = fr.FrameReader()
        while True:
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            if not data:
                os._exit(0)
            try:
                frames = reader.feed(data)
            except fr.ProtocolError:
                os._exit(EXIT_PROTOCOL)
            for kind, call_id, _ in frames:
                if kind == fr.CANCEL:
                    self.cancel(call_id)

    def _run(self, kind: int, call_id: int, body: bytes, cancel: CancelFlag) -> bytes:
        instance = self.instance
        assert instance is not None
        try:
            if kind == fr.HANDLE:
                return fr.encode_response(call_id, instance.handle(fr.decode_request(body), cancel))
            if kind == fr.ON_REQUEST:
                resp = instance.on_request(fr.decode_request(body), cancel)
            elif kind == fr.ON_RESPONSE:
                req, upstream = fr.decode_request_and_upstream(body)
                resp = instance.on_response(req, upstream, cancel)
            elif kind == fr.HEALTH:
                resp = instance.health()
            else:
                instance.shutdown()
                resp = None
        except PluginCancelledError as e:
            return fr.encode_failure(call_id, fr.ERR_CANCELLED, e.message)
        except PluginCallError as e:
            return fr.encode_failure(call_id, fr.ERR_CALL, e.message)
        except MemoryError:
            msg = f"the worker ran out of memory (memory_limit_mb={self.init.memory_limit_mb})"
            return fr.encode_failure(call_id, fr.ERR_INTERNAL, msg)
        except Exception as e:
            return fr.encode_failure(call_id, fr.ERR_INTERNAL, f"{type(e).__name__}: {e}")
        if resp is None:
            return fr.frame(fr.NONE, call_id)
        return fr.encode_response(call_id, resp)

    def _log(self, level: int, message: str) -> None:
        self.channel.send(fr.encode_log(level, message))

    def _cpu_exceeded(self, call_id: int, used_ms: int) -> None:
        self.channel.send(fr.encode_cpu_exceeded(call_id, used_ms))


def main(argv: list[str]) -> int:
    """`python -m backworks.isolation.child CALLS CONTROL TABLE CRASH HOST_PID`: its life."""
    if len(argv) != 6:
        usage = "usage: python -m backworks.isolation.child CALLS CONTROL TABLE CRASH HOST_PID"
        print(usage, file=sys.stderr)
        return 2
    calls_fd, control_fd, table_fd, crash_fd, host_pid = (int(a) for a in argv[1:])
    die_with_host(host_pid)
    table = mmap.mmap(table_fd, 0)
    os.close(table_fd)
    # Ctrl-C in a terminal reaches the whole process group; the host decides when
    # its workers stop (after draining), not the keyboard.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A crash leaves the Python side of the story in the crash file (kept open for good).
    faulthandler.enable(file=crash_fd)
    channel = Channel(socket.socket(fileno=calls_fd))
    batches = channel.batches()
    first = next(batches, None)
    if first is None:
        return 0
    (kind, _, body), rest = first[0], first[1:]
    if kind != fr.INIT:
        print(f"backworks worker: expected INIT, got frame kind {kind}", file=sys.stderr)
        return EXIT_PROTOCOL
    worker = Worker(channel, fr.decode_init(body), table)
    threading.Thread(
        target=worker.watch_control,
        args=(socket.socket(fileno=control_fd),),
        name="control",
        daemon=True,
    ).start()
    if worker.start():
        worker.serve(itertools.chain([rest] if rest else [], batches))
    # Daemon threads may sit inside plugin code: leave without waiting for them.
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
