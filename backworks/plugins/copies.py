"""Private copies of plugin libraries: each loaded version is a file of its own.

Every version of a plugin is loaded from a copy in a folder only this server can
write (mode 0700, made per server and removed at its close), never from the file in
the plugin folder. Two reasons:

- The dynamic loader caches libraries by path (and by device and inode): loading
  `libkit.so` again after it was rebuilt would hand back the version already mapped.
  A copy has a new name and a new inode, so it is loaded afresh.
- A library written in place (`cp new.so libkit.so` truncates and rewrites the same
  inode) would change the pages of the version that is running, which crashes it.
  The running version's copy is never written again.

A copy is made from a file already opened and checked (trust.open_trusted), read
through that descriptor, never opened again by name: a file swapped after the check
is not the one copied. The source must not change during the copy (size and
modification time, read from the same descriptor), so a library still being written
is not taken whole; the copy's SHA-256 is that of the bytes copied, which is what a
`sha256:` pin is checked against. Removing the folder at close does not unmap anything: native
code is never unloaded (see abi.NativeLibrary), and a mapped file outlives its name.

The copy does not depend on the folders above its own. Kubernetes makes an emptyDir
/tmp mode 0777 without the sticky bit: anyone there may rename our folder and put
another in its place. So the folder is held open from its creation, every copy is
written and opened again relative to that descriptor, and the copy is loaded through
it, as `/proc/<pid>/fd/<folder's fd>/<copy>` (also by this server's worker processes):
no rename outside our 0700 folder can change which file that names (trust.py knows
such a path). The copy's name holds a number no other copy in this process has: the
dynamic loader hands back an already loaded library for a name it has seen.

A server killed (SIGKILL, the OOM killer, a native crash) cannot remove its folder. So
each folder holds an `owner` file (pid and the process's start time, which tells a
reused pid apart), and the first copy a server makes removes the folders of owners
that are gone: a crash loop does not fill the temporary volume.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import shutil
import stat
import tempfile
import threading
from pathlib import Path

import attrs
import structlog

from backworks.errors import PluginLoadError
from backworks.plugins.trust import TrustedFile

log = structlog.get_logger("backworks.plugins")

_CHUNK = 1 << 20
# Numbers every copy made in this process apart (see the module).
_SERIALS = itertools.count(1)
PREFIX = "backworks-plugins-"
OWNER_FILE = "owner"
_PROC_FDS = Path("/proc/self/fd")
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = _READ_FLAGS | getattr(os, "O_DIRECTORY", 0)


@attrs.frozen
class LibraryCopy:
    """One private copy: the path to load it by, which version it is, and its SHA-256.

    `path` goes through the folder's descriptor where /proc exists (see the module);
    `folder` and `name` are where the copy lies.
    """

    path: Path
    version: int
    sha256: str
    folder: Path
    name: str
    source_key: tuple[int, int, int, int] | None = None  # the file copied, as `file_key`


def file_key(st: os.stat_result) -> tuple[int, int, int, int]:
    """What changes when a library is rebuilt or copied over: device, inode, size, mtime."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class LibraryCopies:
    """Makes the private copies; thread-safe (loads run on executor threads)."""

    def __init__(self, prefix: str = PREFIX) -> None:
        self._prefix = prefix
        self._folder: Path | None = None
        self._dir_fd = -1
        self._versions = itertools.count(1)
        self._lock = threading.Lock()

    @property
    def folder(self) -> Path | None:
        return self._folder

    def copy(self, source: TrustedFile) -> LibraryCopy:
        """Copies the opened `source` into the private folder; raises PluginLoadError
        naming `source.path`.

        Blocking (it reads the whole file): call it off the event loop.
        """
        try:
            folder, dir_fd = self._ensure_folder()
        except OSError as e:
            msg = f"cannot make a private copy folder: {e.strerror or e}"
            raise PluginLoadError(source.path, msg) from e
        with self._lock:
            version = next(self._versions)
        name = source.path.name
        partial = f".{version}.partial"
        try:
            digest, written = _copy_file(source.fd, partial, dir_fd)
            if file_key(source.stat) != file_key(os.fstat(source.fd)):
                msg = "changed while it was being copied (still being written?)"
                raise PluginLoadError(source.path, msg)
            serial = next(_SERIALS)
            final = f"{_stem(name)}.v{version}-{digest[:12]}.{serial}{_suffix(name)}"
            os.rename(partial, final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            now = os.stat(final, dir_fd=dir_fd, follow_symlinks=False)
        except OSError as e:
            raise PluginLoadError(source.path, f"cannot be copied: {e.strerror or e}") from e
        finally:
            _unlink(partial, dir_fd)
        if (now.st_dev, now.st_ino) != (written.st_dev, written.st_ino):
            # Only we can write our folder: this is no accident.
            raise PluginLoadError(source.path, "its private copy was replaced; try again")
        path = _load_path(folder, final, dir_fd)
        return LibraryCopy(path, version, digest, folder, final, file_key(source.stat))

    def discard(self, copy: LibraryCopy) -> None:
        """Removes a copy that was never loaded (its canary failed before dlopen)."""
        with self._lock:
            dir_fd = self._dir_fd
        if dir_fd >= 0 and copy.folder == self._folder:
            _unlink(copy.name, dir_fd)

    def close(self) -> None:
        """Removes the folder; what is loaded from it stays mapped."""
        with self._lock:
            folder, self._folder = self._folder, None
            dir_fd, self._dir_fd = self._dir_fd, -1
        if dir_fd >= 0:
            os.close(dir_fd)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def _ensure_folder(self) -> tuple[Path, int]:
        with self._lock:
            if self._folder is None:
                remove_orphans(Path(tempfile.gettempdir()), self._prefix)
                # mkdtemp makes the folder 0700, with a name nobody can guess; it is
                # held open at once, and used only through that descriptor after.
                folder = Path(tempfile.mkdtemp(prefix=self._prefix))
                dir_fd = os.open(folder, _DIR_FLAGS)
                st = os.fstat(dir_fd)
                if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) != 0o700:
                    os.close(dir_fd)
                    msg = f"{folder} was replaced as it was made"
                    raise OSError(msg)
                _write_owner(dir_fd)
                self._folder, self._dir_fd = folder, dir_fd
            return self._folder, self._dir_fd


def _copy_file(fd: int, target: str, dir_fd: int) -> tuple[str, os.stat_result]:
    digest = hashlib.sha256()
    # 0o700: the loader needs read and execute; nobody else needs anything.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _READ_FLAGS
    out = os.open(target, flags, 0o700, dir_fd=dir_fd)
    with os.fdopen(out, "wb") as dst:
        offset = 0
        # pread: the descriptor's position is nobody's business, it may be shared.
        while chunk := os.pread(fd, _CHUNK, offset):
            digest.update(chunk)
            dst.write(chunk)
            offset += len(chunk)
        written = os.fstat(out)
    return digest.hexdigest(), written


def _load_path(folder: Path, name: str, dir_fd: int) -> Path:
    """Where the copy is loaded from: through its folder's descriptor, where /proc is."""
    if _PROC_FDS.is_dir():
        return Path(f"/proc/{os.getpid()}/fd/{dir_fd}/{name}")
    return folder / name  # pragma: no cover -- macOS: no /proc; the folder is ours


def _unlink(name: str, dir_fd: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)


def _suffix(name: str) -> str:
    return Path(name).suffix


def _stem(name: str) -> str:
    return Path(name).stem


# -- folders left by servers that were killed --------------------------------------


def process_started(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot), or None if there is none.

    With the pid, it names one process: a pid reused later has another start time.
    Where /proc is missing, "?" for a process that exists (the pid alone decides).
    """
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return _exists(pid)
    # Field 22; the command (field 2) may hold spaces and parentheses: after its last ')'.
    fields = text.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else None


def _exists(pid: int) -> str | None:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return "?"
    return "?"


def _write_owner(dir_fd: int) -> None:
    pid = os.getpid()
    mark = f"{pid} {process_started(pid) or '?'}\n".encode()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _READ_FLAGS
    fd = os.open(OWNER_FILE, flags, 0o600, dir_fd=dir_fd)
    with os.fdopen(fd, "wb") as f:
        f.write(mark)


def _owner_gone(folder: Path) -> bool:
    """True when `folder`'s owner file names a process that no longer runs."""
    try:
        pid_text, _, started = (folder / OWNER_FILE).read_text().strip().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return False  # a folder of an older server, or one being made: leave it
    now = process_started(pid)
    if now is None:
        return True
    return "?" not in (now, started) and now != started


def remove_orphans(temp: Path, prefix: str = PREFIX) -> list[Path]:
    """Removes the copy folders in `temp` that are ours and whose owner is gone."""
    removed: list[Path] = []
    try:
        entries = list(temp.iterdir())
    except OSError:
        return removed
    for folder in entries:
        if not folder.name.startswith(prefix):
            continue
        try:
            st = folder.lstat()
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            continue
        if _owner_gone(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    if removed:
        log.info("plugin_copies_orphans_removed", folders=[str(f) for f in removed])
    return removed
