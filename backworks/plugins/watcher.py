"""Watching the plugin folders and the config file, letting each write settle first.

`watchfiles` reports file changes (inotify, FSEvents, ReadDirectoryChangesW). A
compiler or `cp` writes a library in several steps and every step is a change, so
acting on the first one would load half a library. Each changed path therefore waits
until its inode, size and modification time have stayed the same for `settle_s`, and
only then is it reported: as there (changed or new) or as gone. A path that changes
again while its report is being handled is reported again afterwards, so the last
write always wins; no two reports of one path overlap.

Settling only makes a half-written file unlikely: whoever acts on a report still
checks what it loads (the Host examines a library in a child process first).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import attrs
import structlog
from watchfiles import awatch

from backworks.plugins.discovery import LIBRARY_SUFFIXES

log = structlog.get_logger("backworks.watcher")

SETTLE_S = 0.2  # how long a file must stay unchanged before it is reported
_STEP_MS = 50  # watchfiles groups changes that come within this of each other
_STOP_WAIT_S = 2.0

Report = Callable[[Path, bool], Awaitable[None]]
"""Called with a settled path and whether it exists."""


@attrs.frozen
class WatchSet:
    """What to watch: library folders, single library files, and the config file."""

    library_dirs: tuple[Path, ...] = ()
    recursive: bool = False
    library_files: frozenset[Path] = frozenset()  # configured paths outside the folders
    config_file: Path | None = None


class Watcher:
    """Reports settled changes of libraries to `on_library`, of the config to `on_config`.

    Runs on the event loop; `watch()` (re)starts the watching, `close()` ends it.
    """

    def __init__(self, on_library: Report, on_config: Report, *, settle_s: float = SETTLE_S):
        self._on_library = on_library
        self._on_config = on_config
        self.settle_s = settle_s
        self.watching = WatchSet()
        self._stop = asyncio.Event()
        self._watches: list[asyncio.Task[None]] = []
        self._settling: dict[Path, asyncio.Task[None]] = {}
        self._dirty: set[Path] = set()

    async def watch(self, wanted: WatchSet) -> None:
        """Watches `wanted` from now on; returns once the watches are in place."""
        if wanted == self.watching and self._watches:
            return
        await self._stop_watches()
        self.watching = wanted
        self._stop = asyncio.Event()
        folders = _existing(wanted.library_dirs)
        if folders:
            self._start(folders, wanted.recursive, self._is_library_in_folders)
        singles = {p.parent for p in wanted.library_files}
        if wanted.config_file is not None:
            singles.add(wanted.config_file.parent)
        singles_present = _existing(sorted(singles))
        if singles_present:
            self._start(singles_present, False, self._is_single_file)
        # One turn of the loop: each watch task runs up to its first wait, and watchfiles
        # sets up its watches before that, so nothing written after this returns is missed.
        await asyncio.sleep(0)
        log.info(
            "watching",
            directories=[str(p) for p in folders],
            files=sorted(str(p) for p in wanted.library_files),
            config=str(wanted.config_file) if wanted.config_file else None,
        )

    async def close(self) -> None:
        await self._stop_watches()
        tasks = list(self._settling.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- watching ------------------------------------------------------------------

    def _start(self, roots: list[Path], recursive: bool, wanted: Callable[[Path], bool]) -> None:
        self._watches.append(asyncio.create_task(self._run(roots, recursive, wanted, self._stop)))

    async def _run(
        self,
        roots: list[Path],
        recursive: bool,
        wanted: Callable[[Path], bool],
        stop: asyncio.Event,
    ) -> None:
        def keep(_: object, raw: str) -> bool:
            return wanted(Path(raw))

        try:
            async for changes in awatch(
                *roots, watch_filter=keep, recursive=recursive, step=_STEP_MS, stop_event=stop
            ):
                for _, raw in changes:
                    self._touch(Path(raw))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("watch_failed", directories=[str(r) for r in roots])

    async def _stop_watches(self) -> None:
        # watchfiles' thread notices the event within one step; cancelling instead would
        # leave that thread waiting for a change for seconds.
        self._stop.set()
        watches, self._watches = self._watches, []
        if not watches:
            return
        _, late = await asyncio.wait(watches, timeout=_STOP_WAIT_S)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    def _is_library_in_folders(self, path: Path) -> bool:
        return path.name.lower().endswith(LIBRARY_SUFFIXES)

    def _is_single_file(self, path: Path) -> bool:
        return path in self.watching.library_files or path == self.watching.config_file

    # -- settling ------------------------------------------------------------------

    def _touch(self, path: Path) -> None:
        self._dirty.add(path)
        if path not in self._settling:
            self._settling[path] = asyncio.create_task(self._settle_and_report(path))

    async def _settle_and_report(self, path: Path) -> None:
        report = self._on_config if path == self.watching.config_file else self._on_library
        try:
            while path in self._dirty:
                self._dirty.discard(path)
                exists = await self._settled(path)
                self._dirty.discard(path)  # the settling has seen those changes
                try:
                    await report(path, exists)
                except Exception:
                    log.exception("watch_report_failed", path=str(path))
        finally:
            # No await between the loop's last test and this: a change that comes
            # later finds no task and starts one.
            del self._settling[path]

    async def _settled(self, path: Path) -> bool:
        """Waits until `path` stayed the same for `settle_s`; whether it exists then."""
        loop = asyncio.get_running_loop()
        last, since = _identity(path), loop.time()
        while True:
            await asyncio.sleep(min(self.settle_s / 4, 0.05))
            now = _identity(path)
            if now != last:
                last, since = now, loop.time()
            elif loop.time() - since >= self.settle_s:
                return last is not None


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _existing(folders: Iterable[Path]) -> list[Path]:
    present = []
    for folder in dict.fromkeys(folders):
        if folder.is_dir():
            present.append(folder)
        else:
            log.warning("watch_directory_missing", directory=str(folder))
    return present
