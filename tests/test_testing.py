"""backworks.testing: a plugin author calls a real plugin in a few lines, no server."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from backworks.errors import PluginCallError, PluginCrashedError, PluginInitError
from backworks.testing import Plugin
from backworks.testing.pytest_plugin import OpenPlugin
from tests.conftest import BuildPlugin
from tests.serving import KIT

CRASHKIT = (Path(__file__).parent / "plugins" / "crashkit.c").read_text()


@pytest.fixture
def kit_so(build_plugin: BuildPlugin, tmp_path: Path) -> Path:
    return build_plugin(KIT, name="kit", folder=tmp_path / "lib", extra_flags=('-DKIT_NAME="kit"',))


@pytest.mark.parametrize("isolation", ["in-process", "process"])
def test_a_plugin_answers_a_request_in_process_or_isolated(kit_so: Path, isolation: str) -> None:
    with Plugin(kit_so, isolation=isolation) as plugin:
        assert plugin.name == "kit", "the name the library declares"
        answer = plugin.call(
            "post",
            "/items/7",
            query="x=1",
            headers={"X-Trace": "abc"},
            body={"n": 1},
            endpoint="/items/{id}",
            params={"id": "7"},
        )
        assert answer.status == 200
        seen = answer.json()
        assert seen["method"] == "POST"
        assert seen["endpoint"] == "/items/{id}"
        assert seen["params"] == [["id", "7"]]
        assert ["x-trace", "abc"] in seen["headers"]
        assert ["content-type", "application/json"] in seen["headers"]
        assert seen["body_len"] == len(b'{"n": 1}')
        assert seen["timeout_ms"] == 10_000, "the server's default budget"
        made = plugin.call("GET", "/headers")
        assert (made.status, made.text, made.content_type) == (
            201,
            "made",
            "text/plain; charset=utf-8",
        )
        assert made.headers["x-kit"] == "kit"
        health = plugin.health()
        assert health is not None
        assert health.json() == {"ok": True, "plugin": "kit"}


def test_close_calls_shutdown_once_with_the_config_given(kit_so: Path, tmp_path: Path) -> None:
    marker = tmp_path / "shutdown.txt"
    with Plugin(kit_so, config={"marker": str(marker)}):
        assert not marker.exists()
    assert marker.read_text().count("\n") == 1


def test_a_failed_call_raises_what_the_server_maps_to_502(kit_so: Path) -> None:
    with Plugin(kit_so) as plugin, pytest.raises(PluginCallError, match="deliberate failure"):
        plugin.call("GET", "/fail")


def test_a_plugin_that_refuses_to_start_says_so(kit_so: Path) -> None:
    with pytest.raises(PluginInitError, match="fail_init is set"):
        Plugin(kit_so, config={"fail_init": True})


def test_settings_are_checked_like_the_yaml_with_their_key(kit_so: Path) -> None:
    with pytest.raises(Exception, match=r"plugins\.kit\.timeout_ms"):
        Plugin(kit_so, timeout_ms=-3)


def test_an_isolated_crash_is_an_error_and_the_next_call_gets_a_new_worker(
    build_plugin: BuildPlugin, tmp_path: Path
) -> None:
    crashy = build_plugin(
        CRASHKIT, name="crashy", folder=tmp_path / "lib", extra_flags=('-DKIT_NAME="crashy"',)
    )
    with Plugin(crashy, isolation="process") as plugin:
        first = plugin.call("GET", "/pid").json()["pid"]
        with pytest.raises(PluginCrashedError):
            plugin.call("POST", "/segv")
        assert plugin.call("GET", "/pid").json()["pid"] != first
    assert first != os.getpid()


async def test_an_async_test_awaits_the_answer(kit_so: Path) -> None:
    with Plugin(kit_so) as plugin:
        answer = await plugin.acall("GET", "/status", query="code=202")
        assert answer.status == 202


def test_the_fixture_closes_what_it_opened(
    backworks_plugin: OpenPlugin, kit_so: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "fixture-shutdown.txt"
    plugin = backworks_plugin(kit_so, config={"marker": str(marker)})
    assert plugin.call("GET", "/status", query="code=200").status == 200
    plugin.close()  # what the fixture does after the test; closing twice is harmless
    assert marker.read_text().count("\n") == 1


def test_an_authors_own_pytest_run_finds_the_fixture_through_the_entry_point(
    kit_so: Path, tmp_path: Path
) -> None:
    """An installed Backworks registers `backworks_plugin` with pytest (pytest11)."""
    author = tmp_path / "author"
    author.mkdir()
    (author / "test_hello.py").write_text(
        textwrap.dedent(
            f"""
            def test_status(backworks_plugin):
                plugin = backworks_plugin({str(kit_so)!r})
                assert plugin.call("GET", "/status", query="code=204").status == 204
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(author)],
        cwd=author,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
