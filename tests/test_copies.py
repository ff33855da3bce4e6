"""The private copies of plugins: served from a /tmp like Kubernetes' emptyDir, and the
folders of servers that were killed removed by the next start."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from backworks.plugins.copies import OWNER_FILE, PREFIX, process_started, remove_orphans
from tests.conftest import BuildPlugin
from tests.serving import KIT
from tests.test_serve import free_port, get, write_config
from tests.test_workers import eventually


class Served:
    """`backworks serve` in a child process, with its own temporary folder (TMPDIR)."""

    def __init__(self, folder: Path, temp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / f"server-{self.port}.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "backworks", "serve", "--port", str(self.port)],
                cwd=folder, stdout=subprocess.DEVNULL, stderr=log,
                env={**os.environ, "TMPDIR": str(temp),
                     "BACKWORKS_CACHE_DIR": str(folder / "cache")},
            )  # fmt: skip

    def answer(self, path: str) -> tuple[int, bytes]:
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        try:
            return get(f"{self.url}{path}", timeout=5)
        except OSError:
            return 0, b""

    def ready(self) -> bool:
        return self.answer("/_backworks/health")[0] == 200


@contextlib.contextmanager
def stopping() -> Iterator[list[Served]]:
    """A list to put servers in; each is killed (if still running) at the end."""
    started: list[Served] = []
    try:
        yield started
    finally:
        for server in started:
            if server.proc.poll() is None:
                server.proc.kill()
            server.proc.wait()


@pytest.fixture
def servers() -> Iterator[list[Served]]:
    with stopping() as started:
        yield started


def emptydir(tmp_path: Path) -> Path:
    """A folder as Kubernetes makes an emptyDir: mode 0777, no sticky bit."""
    temp = tmp_path / "emptydir"
    temp.mkdir()
    temp.chmod(0o777)
    assert (temp.stat().st_mode & 0o7777) == 0o777
    return temp


@pytest.mark.parametrize("isolation", ["in-process", "process"])
def test_a_plugin_is_served_with_tmp_as_a_kubernetes_emptydir(
    tmp_path: Path,
    build_plugin: BuildPlugin,
    servers: list[Served],
    isolation: str,
) -> None:
    """The private copy lies under a folder anyone may rename in; it is written and
    loaded through descriptors, so the host (and its worker processes) serve it."""
    build_plugin(KIT, "kit", tmp_path / "plugins", extra_flags=('-DKIT_NAME="kit"',))
    write_config(
        tmp_path,
        {
            "plugins": {"kit": {"isolation": isolation}},
            "endpoints": {
                "/hello": {"method": "GET", "runtime": {"type": "plugin", "handler": "kit"}}
            },
            "logging": {"format": "json"},
        },
    )
    temp = emptydir(tmp_path)
    server = Served(tmp_path, temp)
    servers.append(server)
    eventually(server.ready, what="the server ready")
    status, body = server.answer("/hello")
    assert status == 200, body
    (copies,) = temp.glob(f"{PREFIX}*")
    assert (copies.stat().st_mode & 0o777) == 0o700


def test_a_start_removes_the_copy_folders_of_servers_that_were_killed(
    tmp_path: Path, build_plugin: BuildPlugin, servers: list[Served]
) -> None:
    build_plugin(KIT, "kit", tmp_path / "plugins", extra_flags=('-DKIT_NAME="kit"',))
    temp = tmp_path / "temp"
    temp.mkdir()
    killed = []
    for _ in range(3):  # a crash loop: each server is killed once it serves
        server = Served(tmp_path, temp)
        servers.append(server)
        eventually(server.ready, what="the server ready")
        assert server.answer("/plugins/kit/echo")[0] == 200
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
        killed.append(server.proc.pid)
        # The folder this one made, and at most one left before it.
        assert len(list(temp.glob(f"{PREFIX}*"))) <= 2
    last = Served(tmp_path, temp)
    servers.append(last)
    eventually(last.ready, what="the last server ready")
    (left,) = temp.glob(f"{PREFIX}*")
    assert int((left / OWNER_FILE).read_text().split()[0]) == last.proc.pid
    lines = last.log.read_text().splitlines()
    removed = [json.loads(line) for line in lines if "orphans" in line]
    assert removed
    assert removed[0]["event"] == "plugin_copies_orphans_removed"


def test_a_folder_is_kept_while_its_owner_runs_and_a_reused_pid_does_not_keep_it(
    tmp_path: Path,
) -> None:
    me = os.getpid()

    def folder(name: str, owner: str | None) -> Path:
        made = tmp_path / f"{PREFIX}{name}"
        made.mkdir(mode=0o700)
        if owner is not None:
            (made / OWNER_FILE).write_text(owner)
        return made

    alive = folder("alive", f"{me} {process_started(me)}\n")
    reused = folder("reused", f"{me} 1\n")  # this pid, but a process started at tick 1
    gone = folder("gone", f"{_a_pid_that_is_gone()} 12345\n")
    unmarked = folder("unmarked", None)  # being made, or an older server's: not ours to judge
    other = tmp_path / "unrelated"
    other.mkdir()
    assert sorted(remove_orphans(tmp_path)) == sorted([reused, gone])
    assert alive.is_dir()
    assert unmarked.is_dir()
    assert other.is_dir()


def _a_pid_that_is_gone() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid
