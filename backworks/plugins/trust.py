"""Checks made before a library's code is allowed to run in this process.

Loading a shared library runs its code, so a file that another user could have
replaced is as good as that user's code. These checks are cheap and run before every
load for use (discovery's child process examines files without them).
"""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

from backworks.errors import PluginLoadError


def check_permissions(path: Path) -> None:
    """Refuses a file, or a folder holding it, that users other than its owner can write.

    A sticky folder such as /tmp is fine for the folder test: others cannot replace a
    file they do not own there.
    """
    st = path.stat()
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        who = "anyone" if st.st_mode & stat.S_IWOTH else "its group"
        msg = (
            f"refused: the file is writable by {who} (mode {stat.filemode(st.st_mode)}); "
            "run `chmod go-w` on it, or set allow_insecure_permissions: true"
        )
        raise PluginLoadError(path, msg)
    folder = path.resolve().parent
    fst = folder.stat()
    if fst.st_mode & stat.S_IWOTH and not fst.st_mode & stat.S_ISVTX:
        msg = (
            f"refused: its folder {str(folder)!r} is writable by anyone; "
            "run `chmod o-w` on it, or set allow_insecure_permissions: true"
        )
        raise PluginLoadError(path, msg)


def sha256_of(path: Path) -> str:
    """The file's SHA-256 as lower-case hex, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_digest(path: Path, expected: str) -> None:
    """Refuses the file unless its SHA-256 is `expected` (hex, any case)."""
    actual = sha256_of(path)
    if actual != expected.strip().lower():
        msg = f"refused: sha256 is {actual}, but the config pins {expected.strip().lower()}"
        raise PluginLoadError(path, msg)
