"""Hot reload: plugin libraries replaced under load, the reload route, config reloads.

Real C plugins compiled into tmp_path, served by the real app over loopback; SIGHUP
through a real `backworks serve` process.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import time
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from structlog.testing import capture_logs

from backworks.config import ConfigSource
from backworks.http.aio.state import HOST, RELOADER
from backworks.ops.views import plugin_rows
from tests.cbuild import EXT, compile_library
from tests.serving import KIT, Client, Kit, Serve, error_of, eventually
from tests.test_config import alias_bomb
from tests.test_serve import Server, get, write_config

# Under `isolation: process` a reload replaces the worker processes.
both_isolations = pytest.mark.parametrize("isolation", ["in-process", "process"])
TOKEN = "reload-token"
Logs = list[MutableMapping[str, Any]]


@pytest.fixture
def kit_version(build_cache: Path, tmp_path: Path) -> Callable[[int], Path]:
    """`kit_version(n)`: the test kit built as plugin "kit" whose /version answers n."""

    def build(n: int) -> Path:
        out = tmp_path / "builds" / f"libkit.v{n}.{EXT}"
        flags = ('-DKIT_NAME="kit"', f"-DKIT_VERSION={n}")
        return compile_library(KIT, out, cache=build_cache, extra_flags=flags)

    return build


@pytest.fixture
def logs() -> Iterator[Logs]:
    with capture_logs() as captured:
        yield captured


def watched(**config: Any) -> dict[str, Any]:
    config["plugin_discovery"] = {"directories": ["./plugins"], "watch": True}
    return config


def write_in_place(source: Path, target: Path, *, size: int | None = None) -> None:
    """Overwrites `target`'s bytes in place (same inode), as `cp` does."""
    data = source.read_bytes()
    with target.open("r+b" if target.exists() else "wb") as f:
        f.truncate(0)
        f.write(data if size is None else data[:size])


async def build_of(client: Client, plugin: str = "kit") -> int | None:
    resp = await client.get(f"/plugins/{plugin}/version")
    return (await resp.json())["build"] if resp.status == 200 else None


def events(logs: Logs, name: str) -> Logs:
    return [e for e in logs if e["event"] == name]


def row(client: Client, name: str) -> dict[str, Any]:
    return next(r for r in rows(client) if r["name"] == name)


def rows(client: Client) -> list[dict[str, Any]]:
    return plugin_rows(client.app[HOST], client.app[RELOADER], details=True)


# -- plugin libraries ------------------------------------------------------------


@both_isolations
async def test_replacing_the_library_five_times_under_load_fails_no_request(
    serve: Serve, plugins_dir: Path, tmp_path: Path, kit_version: Callable[[int], Path]
) -> None:
    """Each version is a complete one, and each old one is shut down once, after its calls."""
    marker = tmp_path / "marker.txt"
    library = plugins_dir / f"libkit.{EXT}"
    write_in_place(kit_version(0), library)
    builds = [kit_version(n) for n in range(1, 6)]
    client = await serve(watched(plugins={"kit": {"config": {"marker": str(marker)}}}))
    seen: list[list[int]] = [[] for _ in range(4)]
    failures: list[tuple[int, str]] = []
    stop = asyncio.Event()

    async def load(index: int) -> None:
        while not stop.is_set():
            if index == 3:  # keeps a slow call in flight across the switches
                resp = await client.get("/plugins/kit/sleep?ms=40")
                if resp.status != 200:
                    failures.append((resp.status, await resp.text()))
                continue
            resp = await client.get("/plugins/kit/version")
            if resp.status != 200:
                failures.append((resp.status, await resp.text()))
                continue
            seen[index].append((await resp.json())["build"])

    clients = [asyncio.create_task(load(i)) for i in range(4)]
    for n, build in enumerate(builds, start=1):
        write_in_place(build, library)
        await eventually(lambda n=n: bool(seen[0]) and seen[0][-1] == n)  # type: ignore[misc]
    stop.set()
    await asyncio.gather(*clients)

    assert failures == []
    for answers in seen[:3]:
        assert set(answers) <= set(range(6))
        assert answers == sorted(answers), "a client never goes back to an older version"
    assert row(client, "kit")["generation"] == 6
    await eventually(lambda: "kit v4\n" in marker.read_text())
    await client.close()
    lines = marker.read_text().splitlines()
    expected = [f"init kit v{n}" for n in range(6)] + [f"kit v{n}" for n in range(6)]
    assert sorted(lines) == sorted(expected), "every version started and stopped once"
    for n in range(5):
        assert lines.index(f"init kit v{n + 1}") < lines.index(f"kit v{n}"), (
            "the new version's init (the canary) ran before the old one was shut down"
        )


@both_isolations
async def test_a_truncated_library_written_in_place_is_never_loaded(
    serve: Serve, plugins_dir: Path, tmp_path: Path, kit_version: Callable[[int], Path], logs: Logs
) -> None:
    marker = tmp_path / "marker.txt"
    library = plugins_dir / f"libkit.{EXT}"
    write_in_place(kit_version(0), library)
    client = await serve(watched(plugins={"kit": {"config": {"marker": str(marker)}}}))
    new = kit_version(1)
    write_in_place(new, library, size=new.stat().st_size // 2)

    failed = await eventually(lambda: events(logs, "plugin_reload_failed"))
    assert failed[0]["plugin"] == "kit"
    assert failed[0]["serving"] == 1
    assert await build_of(client) == 0, "the old version keeps serving"
    reload = row(client, "kit")["reload"]
    assert reload["ok"] is False
    assert reload["trigger"] == "watch"
    assert reload["error"]
    assert "init kit v1" not in marker.read_text()

    write_in_place(new, library)  # the write completes: now it loads
    await eventually(lambda: _is_build(client, 1))
    assert row(client, "kit")["reload"]["ok"] is True


async def _is_build(client: Client, n: int) -> bool:
    return await build_of(client) == n


async def test_a_library_written_in_steps_is_loaded_once_when_the_writing_stops(
    serve: Serve, plugins_dir: Path, tmp_path: Path, kit_version: Callable[[int], Path], logs: Logs
) -> None:
    """Pauses shorter than the settle time between writes never expose a partial file."""
    marker = tmp_path / "marker.txt"
    library = plugins_dir / f"libkit.{EXT}"
    write_in_place(kit_version(0), library)
    client = await serve(watched(plugins={"kit": {"config": {"marker": str(marker)}}}))
    data = kit_version(1).read_bytes()
    step = len(data) // 8 + 1

    def write_in_steps() -> None:
        # On a thread of its own: a busy event loop (the watcher's) must not stretch
        # the pauses past the settle time (0.2 s).
        with library.open("r+b") as f:
            f.truncate(0)
            for start in range(0, len(data), step):
                f.write(data[start : start + step])
                f.flush()
                time.sleep(0.02)

    await asyncio.to_thread(write_in_steps)
    await eventually(lambda: _is_build(client, 1))
    await asyncio.sleep(1.0)  # time for a second, unwanted reload to show
    assert [e["generation"] for e in events(logs, "plugin_reloaded")] == [2]
    assert not events(logs, "plugin_reload_failed")
    assert marker.read_text().splitlines().count("init kit v1") == 1


async def test_a_new_library_in_a_watched_folder_is_served_and_a_deleted_one_keeps_serving(
    serve: Serve, plugins_dir: Path, kit_version: Callable[[int], Path], logs: Logs
) -> None:
    client = await serve(watched())
    assert (await client.get("/plugins/kit/version")).status == 404, "no such plugin yet"
    library = plugins_dir / f"libkit.{EXT}"
    shutil.copyfile(kit_version(3), library)
    await eventually(lambda: _is_build(client, 3))
    assert events(logs, "plugin_added")[0]["plugin"] == "kit"

    library.unlink()
    removed = await eventually(lambda: events(logs, "plugin_library_removed"))
    assert removed[0]["plugin"] == "kit"
    assert await build_of(client) == 3


async def test_a_new_file_that_only_looks_like_a_plugin_is_refused_by_a_child_process(
    serve: Serve, plugins_dir: Path, logs: Logs
) -> None:
    """It has the magic number and the entry symbol's name, so only loading it tells."""
    client = await serve(watched())
    fake = b"\x7fELF" + b"\0" * 60 + b"\0backworks_plugin_entry\0" + b"\xff" * 64
    (plugins_dir / f"libfake.{EXT}").write_bytes(fake)
    refused = await eventually(lambda: events(logs, "plugin_library_refused"))
    assert refused[0]["path"].endswith(f"libfake.{EXT}")
    assert not events(logs, "plugin_added")
    assert [r["name"] for r in rows(client)] == []


# -- the reload route --------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "unauthorized"),
        ({"Authorization": "Bearer wrong"}, 401, "unauthorized"),
        ({"Authorization": TOKEN}, 401, "unauthorized"),
    ],
)
async def test_the_reload_route_refuses_a_missing_or_wrong_token(
    serve: Serve,
    plugins_dir: Path,
    kit_version: Callable[[int], Path],
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    shutil.copyfile(kit_version(0), plugins_dir / f"libkit.{EXT}")
    client = await serve({"admin": {"token": TOKEN}})
    resp = await client.post("/_backworks/plugins/kit/reload", headers=headers)
    assert resp.status == status
    assert (await error_of(resp))["code"] == code
    assert row(client, "kit")["generation"] == 1, "nothing was reloaded"


async def test_the_reload_route_is_off_without_a_configured_token(
    serve: Serve, plugins_dir: Path, kit_version: Callable[[int], Path]
) -> None:
    shutil.copyfile(kit_version(0), plugins_dir / f"libkit.{EXT}")
    client = await serve({})
    resp = await client.post(
        "/_backworks/plugins/kit/reload", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert resp.status == 403


@both_isolations
async def test_the_reload_route_loads_the_new_file_and_reports_a_failed_canary(
    serve: Serve, plugins_dir: Path, tmp_path: Path, kit_version: Callable[[int], Path]
) -> None:
    marker = tmp_path / "marker.txt"
    library = plugins_dir / f"libkit.{EXT}"
    shutil.copyfile(kit_version(0), library)
    client = await serve(
        {"admin": {"token": TOKEN}, "plugins": {"kit": {"config": {"marker": str(marker)}}}}
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    shutil.copyfile(kit_version(1), library)  # not watched: only the route reloads
    resp = await client.post("/_backworks/plugins/kit/reload", headers=auth)
    assert resp.status == 200
    body = await resp.json()
    assert body["reload"]["ok"] is True
    assert body["reload"]["generation"] == 2
    assert body["version"] == "0.1.1"
    assert await build_of(client) == 1

    library.write_bytes(b"\x7fELF not a library any more")
    resp = await client.post("/_backworks/plugins/kit/reload", headers=auth)
    assert resp.status == 502
    error = await error_of(resp)
    assert error["code"] == "reload_failed"
    assert "keeps serving" in error["message"]
    assert await build_of(client) == 1

    resp = await client.post("/_backworks/plugins/ghost/reload", headers=auth)
    assert resp.status == 404


# -- the config --------------------------------------------------------------------


def static(body: str) -> dict[str, Any]:
    return {"method": "GET", "response": {"status": 200, "body": body}}


def handled_by(plugin: str) -> dict[str, Any]:
    return {"method": "GET", "runtime": {"type": "plugin", "handler": plugin}}


async def served_with_source(serve: Serve, tmp_path: Path, config: dict[str, Any]) -> Client:
    return await serve(config, source=ConfigSource(tmp_path / "backworks.yaml"))


def rewrite(tmp_path: Path, config: dict[str, Any]) -> None:
    config.setdefault("plugin_discovery", {"enabled": True, "directories": ["./plugins"]})
    (tmp_path / "backworks.yaml").write_text(yaml.safe_dump(config))


async def test_a_bad_config_edit_is_refused_and_a_good_one_swaps_routes_without_a_restart(
    serve: Serve, tmp_path: Path, kit: Kit, logs: Logs
) -> None:
    """Routes, global headers and hooks change together; the listen port does not."""
    kit("kit")
    config = {"endpoints": {"/a": static('"a"'), "/b": static('"b"'), "/k": handled_by("kit")}}
    client = await served_with_source(serve, tmp_path, config)
    assert (await client.get("/b")).status == 200
    assert (await client.get("/k", headers={"x-deny": "1"})).status == 200

    rewrite(tmp_path, {"endpoints": {"/a": static('"a"')}, "plugins": {"kit": {"timeout_ms": -3}}})
    refused = await eventually(lambda: events(logs, "config_reload_failed"))
    assert any("plugins.kit.timeout_ms" in p for p in refused[0]["problems"])
    assert (await client.get("/b")).status == 200, "the old routes keep serving"

    rewrite(
        tmp_path,
        {
            "endpoints": {"/a": static('"a"'), "/c": static('"c"'), "/k": handled_by("kit")},
            "global_headers": {"x-served-by": "reloaded"},
            "hooks": ["kit"],
            "server": {"port": 9},
        },
    )
    await eventually(lambda: _status_is(client, "/c", 200))
    assert (await client.get("/b")).status == 404
    resp = await client.get("/a")
    assert resp.headers["x-served-by"] == "reloaded"
    assert (await client.get("/k", headers={"x-deny": "1"})).status == 401, "the hook runs"
    needs = events(logs, "config_needs_restart")
    assert needs[0]["keys"] == ["server.port"]
    assert client.app[HOST].config.server.port != 9, "the listening port stays"


async def test_an_alias_bomb_or_a_recursive_edit_is_refused_and_the_old_config_serves(
    serve: Serve, tmp_path: Path, logs: Logs
) -> None:
    """Watched or asked for (SIGHUP's path), a hostile file is refused while it is read."""
    client = await served_with_source(serve, tmp_path, {"endpoints": {"/a": static('"a"')}})
    config_file = tmp_path / "backworks.yaml"
    bomb = alias_bomb(20) + "endpoints: {}\n"
    config_file.write_text(bomb)
    refused = await eventually(lambda: events(logs, "config_reload_failed"))
    assert refused[0]["source"] == str(config_file)
    assert refused[0]["problems"] == [
        "line 6, column 7: holds more than 250000 values once its aliases are expanded "
        "(an alias counts as all it stands for); a config this large is refused"
    ]
    assert (await client.get("/a")).status == 200, "the old config keeps serving"

    config_file.write_text("endpoints: &loop {/b: *loop}\n")
    assert not await client.app[RELOADER].reload_config(trigger="signal")
    # The watcher may report the same edit too: the signal's refusal is the one asked for.
    (last,) = [e for e in events(logs, "config_reload_failed") if e["trigger"] == "signal"]
    assert last["problems"] == [
        "line 1, column 23: the alias *loop stands for a node that contains it; a config "
        "cannot be recursive"
    ]
    assert (await client.get("/a")).status == 200


async def _status_is(client: Client, path: str, status: int) -> bool:
    return (await client.get(path)).status == status


async def test_a_config_reload_reloads_changed_plugins_and_shuts_dropped_ones_down(
    serve: Serve, tmp_path: Path, kit_version: Callable[[int], Path], logs: Logs
) -> None:
    """Unchanged plugins keep their runner; a changed entry reloads; a dropped one drains."""
    marker = tmp_path / "marker.txt"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copyfile(kit_version(1), elsewhere / f"libkit.{EXT}")
    other = compile_library(
        KIT,
        elsewhere / f"libother.{EXT}",
        cache=tmp_path / "other-build",
        extra_flags=('-DKIT_NAME="other"', "-DKIT_VERSION=7"),
    )
    hello = compile_library(
        KIT,
        elsewhere / f"libhello.{EXT}",
        cache=tmp_path / "hello-build",
        extra_flags=('-DKIT_NAME="hello"', "-DKIT_VERSION=9"),
    )
    plugins: dict[str, dict[str, Any]] = {
        "kit": {"path": str(elsewhere / f"libkit.{EXT}"), "config": {"marker": str(marker)}},
        "other": {"path": str(other), "config": {"marker": str(marker)}},
        "hello": {"path": str(hello), "config": {"marker": str(marker)}},
    }
    client = await served_with_source(serve, tmp_path, {"plugins": plugins})
    host = client.app[HOST]
    hello_runner = host.runners["hello"]

    plugins["kit"]["timeout_ms"] = 4321
    del plugins["other"]
    rewrite(tmp_path, {"plugins": plugins})
    done = await eventually(lambda: events(logs, "config_reloaded"))
    assert done[0]["reloaded"] == ["kit"]
    assert done[0]["dropped"] == ["other"]
    assert host.runners["kit"].timeout_ms == 4321
    assert host.runners["hello"] is hello_runner
    assert (await client.get("/plugins/other/version")).status == 404, "no such plugin now"
    await eventually(lambda: {"other v7", "kit v1"} <= set(marker.read_text().splitlines()))
    assert "hello v9" not in marker.read_text().splitlines(), "an unchanged plugin runs on"
    assert row(client, "kit")["reload"]["trigger"] == "config"


# -- SIGHUP --------------------------------------------------------------------------


def test_sighup_reloads_the_config_of_a_running_server(tmp_path: Path) -> None:
    (tmp_path / "plugins").mkdir()
    config = {"endpoints": {"/a": static('"a"')}, "logging": {"format": "json"}}
    path = write_config(tmp_path, config)
    server = Server(path, tmp_path)
    try:
        server.wait_ready()
        assert get(f"{server.url}/c")[0] == 404
        write_config(tmp_path, {**config, "endpoints": {"/c": static('"c"')}})
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while get(f"{server.url}/c")[0] != 200:
            assert time.monotonic() < deadline, "the new route was not served"
            time.sleep(0.05)
        assert get(f"{server.url}/a")[0] == 404
        code, lines = server.stop()
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.communicate()
    assert code == 0
    reloads = [e for e in lines if e["event"] == "config_reloaded"]
    assert reloads[0]["trigger"] == "signal"
    assert json.dumps(reloads[0])  # one JSON line per event
