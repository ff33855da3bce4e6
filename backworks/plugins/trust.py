"""Checks made before a library's code is allowed to run in this process.

Loading a shared library runs its code, so a file that another user could have
replaced, or rewritten, is as good as that user's code. The rules are those of sshd's
StrictModes: the file, its folder and every folder above it up to the root must be
owned by root or by the server's (effective) user, and writable by nobody else. A
sticky folder that anyone may write, such as /tmp, is the one exception: there others
cannot rename or remove what they do not own, and the entry below it on the path is
itself checked for owner and mode.

The checks are made on an open file, never on a name that is opened again later:
`open_trusted` opens the library once, checks what it opened (fstat of the
descriptor), then the folders, then that the name still leads to the file it opened
(once the folders are known to be safe, nobody else can change what the name leads
to). The caller reads the library from that same descriptor (copies.py copies it), so
a file swapped after the check is never the one used.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import stat
from pathlib import Path
from types import TracebackType

from backworks.errors import PluginLoadError

try:
    import pwd
except ImportError:  # pragma: no cover -- Windows: no owners to check
    pwd = None  # type: ignore[assignment]

_CHUNK = 1 << 20
OPT_OUT = "set allow_insecure_permissions: true"
# O_NOFOLLOW: the name was resolved first; a link that appears there since is a swap.
_OPEN_FLAGS = (
    os.O_RDONLY
    | os.O_NONBLOCK  # a FIFO swapped in must not block us
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


class TrustedFile:
    """A library opened once and checked; read it through `fd`, close it with `with`."""

    def __init__(self, path: Path, fd: int, st: os.stat_result) -> None:
        self.path = path  # as the caller named it (errors name this)
        self.fd = fd
        self.stat = st

    def sha256(self) -> str:
        """The SHA-256 of the opened file's bytes, as lower-case hex."""
        digest = hashlib.sha256()
        offset = 0
        while block := os.pread(self.fd, _CHUNK, offset):
            digest.update(block)
            offset += len(block)
        return digest.hexdigest()

    def check_digest(self, expected: str) -> None:
        """Refuses the file unless the bytes opened have the SHA-256 `expected`."""
        check_digest_value(self.path, self.sha256(), expected)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __enter__(self) -> TrustedFile:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def open_trusted(path: Path, *, strict: bool = True) -> TrustedFile:
    """Opens `path` once and, if `strict`, checks owners and modes as the module says.

    Raises PluginLoadError naming `path`, and in the reason the exact file or folder at
    fault, its owner and mode, and the fix. Without `strict` (allow_insecure_permissions)
    the file is still opened once, so that what is read is one file.
    """
    if (held := held_descriptor(path)) is not None:
        return _open_held(path, held, strict=strict)
    real = Path(os.path.realpath(path))
    fd, st = _open_regular(path, real, "no such file")
    try:
        if strict:
            _check_strictly(path, real, st)
    except BaseException:
        os.close(fd)
        raise
    return TrustedFile(path, fd, st)


def _open_regular(path: Path, where: Path, missing: str) -> tuple[int, os.stat_result]:
    """`where` opened once (never through a final link), and its stat: a regular file.

    Errors name `path`, the plugin file as the config or the scan gave it.
    """
    try:
        fd = os.open(where, _OPEN_FLAGS)
    except FileNotFoundError:
        raise PluginLoadError(path, missing) from None
    except OSError as e:
        raise PluginLoadError(path, f"cannot be read: {e.strerror or e}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PluginLoadError(path, "not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


_HELD = re.compile(r"/proc/(\d+|self)/fd/(\d+)/[^/]+")


def held_descriptor(path: Path) -> int | None:
    """The pid whose open folder `path` goes through (`/proc/<pid>/fd/<n>/<file>`)."""
    found = _HELD.fullmatch(str(path))
    if found is None:
        return None
    return os.getpid() if found[1] == "self" else int(found[1])


def _open_held(path: Path, pid: int, *, strict: bool) -> TrustedFile:
    """A file in a folder a process holds open (a private copy, copies.py).

    Such a name leads into the folder the descriptor holds, whatever is renamed above
    it: only that process (or root) can change which folder that is. So the folders
    above are not checked, but the process must be ours, and the folder and the file
    are checked as any other.
    """
    fd, st = _open_regular(path, path, "no such file (its process has closed it)")
    try:
        if strict and hasattr(os, "geteuid"):
            process = Path(f"/proc/{pid}")
            _check_owner(path, "the process holding it", process, process.stat())
            _check_entry(path, "its folder", path.parent, path.parent.stat())
            _check_entry(path, "the file", path, st)
    except BaseException:
        os.close(fd)
        raise
    return TrustedFile(path, fd, st)


def check_permissions(path: Path) -> None:
    """The checks of `open_trusted` on `path`, made now (discovery's early verdict)."""
    open_trusted(path).close()


def check_digest_value(path: Path, actual: str, expected: str) -> None:
    """Refuses `path` unless `actual` (its bytes' SHA-256) is `expected` (hex, any case)."""
    pinned = expected.strip().lower()
    if actual != pinned:
        msg = f"refused: sha256 is {actual}, but the config pins {pinned}"
        raise PluginLoadError(path, msg)


# -- the rules --------------------------------------------------------------------


def _check_strictly(path: Path, real: Path, st: os.stat_result) -> None:
    if not hasattr(os, "geteuid"):  # pragma: no cover -- Windows has no such modes
        return
    _check_entry(path, "the file", real, st)
    # The name as written may pass through links; each link is as good as a folder's
    # entry (whoever owns it can point it elsewhere), and lies in a folder checked too.
    given = Path(os.path.normpath(path.absolute()))
    for entry in (given, *given.parents):
        try:
            est = os.lstat(entry)
        except OSError as e:
            raise _changed(path, entry, e) from e
        if stat.S_ISLNK(est.st_mode):
            _check_owner(path, "a link on its path", entry, est)
        elif entry != given:
            _check_folder(path, real, entry, est)
    for folder in real.parents:
        try:
            fst = os.lstat(folder)
        except OSError as e:
            raise _changed(path, folder, e) from e
        if not stat.S_ISDIR(fst.st_mode):
            raise _changed(path, folder, None)
        _check_folder(path, real, folder, fst)
    # Every folder is safe now, so nobody else can rename in them any more: if the name
    # still leads to the file opened, the file checked is the file at that path.
    try:
        now = os.lstat(real)
    except OSError as e:
        raise _changed(path, real, e) from e
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        raise _changed(path, real, None)


def _check_folder(path: Path, real: Path, folder: Path, st: os.stat_result) -> None:
    what = "its folder" if folder == real.parent else "a folder above it"
    _check_entry(path, what, folder, st)


def _check_entry(path: Path, what: str, entry: Path, st: os.stat_result) -> None:
    _check_owner(path, what, entry, st)
    mode = st.st_mode
    if not mode & (stat.S_IWGRP | stat.S_IWOTH):
        return
    # Sticky (/tmp): others may add entries but not rename or remove ours, and the
    # entry below it on the path is checked in its turn.
    if stat.S_ISDIR(mode) and mode & stat.S_ISVTX:
        return
    who = "anyone" if mode & stat.S_IWOTH else "its group"
    msg = (
        f"refused: {what} is writable by {who} ({_described(entry, st)}); "
        f"run `chmod go-w {shlex.quote(str(entry))}`, or {OPT_OUT}"
    )
    raise PluginLoadError(path, msg)


def _check_owner(path: Path, what: str, entry: Path, st: os.stat_result) -> None:
    us = os.geteuid()
    if st.st_uid in (0, us):
        return
    msg = (
        f"refused: {what} is owned by another user ({_described(entry, st)}); a plugin and "
        f"every folder above it must be owned by root or by the server's user ({_who(us)}): "
        f"run `chown {_name(us)} {shlex.quote(str(entry))}`, or {OPT_OUT}"
    )
    raise PluginLoadError(path, msg)


def _changed(path: Path, entry: Path, error: OSError | None) -> PluginLoadError:
    why = f": {error.strerror or error}" if error is not None else ""
    msg = f"refused: {entry} changed while the file was being checked{why}; try again"
    return PluginLoadError(path, msg)


def _described(entry: Path, st: os.stat_result) -> str:
    return f"{entry}: owner {_who(st.st_uid)}, mode {stat.filemode(st.st_mode)}"


def _who(uid: int) -> str:
    """`alice (uid 1000)`, or `uid 1000` for a user the system does not name."""
    name = _user_name(uid)
    return f"{name} (uid {uid})" if name else f"uid {uid}"


def _name(uid: int) -> str:
    return _user_name(uid) or str(uid)


def _user_name(uid: int) -> str | None:
    if pwd is None:  # pragma: no cover
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None
