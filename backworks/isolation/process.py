"""One worker process as the host holds it: spawn, channel, signals, exit and reaping.

The rules this module keeps, each against a way worker processes go wrong:

- Workers are spawned from the event-loop thread (the only place `spawn` can run,
  since it needs the running loop). The worker asks for PR_SET_PDEATHSIG, and Linux
  fires that when the *thread* that forked it exits: the loop thread lives as long
  as the host, an executor thread might not.
- Signals go through a pidfd (Linux), never a bare PID: a PID recycled after the
  worker was reaped cannot be signalled by mistake. Exit is learnt from the pidfd
  becoming readable, without polling, and the worker is reaped at once: no zombies.
  Without pidfds (other systems) a thread waits for the exit with WNOWAIT, so the
  PID stays reserved by the zombie until the loop thread reaps it.
- Whatever the worker wrote before it died is drained from the channel before its
  exit is reported, so an answer sent just before a crash still counts.
- Which calls had started when a worker died is read from its running table: a
  small shared memory file (memfd) where each of the worker's call threads writes
  the id of the call it runs; once the call has returned, its id moves to an
  unsent entry until the write carrying the answer returns (answers leave in
  batches: child.Outbox). It survives the worker, so a call the worker never began
  can be told from one it was running, and both from one that ran and whose
  answer was lost with the worker.
- A native crash's output (faulthandler's dump of the worker's Python threads) goes
  to a crash file of its own (a memfd the host keeps open), not to the shared
  stderr: the host reads it at reaping (`crash_dump`), and the supervisor logs it as
  one JSON event instead of ~45 lines of text in the middle of the JSON log.
- Memory is the worker's own: its RSS read from /proc/<pid>/statm while it lives
  (the PID cannot be reused before we reap it). The peak the kernel reports at
  reaping (`ru_maxrss`) starts at the host's own peak, inherited through fork and
  exec; `rss_floor_kb` records that inheritance so a caller can tell a worker's own
  peak from the host's.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import resource
import select
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable

import structlog

from backworks.isolation.framing import TABLE_ENTRY, FrameReader, ProtocolError, table_size
from backworks.spawn import python_child

log = structlog.get_logger("backworks.isolation")

FrameHandler = Callable[[int, int, bytes], None]
WORKER_MODULE = "backworks.isolation.child"
_READ_SIZE = 256 * 1024
# A worker whose channel closed but which has not exited (it should not happen:
# only exit closes it) is killed after this long, so no call can wait forever.
_EOF_KILL_DELAY = 1.0
_HAVE_PIDFD = hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")
SUPPORTED = _HAVE_PIDFD or hasattr(os, "waitid")
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024 if hasattr(os, "sysconf") else 4


CRASH_DUMP_MAX = 64 * 1024  # of a crash file, the host reads at most this much


def _memfd(name: str) -> int:
    if hasattr(os, "memfd_create"):
        return os.memfd_create(name)
    with tempfile.TemporaryFile() as f:  # pragma: no cover - systems without memfd
        return os.dup(f.fileno())


def _running_table(threads: int) -> tuple[int, mmap.mmap]:
    """A shared memory file for the call ids of `threads` threads and unsent answers."""
    size = table_size(threads)
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("backworks-calls")
    else:  # pragma: no cover - systems without memfd: an unlinked temporary file
        with tempfile.TemporaryFile() as f:
            fd = os.dup(f.fileno())
    try:
        os.ftruncate(fd, size)
        return fd, mmap.mmap(fd, size)
    except BaseException:
        os.close(fd)
        raise


class WorkerProcess:
    """A worker process and its end of the channel; used from the event-loop thread."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        popen: subprocess.Popen[bytes],
        sock: socket.socket,
        control: socket.socket,
        on_frame: FrameHandler,
        on_exit: Callable[[WorkerProcess], None],
        table: mmap.mmap | None = None,
        crash_fd: int = -1,
        threads: int = 1,
    ) -> None:
        self.pid = popen.pid
        self.status: int | None = None  # the raw wait status, once reaped
        # Peak resident set from the kernel's accounting at reaping; it includes the
        # host's own peak, inherited at exec: see rss_floor_kb.
        self.maxrss_kb = 0
        # The host's peak RSS just after the spawn, an upper bound of what the worker
        # inherited: a maxrss_kb above it is the worker's own peak.
        self.rss_floor_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.signals_sent: list[int] = []
        self._table = table
        self._running_bytes = TABLE_ENTRY.size * max(threads, 1)  # then the unsent entries
        self._crash_fd = crash_fd  # the worker's crash file; read at reaping
        self.crash_dump = ""  # what a native crash wrote there (faulthandler's dump)
        self._statm = -1
        self._loop = loop
        self._popen = popen
        self._sock: socket.socket | None = sock
        self._control = control  # CANCEL frames only; never read from
        self._fd = sock.fileno()
        self._on_frame = on_frame
        self._on_exit = on_exit
        self._reader = FrameReader()
        self._outbox: list[bytes] = []  # frames of this loop turn, not yet written
        self._pending: list[bytes] = []  # bytes the socket did not take yet
        self._timers: list[asyncio.TimerHandle] = []
        self._pidfd = -1
        self._exited = False
        self._lock = threading.Lock()  # only for the fallback exit watcher
        loop.add_reader(self._fd, self._readable)
        if _HAVE_PIDFD:
            self._pidfd = os.pidfd_open(self.pid)
            loop.add_reader(self._pidfd, self._pidfd_readable)
        else:  # pragma: no cover - exercised on systems without pidfds
            threading.Thread(
                target=self._watch_exit, name=f"worker-{self.pid}-exit", daemon=True
            ).start()

    @classmethod
    def spawn(
        cls,
        on_frame: FrameHandler,
        on_exit: Callable[[WorkerProcess], None],
        *,
        env: dict[str, str] | None = None,
        threads: int = 1,
    ) -> WorkerProcess:
        """Starts `python -P -m backworks.isolation.child` with its channels and table.

        The calls channel carries calls and answers; the control channel carries
        cancellations, so they reach a worker whose main thread is inside a call. The
        running table has an entry for each of the worker's `threads` call threads.
        """
        loop = asyncio.get_running_loop()  # also proves we are on the loop thread
        table_fd, table = _running_table(threads)
        crash_fd = _memfd("backworks-crash")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        control, their_control = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = (theirs.fileno(), their_control.fileno(), table_fd, crash_fd)
        argv, child_env = python_child(WORKER_MODULE, *map(str, fds), str(os.getpid()), env=env)
        try:
            popen = subprocess.Popen(
                argv,
                pass_fds=fds,
                stdin=subprocess.DEVNULL,
                env=child_env,
            )
        except BaseException:
            ours.close()
            control.close()
            table.close()
            os.close(crash_fd)
            raise
        finally:
            theirs.close()
            their_control.close()
            os.close(table_fd)  # our mapping stays, and so does the worker's
        ours.setblocking(False)
        control.setblocking(False)
        try:
            return cls(loop, popen, ours, control, on_frame, on_exit, table, crash_fd, threads)
        except BaseException:  # pidfd_open failed: do not leave the child behind
            ours.close()
            control.close()
            table.close()
            os.close(crash_fd)
            popen.kill()
            popen.wait()
            raise

    # -- state -------------------------------------------------------------------

    @property
    def exited(self) -> bool:
        return self._exited

    def describe_exit(self) -> str:
        """`worker 1234 died with SIGSEGV`, `worker 1234 exited with status 3`."""
        status = self.status
        if status is None:
            return f"worker {self.pid} is gone (its exit status was not available)"
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = f"signal {sig}"
            core = " (core dumped)" if os.WCOREDUMP(status) else ""
            return f"worker {self.pid} died with {name}{core}"
        return f"worker {self.pid} exited with status {os.waitstatus_to_exitcode(status)}"

    def started_calls(self) -> frozenset[int]:
        """The calls the worker had begun and not answered on the channel yet.

        Those its threads are running, and those whose answers wait to be written.
        """
        return self.running_calls() | self.unsent_answers()

    def running_calls(self) -> frozenset[int]:
        """The calls the worker's threads are running (or were, once it is gone)."""
        return self._table_ids(0, self._running_bytes)

    def unsent_answers(self) -> frozenset[int]:
        """The calls that returned in the worker and whose answers were not written yet."""
        return self._table_ids(self._running_bytes, None)

    def _table_ids(self, start: int, stop: int | None) -> frozenset[int]:
        table = self._table
        if table is None:
            return frozenset()
        ids = TABLE_ENTRY.iter_unpack(table[start:stop])
        return frozenset(call_id for (call_id,) in ids if call_id)

    def rss_kb(self) -> int:
        """The worker's resident memory now, in KiB; 0 once it is gone or unknown.

        Cheap (one pread of /proc/<pid>/statm on a descriptor kept open): it is read
        after calls. Only while the worker is not reaped, so the PID is still its own.
        """
        if self.status is not None:
            return 0
        try:
            if self._statm < 0:
                self._statm = os.open(f"/proc/{self.pid}/statm", os.O_RDONLY | os.O_CLOEXEC)
            return int(os.pread(self._statm, 128, 0).split()[1]) * _PAGE_KB
        except (OSError, ValueError, IndexError):
            return 0

    @property
    def killed_by_host(self) -> bool:
        """The signal that ended the worker is one this host sent."""
        return (
            self.status is not None
            and os.WIFSIGNALED(self.status)
            and os.WTERMSIG(self.status) in self.signals_sent
        )

    # -- the channel -------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Queues one frame; a worker that is gone gets nothing (its exit follows).

        The frames queued during one turn of the event loop leave together, at its end:
        one write, and one wake-up of the worker, for a burst of calls.
        """
        if self._sock is None:
            return
        self._outbox.append(data)
        if len(self._outbox) == 1:
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        sock = self._sock
        outbox = self._outbox
        if sock is None or not outbox:
            outbox.clear()
            return
        data = outbox[0] if len(outbox) == 1 else b"".join(outbox)
        outbox.clear()
        if self._pending:
            self._pending.append(data)
            return
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            return  # the worker is dying; its exit fails the calls it held
        if sent < len(data):
            self._pending.append(data[sent:])
            self._loop.add_writer(self._fd, self._writable)

    def send_control(self, data: bytes) -> None:
        """Sends a small control frame (CANCEL), best effort: a kill may follow anyway."""
        if self._sock is None:
            return
        with contextlib.suppress(OSError):  # full (never, in practice) or gone
            self._control.send(data)

    def _writable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        data = b"".join(self._pending)
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._pending.clear()
            self._loop.remove_writer(self._fd)
            return
        self._pending = [data[sent:]] if sent < len(data) else []
        if not self._pending:
            self._loop.remove_writer(self._fd)

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            data = sock.recv(_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            self._feed(data)
        else:
            self._channel_closed()

    def _feed(self, data: bytes) -> None:
        try:
            for kind, call_id, body in self._reader.feed(data):
                self._on_frame(kind, call_id, body)
        except ProtocolError as e:
            # Nothing more from this worker can be trusted: it dies like a crash. The
            # fault is in the worker's bytes, so our decoder's traceback would not help.
            log.error("plugin_worker_protocol_error", pid=self.pid, error=str(e))  # noqa: TRY400
            self.close_channel()
            self.signal(signal.SIGKILL)

    def _drain(self) -> None:
        """Reads what a dead worker left in the channel (it can no longer block)."""
        while self._sock is not None:
            try:
                data = self._sock.recv(_READ_SIZE)
            except (BlockingIOError, InterruptedError, OSError):
                return
            if not data:
                return
            self._feed(data)

    def _channel_closed(self) -> None:
        self.close_channel()
        if not self._exited:
            self._timers.append(self._loop.call_later(_EOF_KILL_DELAY, self.signal, signal.SIGKILL))

    def close_channel(self) -> None:
        """Closes our ends: the worker reads EOF and exits, even in the middle of a call."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        self._control.close()
        self._loop.remove_reader(self._fd)
        if self._pending:
            self._loop.remove_writer(self._fd)
            self._pending.clear()
        sock.close()

    # -- signals and exit --------------------------------------------------------

    def signal(self, sig: int) -> bool:
        """Sends `sig` to this worker only; False when it has already exited."""
        with self._lock:
            if self._exited:
                return False
            try:
                if self._pidfd >= 0:
                    signal.pidfd_send_signal(self._pidfd, sig)
                else:  # pragma: no cover - the zombie keeps the PID ours until reaped
                    os.kill(self.pid, sig)
            except ProcessLookupError:
                return False
            self.signals_sent.append(sig)
            return True

    def terminate(self, grace: float) -> None:
        """SIGTERM now, SIGKILL if it is still there after `grace` seconds."""
        if self.signal(signal.SIGTERM):
            self._timers.append(self._loop.call_later(grace, self.signal, signal.SIGKILL))

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def _pidfd_readable(self) -> None:
        self._loop.remove_reader(self._pidfd)
        self._reap()

    def _watch_exit(self) -> None:  # pragma: no cover - systems without pidfds
        # WNOWAIT: the worker stays a zombie, so its PID stays ours until _reap.
        os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
            self._loop.call_soon_threadsafe(self._reap)

    def _reap(self) -> None:
        if self.status is not None:
            return
        try:
            pid, status, usage = os.wait4(self.pid, os.WNOHANG)
        except ChildProcessError:  # reaped by someone else: the status is lost
            pid, status, maxrss = self.pid, None, 0
        else:
            maxrss = usage.ru_maxrss
        if pid == 0:  # not exited after all; cannot happen with a readable pidfd
            self._timers.append(self._loop.call_later(0.01, self._reap))
            return
        with self._lock:
            self._exited = True
        self._reaped(status, maxrss)

    def _reaped(self, status: int | None, maxrss_kb: int) -> None:
        self.status = status
        self.maxrss_kb = maxrss_kb
        # Popen must not wait for this PID again: it may belong to someone else now.
        self._popen.returncode = os.waitstatus_to_exitcode(status) if status is not None else -1
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._statm >= 0:
            os.close(self._statm)
            self._statm = -1
        if self._crash_fd >= 0:
            with contextlib.suppress(OSError):
                dump = os.pread(self._crash_fd, CRASH_DUMP_MAX, 0)
                self.crash_dump = dump.decode("utf-8", "replace").strip()
            os.close(self._crash_fd)
            self._crash_fd = -1
        self._drain()
        self.close_channel()
        try:
            self._on_exit(self)
        finally:
            if self._table is not None:
                self._table.close()
                self._table = None

    def wait_blocking(self, timeout: float) -> bool:
        """Waits up to `timeout` s for the exit and handles it now; for closing only."""
        if self.status is not None:
            return True
        if self._pidfd >= 0:
            ready, _, _ = select.select([self._pidfd], [], [], timeout)
            if not ready:
                return False
            self._loop.remove_reader(self._pidfd)
            self._reap()
            return True
        deadline = time.monotonic() + timeout  # pragma: no cover - no pidfds
        while time.monotonic() < deadline:  # pragma: no cover
            if os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG):
                self._reap()
                return True
            time.sleep(0.005)
        return False  # pragma: no cover
