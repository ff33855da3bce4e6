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
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import tempfile
import threading
from pathlib import Path

import attrs

from backworks.errors import PluginLoadError
from backworks.plugins.trust import TrustedFile

_CHUNK = 1 << 20


@attrs.frozen
class LibraryCopy:
    """One private copy: where it is, which version it is, and its SHA-256."""

    path: Path
    version: int
    sha256: str


class LibraryCopies:
    """Makes the private copies; thread-safe (loads run on executor threads)."""

    def __init__(self, prefix: str = "backworks-plugins-") -> None:
        self._prefix = prefix
        self._folder: Path | None = None
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
        folder = self._ensure_folder()
        with self._lock:
            version = next(self._versions)
        name = source.path.name
        partial = folder / f".{version}.partial"
        try:
            digest = _copy_file(source.fd, partial)
            if _identity(source.stat) != _identity(os.fstat(source.fd)):
                msg = "changed while it was being copied (still being written?)"
                raise PluginLoadError(source.path, msg)
            final = folder / f"{_stem(name)}.v{version}-{digest[:12]}{_suffix(name)}"
            partial.replace(final)
        except OSError as e:
            raise PluginLoadError(source.path, f"cannot be copied: {e.strerror or e}") from e
        finally:
            partial.unlink(missing_ok=True)
        return LibraryCopy(final, version, digest)

    def discard(self, copy: LibraryCopy) -> None:
        """Removes a copy that was never loaded (its canary failed before dlopen)."""
        copy.path.unlink(missing_ok=True)

    def close(self) -> None:
        """Removes the folder; what is loaded from it stays mapped."""
        with self._lock:
            folder, self._folder = self._folder, None
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def _ensure_folder(self) -> Path:
        with self._lock:
            if self._folder is None:
                # mkdtemp makes the folder 0700, with a name nobody can guess.
                self._folder = Path(tempfile.mkdtemp(prefix=self._prefix))
            return self._folder


def _copy_file(fd: int, target: Path) -> str:
    digest = hashlib.sha256()
    # 0o700: the loader needs read and execute; nobody else needs anything.
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
    with os.fdopen(out, "wb") as dst:
        offset = 0
        # pread: the descriptor's position is nobody's business, it may be shared.
        while chunk := os.pread(fd, _CHUNK, offset):
            digest.update(chunk)
            dst.write(chunk)
            offset += len(chunk)
    return digest.hexdigest()


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _suffix(name: str) -> str:
    return Path(name).suffix


def _stem(name: str) -> str:
    return Path(name).stem
