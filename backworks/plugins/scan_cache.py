"""What earlier scans found, kept on disk so an unchanged folder is not examined again.

An entry is valid while its file keeps the same resolved path, size, mtime_ns and
inode, and the host speaks the same ABI; anything else is a miss and the file is
examined afresh. The cache is an optimisation only: a file that cannot be read or
parsed is ignored with a warning, and a file that cannot be written costs a re-scan
next time, never a failed start.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import structlog

from backworks.abi import ABI_VERSION
from backworks.plugins.examine import ScanResult

log = structlog.get_logger("backworks.scan_cache")

CACHE_FILE = "scan-cache-v1.json"
_FORMAT = 1


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """`$BACKWORKS_CACHE_DIR`, else `$XDG_CACHE_HOME/backworks`, else ~/.cache/backworks."""
    env = os.environ if env is None else env
    if explicit := env.get("BACKWORKS_CACHE_DIR"):
        return Path(explicit)
    if xdg := env.get("XDG_CACHE_HOME"):
        return Path(xdg) / "backworks"
    return Path.home() / ".cache" / "backworks"


@attrs.frozen
class FileKey:
    """What must be unchanged for a cached result to still describe a file."""

    path: str  # resolved, so two names of one file share an entry
    size: int
    mtime_ns: int
    inode: int
    abi: int = ABI_VERSION

    @classmethod
    def of(cls, path: str, st: os.stat_result) -> FileKey:
        return cls(os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino)


@attrs.frozen
class _Entry:
    key: FileKey
    result: ScanResult

    def to_json(self) -> dict[str, Any]:
        return {
            "size": self.key.size,
            "mtime_ns": self.key.mtime_ns,
            "inode": self.key.inode,
            "abi": self.key.abi,
            "skipped": self.result.skipped,
            "result": self.result.to_json(),
        }

    @classmethod
    def from_json(cls, path: str, data: Any) -> _Entry:
        key = FileKey(path, *(_int(data, k) for k in ("size", "mtime_ns", "inode", "abi")))
        skipped = data["skipped"]
        if not isinstance(skipped, bool):
            msg = f"'skipped' must be true or false (got {skipped!r})"
            raise TypeError(msg)
        return cls(key, ScanResult.from_json(data["result"], skipped=skipped))


def _int(data: Any, key: str) -> int:
    value = data[key]
    if not isinstance(value, int) or isinstance(value, bool):
        msg = f"{key!r} must be an integer (got {value!r:.60})"
        raise TypeError(msg)
    return value


class ScanCache:
    """The entries of one cache file; `get`/`put` in memory, `save` writes them back."""

    def __init__(self, file: Path, entries: dict[str, _Entry] | None = None) -> None:
        self.file = file
        self._entries = entries or {}
        self._dirty = False

    @classmethod
    def load(cls, directory: Path | None = None) -> ScanCache:
        """Reads the cache in `directory` (default_cache_dir() when None); a missing file
        is an empty cache, and so is a corrupt one (with a `scan_cache_corrupt` warning)."""
        file = (directory if directory is not None else default_cache_dir()) / CACHE_FILE
        try:
            data = json.loads(file.read_bytes())
            if data["format"] != _FORMAT:
                # Written by another version of Backworks: its entries mean nothing here.
                return cls(file)
            entries = {path: _Entry.from_json(path, e) for path, e in data["entries"].items()}
        except FileNotFoundError:
            return cls(file)
        except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
            log.warning("scan_cache_corrupt", path=str(file), error=str(e) or repr(e))
            return cls(file)
        return cls(file, entries)

    def get(self, key: FileKey) -> ScanResult | None:
        entry = self._entries.get(key.path)
        return entry.result if entry is not None and entry.key == key else None

    def put(self, key: FileKey, result: ScanResult) -> None:
        self._entries[key.path] = _Entry(key, result)
        self._dirty = True

    def save(self) -> None:
        """Writes the entries atomically (a temp file, then renamed) if any changed.

        Entries of files that no longer exist are dropped; two hosts saving at once
        lose nothing but each other's new entries, which the next scan adds back.
        """
        if not self._dirty:
            return
        entries = {p: e.to_json() for p, e in self._entries.items() if Path(p).exists()}
        text = json.dumps({"format": _FORMAT, "entries": entries}, separators=(",", ":"))
        tmp: Path | None = None
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, name = tempfile.mkstemp(prefix=".scan-cache-", suffix=".tmp", dir=self.file.parent)
            tmp = Path(name)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            tmp.replace(self.file)
            tmp = None
        except OSError as e:
            log.warning("scan_cache_not_saved", path=str(self.file), error=str(e))
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    tmp.unlink()
        self._dirty = False
