"""An operator's first day (issue 21): the server says why, and the examples work as written.

Each test runs `backworks` as the README tells an operator to, in a child process over
real compiled plugins, and reads its JSON log.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from backworks.cli.scaffold import create_plugin_project
from tests.cbuild import EXT, compile_library
from tests.conftest import BuildPlugin
from tests.serving import KIT
from tests.test_copies import Served, stopping
from tests.test_discovery import ABORT, raw_source
from tests.test_workers import eventually

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def servers() -> Iterator[list[Served]]:
    with stopping() as started:
        yield started


def log_events(server: Served, event: str) -> list[dict[str, Any]]:
    lines = server.log.read_text().splitlines()
    return [e for e in (json.loads(line) for line in lines if line.startswith("{"))
            if e.get("event") == event]  # fmt: skip


def backworks(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WEATHER_KEY", "ADMIN_TOKEN")}
    return subprocess.run(
        [sys.executable, "-m", "backworks", *args], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_serve_logs_each_refused_file_with_the_reason_and_fix_inspect_gives(
    tmp_path: Path, build_plugin: BuildPlugin, servers: list[Served]
) -> None:
    plugins = tmp_path / "plugins"
    major = build_plugin(raw_source(name="major", abi="(2u << 16)"), "major", plugins)
    loose = build_plugin(KIT, "loose", plugins, extra_flags=('-DKIT_NAME="loose"',))
    loose.chmod(0o664)
    crashes = build_plugin(raw_source(name="crashes", constructor=ABORT), "crashes", plugins)
    build_plugin(KIT, "kit", plugins, extra_flags=('-DKIT_NAME="kit"',))
    (tmp_path / "backworks.yaml").write_text("logging: {level: info, format: json}\n")
    server = Served(tmp_path, tmp_path)
    servers.append(server)
    eventually(server.ready, what="the server ready")
    refused = {e["path"]: e["error"] for e in log_events(server, "plugin_file_refused")}
    assert sorted(refused) == sorted(str(p) for p in (major, loose, crashes))
    for path, error in refused.items():
        inspected = backworks("plugins", "inspect", path, "--json", cwd=tmp_path)
        assert inspected.returncode == 1
        (result,) = json.loads(inspected.stdout)
        assert result["error"] == error
    assert "rebuild it against this host's SDK" in refused[str(major)]
    assert f"chmod go-w {loose}" in refused[str(loose)]
    assert "SIGABRT" in refused[str(crashes)]
    assert server.answer("/plugins/kit/echo")[0] == 200


def test_sighup_without_a_config_file_rereads_what_there_is_and_keeps_serving(
    tmp_path: Path, build_plugin: BuildPlugin, servers: list[Served]
) -> None:
    """The generated plugin's README: `backworks serve` with no YAML, then add one."""
    build_plugin(KIT, "kit", tmp_path / "plugins", extra_flags=('-DKIT_NAME="kit"',))
    server = Served(tmp_path, tmp_path)
    servers.append(server)
    eventually(server.ready, what="the server ready")
    server.proc.send_signal(signal.SIGHUP)
    eventually(lambda: log_events(server, "config_unchanged"), what="the defaults re-read")
    assert server.answer("/plugins/kit/echo")[0] == 200
    # A config that appears is read on the next SIGHUP (its routes shadow, and it says so).
    config = {
        "endpoints": {
            "/hello/{name}": {"method": "GET", "runtime": {"type": "plugin", "handler": "kit"}},
            "/hello/{who}": {"method": "GET", "runtime": {"type": "plugin", "handler": "kit"}},
        },
        "logging": {"format": "json"},
    }
    (tmp_path / "backworks.yaml").write_text(yaml.safe_dump(config))
    server.proc.send_signal(signal.SIGHUP)
    eventually(lambda: server.answer("/hello/Ada")[0] == 200, what="the new routes served")
    assert server.proc.poll() is None
    (shadowed,) = log_events(server, "route_shadowed")
    assert "endpoints./hello/{who}: can never match: '/hello/{name}'" in shadowed["problem"]


def test_validate_says_which_route_shadows_which(tmp_path: Path) -> None:
    (tmp_path / "backworks.yaml").write_text(
        'endpoints:\n'
        '  "/hello/{name}": {method: GET, response: {status: 200, body: "a"}}\n'
        '  "/hello/{who}": {method: GET, response: {status: 200, body: "b"}}\n'
        '  "/items/{id}": {method: GET, response: {status: 200, body: "c"}}\n'
        '  "/items/{id}/parts": {method: GET, response: {status: 200, body: "d"}}\n'
        '  "/files/{name}": {method: GET, response: {status: 200, body: "e"}}\n'
        '  "/files/readme": {method: GET, response: {status: 200, body: "f"}}\n'
    )  # fmt: skip
    result = backworks("validate", cwd=tmp_path)
    assert result.returncode == 0
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning:")]
    # A static path is looked up before any pattern: /files/readme is reached.
    assert warnings == [
        "warning: endpoints./hello/{who}: can never match: '/hello/{name}', declared before "
        "it, matches every path it matches (GET)"
    ]


def yaml_blocks(text: str) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)


def test_the_readmes_yaml_examples_validate_as_written(tmp_path: Path) -> None:
    """Pasted into `backworks validate` with no WEATHER_KEY or ADMIN_TOKEN set."""
    readmes = [REPO / "README.md", REPO / "examples" / "weather-plugin" / "README.md"]
    for lang in ("c", "rust"):
        made = create_plugin_project("greeter", lang, tmp_path / lang)
        readmes.append(made.folder / "README.md")
    blocks = [(readme, block) for readme in readmes for block in yaml_blocks(readme.read_text())]
    assert len(blocks) >= 4
    for i, (readme, block) in enumerate(blocks):
        folder = tmp_path / f"paste{i}"
        folder.mkdir()
        (folder / "backworks.yaml").write_text(block)
        result = backworks("validate", cwd=folder)
        assert result.returncode == 0, f"{readme}:\n{block}\n{result.stderr}"
        assert "warning" not in result.stdout, result.stdout


def test_the_scaffold_yaml_watches_and_a_reload_takes_a_library_rebuilt_before(
    tmp_path: Path, build_cache: Path, servers: list[Served]
) -> None:
    """Serving with watch off, the library is rebuilt and copied in: nothing happens.
    Turning watch on (the scaffold's YAML) reloads it, though it changed before."""
    made = create_plugin_project("kit", "c", tmp_path / "made")
    readme = made.folder / "README.md"
    (scaffold,) = [yaml.safe_load(b) for b in yaml_blocks(readme.read_text())]
    assert scaffold["plugin_discovery"]["watch"] is True

    def kit(build: int) -> Path:
        return compile_library(
            KIT, tmp_path / f"build{build}" / f"libkit.{EXT}", cache=build_cache,
            extra_flags=('-DKIT_NAME="kit"', f"-DKIT_VERSION={build}"),
        )  # fmt: skip

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    shutil.copyfile(kit(1), plugins / f"libkit.{EXT}")
    config = {**scaffold, "plugin_discovery": {**scaffold["plugin_discovery"], "watch": False}}
    config["plugins"] = {}
    config["logging"] = {"format": "json"}
    (tmp_path / "backworks.yaml").write_text(yaml.safe_dump(config))
    server = Served(tmp_path, tmp_path)
    servers.append(server)
    eventually(server.ready, what="the server ready")

    def build() -> int:
        status, body = server.answer("/plugins/kit/version")
        assert status == 200, body
        return int(json.loads(body)["build"])

    assert build() == 1
    shutil.copyfile(kit(2), plugins / f"libkit.{EXT}")  # `cp` over it, as the README says
    (tmp_path / "backworks.yaml").write_text(yaml.safe_dump({**config, **scaffold}))
    eventually(lambda: build() == 2, what="the rebuilt library served")
    (reloaded,) = [e for e in log_events(server, "config_reloaded") if e["reloaded"]]
    assert reloaded["reloaded"] == ["kit"]
    # And now watched: the next copy is served without a word to the server.
    shutil.copyfile(kit(3), plugins / f"libkit.{EXT}")
    eventually(lambda: build() == 3, what="the watched library reloaded")


@pytest.mark.parametrize("lang", ["c", "rust"])
def test_the_readme_plugin_sample_is_the_api_the_scaffold_writes(lang: str, tmp_path: Path) -> None:
    """One story: README's sample and `backworks new --lang` use the same entry points."""
    text = (REPO / "README.md").read_text()
    (sample,) = re.findall(rf"```{lang}\n(.*?)```", text, re.DOTALL)
    made = create_plugin_project("greeter", lang, tmp_path / "made")
    code = next(f for f in made.files if f.endswith((".c", ".rs")))
    source = (made.folder / code).read_text()
    if lang == "rust":
        for api in ("impl BackworksPlugin for", "async fn handle(&self, req: &Request)",
                    "export_plugin!("):  # fmt: skip
            assert api in sample, api
            assert api in source, api
    else:
        for api in ("#include <backworks/sdk.h>", "BW_DEFINE_PLUGIN("):
            assert api in sample, api
            assert api in source, api
