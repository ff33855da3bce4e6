"""Faults that end a `backworks serve` process, as a user (or systemd) sees them.

Real `backworks serve` processes on loopback ports, with tests/plugins/crashkit.c
in-process and flagged BW_FLAG_NONBLOCKING, so its calls run on the event loop: a
call that never returns holds the loop, and the stall guard (server/stall.py) ends
the process with one line naming the plugin and the call.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from backworks.server.stall import EXIT_STALLED, EXIT_STOPPED_WHILE_HELD
from tests.conftest import BuildPlugin
from tests.test_serve import Server, get, served, write_config

__all__ = ["served"]  # the fixture, imported for the tests below

CRASHKIT = (Path(__file__).parent / "plugins" / "crashkit.c").read_text()


def nonblocking_crashkit(build_plugin: BuildPlugin, folder: Path) -> None:
    flags = ('-DKIT_NAME="crashy"', "-DKIT_FLAGS=BW_FLAG_NONBLOCKING")
    build_plugin(CRASHKIT, "crashy", folder / "plugins", extra_flags=flags)


def serve_crashy(tmp_path: Path, served: list[Server], **server: Any) -> Server:
    config = write_config(
        tmp_path,
        {
            "plugins": {"crashy": {"config": {}}},
            "server": server,
            "logging": {"format": "json"},
        },
    )
    proc = Server(config, tmp_path)
    served.append(proc)
    proc.wait_ready()
    return proc


def call_in_background(url: str) -> None:
    def call() -> None:
        with contextlib.suppress(OSError):  # the server ends under it: that is the point
            get(url, timeout=60)

    threading.Thread(target=call, daemon=True).start()


def exit_of(server: Server, timeout: float) -> tuple[int, list[dict[str, Any]], float]:
    """The server's exit status, its JSON log lines, and how long it took to exit."""
    started = time.monotonic()
    _, err = server.proc.communicate(timeout=timeout)
    took = time.monotonic() - started
    return server.proc.returncode, [json.loads(line) for line in err.decode().splitlines()], took


def test_a_call_that_never_returns_ends_the_process_naming_plugin_and_call(
    tmp_path: Path, build_plugin: BuildPlugin, served: list[Server]
) -> None:
    nonblocking_crashkit(build_plugin, tmp_path)
    server = serve_crashy(tmp_path, served, stall_timeout_ms=1000)
    call_in_background(f"{server.url}/plugins/crashy/hang")  # sleeps 60 s on the loop

    status, logs, took = exit_of(server, timeout=30)

    assert status == EXIT_STALLED
    assert took < 20, "ended within the bound (plus a busy machine's headroom), not at 60 s"
    last = logs[-1]
    assert last["event"] == "server_stalled"
    assert (last["plugin"], last["call"]) == ("crashy", "handle")
    assert last["request_id"]
    assert last["held_ms"] >= 1000
    assert last["exit_status"] == EXIT_STALLED


def test_a_call_blocking_longer_than_the_bound_ends_the_process_at_the_bound(
    tmp_path: Path, build_plugin: BuildPlugin, served: list[Server]
) -> None:
    nonblocking_crashkit(build_plugin, tmp_path)
    server = serve_crashy(tmp_path, served, stall_timeout_ms=1500)
    # (Only the first blocking call can hold the loop: the inline watchdog moves the
    # plugin off it for good after that one.)
    call_in_background(f"{server.url}/plugins/crashy/wait?ms=4000")

    status, logs, _ = exit_of(server, timeout=30)

    assert status == EXIT_STALLED
    stalled = logs[-1]
    assert stalled["event"] == "server_stalled"
    assert stalled["plugin"] == "crashy"
    assert 1500 <= stalled["held_ms"] < 4000, "the bound ended it, not the call's return"


def test_sigterm_ends_a_process_whose_loop_is_held(
    tmp_path: Path, build_plugin: BuildPlugin, served: list[Server]
) -> None:
    nonblocking_crashkit(build_plugin, tmp_path)
    server = serve_crashy(tmp_path, served, stall_timeout_ms=0)  # no bound: only the signal
    # Spinning, not sleeping: a signal would cut a sleep short, and the call would return.
    call_in_background(f"{server.url}/plugins/crashy/spin")
    # The hang has started once the watchdog demoted the plugin (0.5 s on the loop).
    deadline = time.monotonic() + 30
    seen = b""
    assert server.proc.stderr is not None
    while b"plugin_holds_event_loop" not in seen:
        assert time.monotonic() < deadline, "the call never held the loop"
        seen += server.proc.stderr.readline()
    server.proc.send_signal(signal.SIGTERM)

    status, logs, took = exit_of(server, timeout=30)

    assert status == EXIT_STOPPED_WHILE_HELD
    assert took < 20
    last = logs[-1]
    assert last["event"] == "server_stopped_while_held"
    assert (last["plugin"], last["call"]) == ("crashy", "handle")


def test_a_segfault_in_an_in_process_init_is_named_by_the_last_line_before_it(
    tmp_path: Path, build_plugin: BuildPlugin, served: list[Server]
) -> None:
    build_plugin(CRASHKIT, "crashy", tmp_path / "plugins", extra_flags=('-DKIT_NAME="crashy"',))
    build_plugin(CRASHKIT, "calm", tmp_path / "plugins", extra_flags=('-DKIT_NAME="calm"',))
    config = write_config(
        tmp_path,
        {
            "plugins": {"crashy": {"config": {"init": "segv"}}, "calm": {"config": {}}},
            "logging": {"format": "json"},
        },
    )
    server = Server(config, tmp_path)
    served.append(server)

    _, err = server.proc.communicate(timeout=60)

    assert server.proc.returncode == -signal.SIGSEGV
    lines = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    # Other plugins' lines may follow (their health checks run on), but the one whose
    # init began and never ended is named, with the line flushed before the crash.
    started = [line["plugin"] for line in lines if line["event"] == "plugin_init_start"]
    done = {line["plugin"] for line in lines if line["event"] == "plugin_init_done"}
    assert [name for name in started if name not in done] == ["crashy"]


def test_plugins_inspect_init_runs_init_in_a_child_with_the_configs_settings(
    tmp_path: Path, build_plugin: BuildPlugin
) -> None:
    library = build_plugin(
        CRASHKIT, "crashy", tmp_path / "plugins", extra_flags=('-DKIT_NAME="crashy"',)
    )
    config = write_config(tmp_path, {"plugins": {"crashy": {"config": {"init": "segv"}}}})

    def inspect(*extra: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "backworks", "plugins", "inspect", str(library), *extra]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)

    crashed = inspect("--init", "--config", str(config))
    assert crashed.returncode == 1
    assert "init:" in crashed.stdout
    assert "crashed" in crashed.stdout
    assert "SIGSEGV" in crashed.stdout
    assert "crash output of plugin 'crashy'" in crashed.stderr
    assert "instantiate" in crashed.stderr, "the dump shows where: the plugin's init"

    fine = inspect("--init")  # without the config, init gets {} and starts
    assert fine.returncode == 0
    assert "ok (then shutdown)" in fine.stdout


def test_workers_above_the_bound_are_refused_with_the_bound_named(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "backworks", "serve", "--workers", "1000"]
    done = subprocess.run(
        argv, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert "--workers 1000" in done.stderr
    assert "8 per CPU" in done.stderr


@pytest.mark.parametrize("workers", [2])
def test_workers_within_the_bound_are_accepted(workers: int) -> None:
    from backworks.cli.main import max_workers

    assert max_workers() >= workers * 4, "a 2-core machine may run 16"


def test_an_in_process_init_runs_on_a_thread_the_kernel_knows_by_the_plugins_name(
    tmp_path: Path, build_plugin: BuildPlugin, served: list[Server]
) -> None:
    """So the kernel's own crash report (and a core dump) names the plugin too."""
    build_plugin(CRASHKIT, "crashy", tmp_path / "plugins", extra_flags=('-DKIT_NAME="crashy"',))
    slow = tmp_path / "slow"
    slow.touch()  # init sleeps 3 s: time to look at its thread
    config = write_config(
        tmp_path, {"plugins": {"crashy": {"config": {"slow_init_if": str(slow)}}}}
    )
    server = Server(config, tmp_path)
    served.append(server)
    tasks = Path(f"/proc/{server.proc.pid}/task")

    def names() -> set[str]:
        found = set()
        for task in tasks.iterdir():
            with contextlib.suppress(OSError):
                found.add((task / "comm").read_text().strip())
        return found

    deadline = time.monotonic() + 30
    while "init:crashy" not in names():
        assert time.monotonic() < deadline, f"no thread named init:crashy: {names()}"
        time.sleep(0.02)
    server.wait_ready()
    assert "init:crashy" not in names(), "the name is the init's only"
