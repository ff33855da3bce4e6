"""Discovery: which libraries in the plugin folders are usable Backworks plugins.

Loading a library runs its code, so each file goes through the cheapest test that can
settle it, and only files that pass every one are loaded, in a scanner child process:

1. list `.so`/`.dylib`/`.dll` files (optionally recursively);
2. keep regular files (not broken links, devices...), and one name per file;
3. reuse the verdict of an earlier scan when the file has not changed (scan_cache);
4. sniff: an ELF/Mach-O/PE magic number and the name of an entry symbol (ABI 1's
   `backworks_plugin_entry` or the legacy ABI's `plugin_info`) in the bytes, else
   the file is skipped as "not a Backworks plugin" and never loaded;
5. refuse files that others may replace or write, or that lie in folders others may
   write (trust.check_permissions, sshd's StrictModes), unless allowed;
6. read the descriptor in a child (scanner), where a crash or hang blames that file;
7. refuse every file of a plugin name that more than one file declares.

`scan()` runs this over folders (the server at startup, `backworks plugins list`);
`examine()` over one file, never cached (`backworks plugins inspect`).
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import attrs
import structlog

from backworks.abi import ENTRY_SYMBOL
from backworks.abi.legacy import INFO_SYMBOL
from backworks.errors import PluginLoadError
from backworks.plugins.examine import ScanResult, examine_isolated
from backworks.plugins.scan_cache import FileKey, ScanCache
from backworks.plugins.trust import check_permissions

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "LIBRARY_SUFFIXES",
    "PLUGIN_SYMBOLS",
    "ScanResult",
    "examine",
    "find_libraries",
    "scan",
]

log = structlog.get_logger("backworks.discovery")

LIBRARY_SUFFIXES = (".so", ".dylib", ".dll")
# The exported names that make a library worth loading. A library that exports one
# holds it as a NUL-terminated string: in ELF's .dynstr, in Mach-O's string table (with
# a leading underscore), in a PE export name table.
PLUGIN_SYMBOLS: tuple[str, ...] = (ENTRY_SYMBOL, INFO_SYMBOL)
DEFAULT_TIMEOUT_S = 10.0

_NOT_A_PLUGIN_PREFIX = "not a Backworks plugin"
NOT_A_PLUGIN = f"{_NOT_A_PLUGIN_PREFIX} (no {' or '.join(PLUGIN_SYMBOLS)} symbol)"
NOT_A_LIBRARY = "not a shared library (no ELF, Mach-O or PE header)"

_MAGIC_NUMBERS = (
    b"\x7fELF",
    b"\xfe\xed\xfa\xce",  # Mach-O 32-bit, big- and little-endian
    b"\xce\xfa\xed\xfe",
    b"\xfe\xed\xfa\xcf",  # Mach-O 64-bit
    b"\xcf\xfa\xed\xfe",
    b"\xca\xfe\xba\xbe",  # Mach-O universal ("fat")
    b"\xca\xfe\xba\xbf",
    b"MZ",  # PE
)
_NEEDLES = tuple(s.encode() + b"\0" for s in PLUGIN_SYMBOLS)
_CHUNK = 1 << 20


def _has_plugin_symbol(f: BinaryIO) -> bool:
    """Whether a symbol name of PLUGIN_SYMBOLS occurs bounded by NUL (or Mach-O's
    underscore) on its left and NUL on its right.

    Plain reads, not mmap: a file truncated while mmap'd raises SIGBUS, which would
    kill the host, and a plugin being copied into place is exactly that file.
    """
    keep = max(map(len, _NEEDLES)) + 1  # a name split across two reads, and its left byte
    tail = b""
    while chunk := f.read(_CHUNK):
        window = tail + chunk
        for needle in _NEEDLES:
            at = window.find(needle, 1)
            while at > 0:
                if window[at - 1] in b"\0_":
                    return True
                at = window.find(needle, at + 1)
        tail = window[-keep:]
    return False


def _sniff(path: str) -> ScanResult | None:
    """The reason to skip `path` without loading it, or None when it may be a plugin."""
    try:
        # O_NONBLOCK: a FIFO swapped in since the listing must not block the scan.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        return ScanResult.failure(path, f"cannot be read: {e.strerror}")
    try:
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return ScanResult.failure(path, "not a regular file", skipped=True)
            if not f.read(4).startswith(_MAGIC_NUMBERS):
                return ScanResult.failure(path, NOT_A_LIBRARY, skipped=True)
            if not _has_plugin_symbol(f):
                return ScanResult.failure(path, NOT_A_PLUGIN, skipped=True)
    except OSError as e:
        return ScanResult.failure(path, f"cannot be read: {e.strerror}")
    return None


def _permission_problem(path: str) -> str | None:
    try:
        check_permissions(Path(path))
    except PluginLoadError as e:
        return e.reason
    except OSError as e:
        return f"cannot be read: {e.strerror}"
    return None


def find_libraries(directories: Iterable[str | Path], *, recursive: bool = False) -> list[str]:
    """The files named like libraries in `directories` (and below them if `recursive`).

    Sorted within each folder. Links to folders are not followed down, so a link loop
    cannot trap the walk; a missing or unreadable folder is logged and passed over.
    """
    found: dict[str, None] = {}  # ordered, and a folder given twice adds nothing

    def warn(error: OSError) -> None:
        log.warning("plugin_directory_unreadable", directory=error.filename, error=error.strerror)

    for entry in directories:
        directory = os.fspath(entry)
        if not Path(directory).is_dir():
            log.warning("plugin_directory_missing", directory=directory)
            continue
        for folder, subfolders, names in os.walk(directory, onerror=warn):
            subfolders.sort()
            for name in sorted(names):
                if name.lower().endswith(LIBRARY_SUFFIXES):
                    found[str(Path(folder, name))] = None
            if not recursive:
                break
    return list(found)


@attrs.define
class _Scan:
    """One run of the steps above over a set of paths."""

    cache: ScanCache | None
    rescan: bool
    allow_insecure_permissions: bool
    results: dict[str, ScanResult | None] = attrs.Factory(dict)  # None: for a child
    keys: dict[str, FileKey] = attrs.Factory(dict)
    files: dict[tuple[int, int], str] = attrs.Factory(dict)
    cached: int = 0
    loaded: int = 0

    def add(self, path: str) -> None:
        result = self._triage(path)
        # Checked on every scan, cached verdict or not: chmod changes no key field.
        may_load = result is None or not result.skipped
        if may_load and not self.allow_insecure_permissions and (why := _permission_problem(path)):
            result = ScanResult.failure(path, why)
        self.results[path] = result

    def _triage(self, path: str) -> ScanResult | None:
        try:
            st = Path(path).stat()
        except FileNotFoundError:
            why = "broken symbolic link" if Path(path).is_symlink() else "vanished during the scan"
            return ScanResult.failure(path, why, skipped=True)
        except OSError as e:
            return ScanResult.failure(path, f"cannot be read: {e.strerror}")
        if not stat.S_ISREG(st.st_mode):
            return ScanResult.failure(path, "not a regular file", skipped=True)
        first = self.files.setdefault((st.st_dev, st.st_ino), path)
        if first != path:
            return ScanResult.failure(path, f"another name of {first}", skipped=True)
        key = FileKey.of(path, st)
        if self.cache is not None and not self.rescan:
            cached = self.cache.get(key)
            if cached is not None and not _sought_other_symbols(cached):
                self.cached += 1
                return attrs.evolve(cached, path=path)
        result = _sniff(path)
        if result is None:
            self.keys[path] = key
        elif self.cache is not None and result.skipped:
            self.cache.put(key, result)
        return result

    def finish(self, *, timeout_s: float, jobs: int | None) -> list[ScanResult]:
        pending = [path for path, result in self.results.items() if result is None]
        self.loaded = len(pending)
        for path, verdict in examine_isolated(pending, timeout_s=timeout_s, jobs=jobs).items():
            self.results[path] = verdict.result
            if self.cache is not None and verdict.lasting:
                self.cache.put(self.keys[path], verdict.result)
        if self.cache is not None:
            self.cache.save()
        return _refuse_shared_names([r for r in self.results.values() if r is not None])


def _sought_other_symbols(result: ScanResult) -> bool:
    """A cached "not a plugin" verdict of a host that looked for other symbols (one
    from before legacy libraries were taken, say): the file may be a plugin now."""
    error = result.error or ""
    return result.skipped and error.startswith(_NOT_A_PLUGIN_PREFIX) and error != NOT_A_PLUGIN


def _refuse_shared_names(results: list[ScanResult]) -> list[ScanResult]:
    """Neither of two files that declare one plugin name silently wins: both are refused."""
    by_name: dict[str, list[str]] = {}
    for r in results:
        if r.ok and r.name is not None:
            by_name.setdefault(r.name, []).append(r.path)
    out = []
    for r in results:
        paths = by_name.get(r.name or "", [])
        if r.ok and len(paths) > 1:
            others = ", ".join(p for p in paths if p != r.path)
            r = r.refused(f"plugin name {r.name!r} is also declared by {others}")
        out.append(r)
    return out


def scan(
    directories: Iterable[str | Path],
    *,
    recursive: bool = False,
    rescan: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    allow_insecure_permissions: bool = False,
    cache_dir: Path | None = None,
    jobs: int | None = None,
) -> list[ScanResult]:
    """Examines every library in `directories`; one result per file, in listing order.

    Never loads a library into this process, and never raises for a bad library: each
    one gets a result that says why it is unusable. Unchanged files reuse the cached
    verdict of an earlier scan (in `cache_dir`, default `default_cache_dir()`) unless
    `rescan`. Descriptors are read in `jobs` child processes at a time (default 2, 1
    on a one-core machine), each file within `timeout_s`.
    """
    started = time.monotonic()
    run = _Scan(ScanCache.load(cache_dir), rescan, allow_insecure_permissions)
    for path in find_libraries(directories, recursive=recursive):
        run.add(path)
    results = run.finish(timeout_s=timeout_s, jobs=jobs)
    log.info(
        "plugin_scan_done",
        files=len(results),
        cached=run.cached,
        loaded=run.loaded,
        usable=sum(r.ok for r in results),
        skipped=sum(r.skipped for r in results),
        duration_ms=round((time.monotonic() - started) * 1000),
    )
    return results


def examine(
    path: str | Path,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    allow_insecure_permissions: bool = False,
) -> ScanResult:
    """Examines one file afresh, with the same steps as `scan` but no cache."""
    run = _Scan(None, True, allow_insecure_permissions)
    run.add(os.fspath(path))
    return run.finish(timeout_s=timeout_s, jobs=1)[0]
