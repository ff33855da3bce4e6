"""The on-disk scan cache: unchanged files are not loaded again, changed ones are, and
a cache that cannot be read or written never stops a scan."""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from backworks.abi import ABI_VERSION
from backworks.plugins import discovery
from backworks.plugins.examine import ScanResult
from backworks.plugins.scan_cache import CACHE_FILE, FileKey, ScanCache, default_cache_dir
from tests.cbuild import EXT
from tests.conftest import BuildPlugin
from tests.test_discovery import HANG, SEGFAULT, good_source, raw_source


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("BACKWORKS_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def plugins(tmp_path: Path, build_plugin: BuildPlugin) -> Path:
    folder = tmp_path / "plugins"
    build_plugin(good_source("alpha"), "alpha", folder)
    build_plugin(good_source("beta"), "beta", folder)
    (folder / f"libnot-a-plugin.{EXT}").write_bytes(b"\x7fELF" + b"\0" * 64)
    return folder


def scan_logged(folder: Path, **options: Any) -> tuple[list[ScanResult], MutableMapping[str, Any]]:
    """Scans and returns the results with the `plugin_scan_done` event."""
    with capture_logs() as logs:
        results = discovery.scan([folder], **options)
    (done,) = (e for e in logs if e["event"] == "plugin_scan_done")
    return results, done


def test_an_unchanged_folder_is_answered_from_the_cache_without_loading(
    plugins: Path, cache_dir: Path
) -> None:
    first, cold = scan_logged(plugins)
    second, warm = scan_logged(plugins)
    assert (cold["loaded"], cold["cached"]) == (2, 0)
    assert (warm["loaded"], warm["cached"]) == (0, 3)
    assert second == first
    assert (cache_dir / CACHE_FILE).is_file()


def test_a_changed_file_is_examined_again(plugins: Path, build_plugin: BuildPlugin) -> None:
    scan_logged(plugins)
    build_plugin(good_source("alpha", version="2.0.0"), "alpha", plugins)
    results, done = scan_logged(plugins)
    assert (done["loaded"], done["cached"]) == (1, 2)
    assert {r.name: r.version for r in results if r.ok} == {"alpha": "2.0.0", "beta": "1.2.3"}


def test_rescan_examines_every_file_and_refreshes_the_cache(plugins: Path) -> None:
    scan_logged(plugins)
    _, rescanned = scan_logged(plugins, rescan=True)
    _, warm = scan_logged(plugins)
    assert (rescanned["loaded"], rescanned["cached"]) == (2, 0)
    assert (warm["loaded"], warm["cached"]) == (0, 3)


def test_crashes_are_cached_but_timeouts_are_retried(
    tmp_path: Path, build_plugin: BuildPlugin
) -> None:
    """A crash is the library's doing; a timeout may be the machine's."""
    folder = tmp_path / "bad"
    build_plugin(raw_source(constructor=SEGFAULT), "segv", folder)
    build_plugin(raw_source(constructor=HANG), "hang", folder)
    scan_logged(folder, timeout_s=0.5)
    results, done = scan_logged(folder, timeout_s=0.5)
    assert (done["loaded"], done["cached"]) == (1, 1)
    assert [r.error for r in results] == [
        "timed out after 0.5 s while loading",
        "crashed with SIGSEGV while loading",
    ]


def test_permissions_are_checked_again_on_a_cached_plugin(plugins: Path) -> None:
    scan_logged(plugins)
    (plugins / f"libalpha.{EXT}").chmod(0o666)  # chmod leaves size, mtime and inode alone
    results, done = scan_logged(plugins)
    alpha = next(r for r in results if r.path.endswith(f"libalpha.{EXT}"))
    assert done["loaded"] == 0
    assert not alpha.ok
    assert (alpha.error or "").startswith("refused: the file is writable by anyone")


def test_a_corrupt_cache_file_is_ignored_with_a_warning(plugins: Path, cache_dir: Path) -> None:
    cache_dir.mkdir()
    (cache_dir / CACHE_FILE).write_text('{"format": 1, "entries": {"/x": {"size": "big"')
    with capture_logs() as logs:
        results = discovery.scan([plugins])
    assert [r.name for r in results if r.ok] == ["alpha", "beta"]
    assert logs[0]["event"] == "scan_cache_corrupt"
    assert logs[0]["log_level"] == "warning"
    _, warm = scan_logged(plugins)  # and the corrupt file was replaced by a good one
    assert warm["cached"] == 3


def test_an_entry_of_the_wrong_shape_makes_the_whole_file_ignored(cache_dir: Path) -> None:
    cache_dir.mkdir()
    entry: dict[str, object] = {
        "size": 1,
        "mtime_ns": 1,
        "inode": 1,
        "abi": ABI_VERSION,
        "skipped": False,
    }
    entry["result"] = {"path": "/x", "ok": True}  # an ok result needs its other keys
    (cache_dir / CACHE_FILE).write_text(json.dumps({"format": 1, "entries": {"/x": entry}}))
    with capture_logs() as logs:
        cache = ScanCache.load()
    assert cache.get(FileKey("/x", 1, 1, 1)) is None
    assert [e["event"] for e in logs] == ["scan_cache_corrupt"]


def test_a_cache_that_cannot_be_written_does_not_fail_the_scan(
    plugins: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with capture_logs() as logs:
        results = discovery.scan([plugins], cache_dir=blocker / "cache")
    assert [r.name for r in results if r.ok] == ["alpha", "beta"]
    assert "scan_cache_not_saved" in [e["event"] for e in logs]


def test_a_saved_cache_leaves_no_temporary_files(plugins: Path, cache_dir: Path) -> None:
    discovery.scan([plugins])
    discovery.scan([plugins], rescan=True)
    assert [entry.name for entry in cache_dir.iterdir()] == [CACHE_FILE]
    assert json.loads((cache_dir / CACHE_FILE).read_text())["format"] == 1


def test_an_entry_only_matches_the_same_file_and_host_abi(tmp_path: Path) -> None:
    cache = ScanCache(tmp_path / CACHE_FILE)
    key = FileKey("/p/liba.so", size=10, mtime_ns=20, inode=30)
    result = ScanResult(path="/p/liba.so", ok=True, name="a")
    cache.put(key, result)
    assert cache.get(key) == result
    assert cache.get(FileKey("/p/liba.so", 10, 21, 30)) is None  # touched
    assert cache.get(FileKey("/p/liba.so", 10, 20, 31)) is None  # replaced
    assert cache.get(FileKey("/p/liba.so", 10, 20, 30, abi=ABI_VERSION + 0x10000)) is None


def test_the_cache_folder_follows_backworks_then_xdg_then_home() -> None:
    assert default_cache_dir({"BACKWORKS_CACHE_DIR": "/a", "XDG_CACHE_HOME": "/b"}) == Path("/a")
    assert default_cache_dir({"XDG_CACHE_HOME": "/b"}) == Path("/b/backworks")
    assert default_cache_dir({}) == Path.home() / ".cache" / "backworks"
