"""Reading plugin descriptors in child processes, so no library can break the host.

Loading a library runs its constructors, and `backworks_plugin_entry` (or a legacy
library's `plugin_info`) is plugin code: either may abort, segfault, hang or print.
So descriptors are read in a scanner process, `python -m backworks.plugins.examine`, one
file after another (GStreamer's plugin scanner is the model). The parent sends one
path at a time on a request pipe; the child announces the file before opening it
and reports the result on a result pipe. Neither pipe is stdin or stdout: a library
may read stdin or print, and the child's stdout goes to /dev/null. When a child dies
or hangs, the file it announced is the culprit: the parent kills the child, records
the culprit with the reason, and starts a fresh child for the files still to do.

This module holds both sides of that protocol and `ScanResult`, the value each file
ends up with (discovery re-exports it).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import IO, Any

import attrs

from backworks.abi import open_plugin_library
from backworks.errors import PluginLoadError
from backworks.spawn import python_child

SCANNER_MODULE = "backworks.plugins.examine"
JSON_KEYS = ("path", "ok", "name", "version", "description", "abi", "flags", "error")


def _names(flags: Iterable[str]) -> tuple[str, ...]:
    """Flag names arrive as JSON lists; a tuple keeps the frozen result unchangeable."""
    return tuple(flags)


_optional_str = attrs.validators.optional(attrs.validators.instance_of(str))


@attrs.frozen
class ScanResult:
    """What examining one library found: a usable plugin (`ok`), or why it is not one.

    `skipped` marks files that were never loaded because they are not Backworks
    plugins at all (no entry symbol, not a library): reported, but not a failure.
    """

    path: str = attrs.field(validator=attrs.validators.instance_of(str))
    ok: bool = attrs.field(validator=attrs.validators.instance_of(bool))
    name: str | None = attrs.field(default=None, validator=_optional_str)
    version: str | None = attrs.field(default=None, validator=_optional_str)
    description: str | None = attrs.field(default=None, validator=_optional_str)
    abi: str | None = attrs.field(default=None, validator=_optional_str)
    flags: tuple[str, ...] = attrs.field(
        default=(),
        converter=_names,
        validator=attrs.validators.deep_iterable(attrs.validators.instance_of(str)),
    )
    error: str | None = attrs.field(default=None, validator=_optional_str)
    skipped: bool = attrs.field(default=False, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if self.ok and (self.error is not None or self.name is None):
            msg = f"an ok result needs a name and no error (got {self!r})"
            raise ValueError(msg)
        if not self.ok and self.error is None:
            msg = f"a failed result needs an error (got {self!r})"
            raise ValueError(msg)

    @classmethod
    def failure(cls, path: str, error: str, *, skipped: bool = False) -> ScanResult:
        return cls(path=path, ok=False, error=error, skipped=skipped)

    def refused(self, error: str) -> ScanResult:
        """This result made unusable for `error`, keeping what the descriptor said."""
        return attrs.evolve(self, ok=False, error=error)

    def to_json(self) -> dict[str, Any]:
        """The public form (`--json`, the cache): exactly the keys of JSON_KEYS."""
        return {
            "path": self.path,
            "ok": self.ok,
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "abi": self.abi,
            "flags": list(self.flags),
            "error": self.error,
        }

    @classmethod
    def from_json(cls, data: object, *, skipped: bool = False) -> ScanResult:
        """The inverse of `to_json`; raises ValueError/TypeError on anything malformed."""
        if not isinstance(data, dict) or set(data) != set(JSON_KEYS):
            msg = f"expected an object with the keys {', '.join(JSON_KEYS)} (got {data!r:.200})"
            raise ValueError(msg)
        if not isinstance(data["flags"], list):
            msg = f"'flags' must be a list (got {data['flags']!r:.100})"
            raise TypeError(msg)
        return cls(**data, skipped=skipped)


@attrs.frozen
class Verdict:
    """A child's finding for one file, and whether it may be cached.

    A timeout or a scanner that cannot start says something about this run (a loaded
    machine, a broken install), not about the file: such verdicts are not `lasting`.
    """

    result: ScanResult
    lasting: bool


# ---------------------------------------------------------------------------
# The parent side


# A fresh interpreter that imports the ABI binding starts in ~0.1 s; this allows for
# a cold disk and a busy machine without waiting forever on a broken install.
_STARTUP_TIMEOUT_S = 30.0
# How much of a culprit's stderr goes into its error message.
_STDERR_TAIL = 300


class _ScannerBroken(Exception):
    """The scanner process itself cannot run; no file is to blame."""


class _Died(Exception):
    """The child stopped answering (exited, was killed, or broke the protocol)."""


class _Child:
    """One scanner process and its two pipes; examines files until it dies or closes."""

    def __init__(self, timeout_s: float) -> None:
        request_r, self._requests = os.pipe()
        self._results, result_w = os.pipe()
        # stderr goes to a file, not the terminal: a culprit's last words end up in its
        # error message, everything else the libraries chatter is dropped.
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 -- closed with the child
        # The child arms an alarm a little longer than the parent's own deadline, so a
        # hung child dies even if this process is killed before it can kill the child.
        fds_and_alarm = (request_r, result_w, min(math.ceil(timeout_s) + 5, 2**31 - 1))
        argv, env = python_child(SCANNER_MODULE, *map(str, fds_and_alarm))
        try:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self._stderr,
                pass_fds=(request_r, result_w),
                env=env,
            )
        except OSError as e:
            self._close_fds()
            msg = f"cannot start {sys.executable}: {e}"
            raise _ScannerBroken(msg) from e
        finally:
            os.close(request_r)
            os.close(result_w)
        self._buffer = b""
        self._killed = False
        self.examined = 0
        try:
            self._receive(time.monotonic() + _STARTUP_TIMEOUT_S, "ready")
        except (_Died, TimeoutError, ValueError) as e:
            tail = self._stderr_tail(0)
            self.kill()
            reason = f"the scanner process did not start: {e}" + (f" ({tail})" if tail else "")
            raise _ScannerBroken(reason) from e

    def examine(self, path: str, timeout_s: float) -> Verdict:
        """Has the child read `path`'s descriptor. When the child dies or overruns
        `timeout_s` on it, the child is killed and `path` gets the reason."""
        self.examined += 1
        deadline = time.monotonic() + timeout_s
        stderr_at: int | None = None
        try:
            self._send({"path": path})
            start = self._receive(deadline, "start")
            stderr_at = start["stderr_at"] if isinstance(start["stderr_at"], int) else None
            message = self._receive(deadline, "result")
            result = attrs.evolve(ScanResult.from_json(message["result"]), path=path)
        except TimeoutError:
            self.kill()
            return Verdict(ScanResult.failure(path, _timeout_reason(timeout_s)), lasting=False)
        except (_Died, ValueError, TypeError, KeyError) as e:
            return Verdict(ScanResult.failure(path, self._death_reason(e, stderr_at)), True)
        return Verdict(result, lasting=True)

    @property
    def alive(self) -> bool:
        return not self._killed

    def _send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message).encode() + b"\n"
        try:
            while data:
                data = data[os.write(self._requests, data) :]
        except OSError as e:  # BrokenPipeError: the child is gone
            msg = "the scanner process stopped reading"
            raise _Died(msg) from e

    def _receive(self, deadline: float, kind: str) -> dict[str, Any]:
        # poll, not select: the host may have more than 1024 fds open.
        poller = select.poll()
        poller.register(self._results, select.POLLIN)
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                msg = f"no {kind!r} message in time"
                raise TimeoutError(msg)
            if not poller.poll(remaining * 1000):
                continue
            chunk = os.read(self._results, 1 << 16)
            if not chunk:
                msg = "the result pipe closed"
                raise _Died(msg)
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        message = json.loads(line)
        if not isinstance(message, dict) or message.get("kind") != kind:
            msg = f"expected a {kind!r} message (got {line!r:.200})"
            raise ValueError(msg)
        return message

    def _death_reason(self, error: Exception, stderr_at: int | None) -> str:
        if isinstance(error, _Died):
            self._wait(1)  # the pipe closes a moment before the exit status is there
        rc = self.process.poll()
        tail = self._stderr_tail(stderr_at)
        self.kill()
        if rc is None or not isinstance(error, _Died):
            reason = f"corrupted the scanner's result pipe while loading ({error})"
        elif rc < 0:
            reason = f"crashed with {_signal_name(-rc)} while loading"
        else:
            reason = f"exited with status {rc} while loading"
        return reason + (f" (stderr: {tail})" if tail else "")

    def _stderr_tail(self, offset: int | None) -> str:
        if offset is None:
            return ""
        try:
            self._stderr.seek(offset)
            text = self._stderr.read(1 << 16).decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""
        text = " ".join(text.split())
        return text if len(text) <= _STDERR_TAIL else "..." + text[-_STDERR_TAIL:]

    def kill(self) -> None:
        self._killed = True
        if self.process.poll() is None:
            self.process.kill()
        self._wait(5)  # longer means it is stuck in the kernel: nothing more to do
        self._close_fds()

    def close(self) -> None:
        """Ends the child cleanly (EOF on its request pipe); kills it if it lingers."""
        self._requests = _close(self._requests)
        self._wait(2)
        self.kill()

    def _wait(self, timeout_s: float) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=timeout_s)

    def _close_fds(self) -> None:
        self._requests = _close(self._requests)
        self._results = _close(self._results)
        self._stderr.close()


def _close(fd: int) -> int:
    """Closes `fd` once; the -1 it returns keeps a second close from hitting an fd
    number that another thread has been given since."""
    if fd >= 0:
        os.close(fd)
    return -1


def _timeout_reason(timeout_s: float) -> str:
    return f"timed out after {timeout_s:g} s while loading"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class _Work:
    """The files still to examine, shared by the driver threads."""

    def __init__(self, paths: Iterable[str]) -> None:
        self._items: deque[tuple[str, bool]] = deque((p, False) for p in paths)
        self._lock = threading.Lock()
        self.stop = threading.Event()

    def take(self) -> tuple[str, bool] | None:
        with self._lock:
            if self.stop.is_set() or not self._items:
                return None
            return self._items.popleft()

    def retry_first(self, path: str) -> None:
        with self._lock:
            self._items.appendleft((path, True))


def _drive(work: _Work, verdicts: dict[str, Verdict], timeout_s: float) -> None:
    """Runs one child at a time over the shared work, replacing it when it dies."""
    child: _Child | None = None
    try:
        while (item := work.take()) is not None:
            path, is_retry = item
            if child is None:
                child = _Child(timeout_s)
            verdict = child.examine(path, timeout_s)
            if not child.alive:
                # A timeout is the one verdict of a dead child that is not lasting.
                crashed_late = verdict.lasting and child.examined > 1
                child = None
                # A library loaded earlier in that child may have left a thread that
                # crashed it later: blame `path` only once it crashes a fresh child too.
                if crashed_late and not is_retry:
                    work.retry_first(path)
                    continue
            verdicts[path] = verdict
    finally:
        if child is not None:
            child.close()


def examine_isolated(
    paths: Sequence[str], *, timeout_s: float, jobs: int | None = None
) -> dict[str, Verdict]:
    """Reads the descriptor of each of `paths` in scanner processes, `jobs` at a time.

    Every path gets a verdict: the plugin's descriptor, or why it is unusable. Nothing
    is loaded into this process.
    """
    if not paths:
        return {}
    # Two children by default: enough to keep one hang from stalling the rest, few
    # enough not to compete with a server starting on a small machine.
    jobs = max(1, min(jobs or min(2, os.cpu_count() or 1), len(paths)))
    work = _Work(paths)
    verdicts: dict[str, Verdict] = {}
    failures: list[Exception] = []

    def run() -> None:
        try:
            _drive(work, verdicts, timeout_s)
        except Exception as e:  # a broken install or no fds left: report it, stop cleanly
            failures.append(e)
            work.stop.set()

    threads = [threading.Thread(target=run, name=f"backworks-scanner-{i}") for i in range(jobs)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        # An interrupt (Ctrl-C) stops the drivers after their current file.
        work.stop.set()
    for path in paths:
        if path not in verdicts:
            why = str(failures[0]) if failures else "the scan was interrupted"
            verdicts[path] = Verdict(ScanResult.failure(path, f"not examined: {why}"), False)
    return verdicts


# ---------------------------------------------------------------------------
# The child side


def _examine_here(path: str) -> ScanResult:
    try:
        info = open_plugin_library(path).info
    except PluginLoadError as e:
        return ScanResult.failure(path, e.reason)
    except Exception as e:  # the parent must get an answer for every file
        return ScanResult.failure(path, f"unexpected error while loading: {e!r}")
    return ScanResult(
        path=path,
        ok=True,
        name=info.name,
        version=info.version,
        description=info.description,
        abi=info.abi,
        flags=info.flag_names,
    )


def _write(fd: int, kind: str, **fields: Any) -> None:
    data = json.dumps({"kind": kind, **fields}).encode() + b"\n"
    while data:
        data = data[os.write(fd, data) :]


def _stderr_offset() -> int | None:
    try:
        return os.lseek(2, 0, os.SEEK_CUR)
    except OSError:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m backworks.plugins.examine REQUEST_FD RESULT_FD ALARM_S`: the child's loop."""
    request_fd, result_fd, alarm_s = (int(a) for a in (argv or sys.argv[1:]))
    # A crashing library must not leave a core file in the host's working folder.
    _, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    _write(result_fd, "ready")
    with os.fdopen(request_fd, "rb") as requests:
        for line in requests:
            path = json.loads(line)["path"]
            _write(result_fd, "start", path=path, stderr_at=_stderr_offset())
            # SIGALRM's default action ends the process even while a constructor
            # holds the GIL: a hung child cannot outlive a parent that died.
            signal.alarm(alarm_s)
            result = _examine_here(path)
            signal.alarm(0)
            _write(result_fd, "result", result=result.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
