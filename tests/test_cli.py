"""`backworks plugins list|inspect`: output shapes and exit codes, on real libraries."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from backworks.cli.main import main
from backworks.plugins.examine import JSON_KEYS
from tests.cbuild import EXT
from tests.conftest import BuildPlugin
from tests.test_discovery import SEGFAULT, good_source, raw_source

# Appends a line to $BW_TEST_MARKER each time the library is loaded, so a test can
# count loads; and prints to stdout, which must never reach the command's output.
COUNTED = good_source(
    "counted",
    prelude="""
__attribute__((constructor)) static void on_load(void) {
    FILE *f = fopen(getenv("BW_TEST_MARKER"), "a");
    if (f) { fputs("loaded\\n", f); fclose(f); }
    printf("library noise on stdout\\n");
    fflush(stdout);
}
""",
)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = tmp_path / "cache"
    monkeypatch.setenv("BACKWORKS_CACHE_DIR", str(folder))
    yield folder
    structlog.reset_defaults()  # main() configures logging for the whole process


@pytest.fixture
def plugins(tmp_path: Path, build_plugin: BuildPlugin) -> Path:
    folder = tmp_path / "plugins"
    build_plugin(good_source("hello"), "hello", folder)
    (folder / f"libnotes.{EXT}").write_text("not a library")
    return folder


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- plugins list -------------------------------------------------------------------


def test_list_json_has_one_object_per_library_with_the_public_keys(
    plugins: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "plugins", "list", "--dir", str(plugins), "--json")
    listed = json.loads(out)
    assert code == 0  # a skipped non-plugin is not a failure
    assert [list(item) for item in listed] == [list(JSON_KEYS)] * 2
    assert listed[0] == {
        "path": str(plugins / f"libhello.{EXT}"),
        "ok": True,
        "name": "hello",
        "version": "1.2.3",
        "description": "A plugin for tests",
        "abi": "1.0",
        "flags": ["thread_safe"],
        "error": None,
    }
    assert listed[1]["ok"] is False
    assert listed[1]["error"] == "not a shared library (no ELF, Mach-O or PE header)"


def test_list_exits_1_and_says_why_when_a_plugin_is_unusable(
    plugins: Path, build_plugin: BuildPlugin, capsys: pytest.CaptureFixture[str]
) -> None:
    build_plugin(raw_source(constructor=SEGFAULT), "segv", plugins)
    code, out, _ = run(capsys, "plugins", "list", "--dir", str(plugins))
    assert code == 1
    segv = plugins / f"libsegv.{EXT}"
    assert f"  {segv}: crashed with SIGSEGV while loading" in out.splitlines()


def test_list_table_is_aligned_and_shows_skipped_files_only_with_all(
    plugins: Path, build_plugin: BuildPlugin, capsys: pytest.CaptureFixture[str]
) -> None:
    build_plugin(good_source("a-much-longer-name", "10.0.0"), "long", plugins)
    _, out, _ = run(capsys, "plugins", "list", "--dir", str(plugins))
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "VERSION", "ABI", "FLAGS", "PATH"]
    assert {line.index(str(plugins)) for line in lines[1:3]} == {lines[0].index("PATH")}
    assert "libnotes" not in out
    assert lines[-1] == "2 usable, 0 not usable, 1 skipped (--all lists them)"
    _, out, _ = run(capsys, "plugins", "list", "--dir", str(plugins), "--all")
    assert f"  {plugins / f'libnotes.{EXT}'}: not a shared library" in out


def test_list_reads_folders_and_recursive_from_a_config_file(
    tmp_path: Path, build_plugin: BuildPlugin, capsys: pytest.CaptureFixture[str]
) -> None:
    build_plugin(good_source("deep"), "deep", tmp_path / "site" / "plugs" / "sub")
    config = tmp_path / "site" / "backworks.yaml"
    config.write_text("plugin_discovery:\n  directories: [plugs]\n  recursive: true\n")
    code, out, _ = run(capsys, "plugins", "list", "--config", str(config), "--json")
    assert code == 0
    assert [item["name"] for item in json.loads(out)] == ["deep"]


def test_list_scans_plugins_in_the_current_folder_by_default(
    plugins: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(plugins.parent)
    code, out, _ = run(capsys, "plugins", "list", "--json")
    assert code == 0
    assert json.loads(out)[0]["path"] == f"plugins/libhello.{EXT}"


def test_a_warm_list_loads_nothing_and_rescan_loads_again(
    tmp_path: Path,
    build_plugin: BuildPlugin,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    marker = tmp_path / "loads"
    monkeypatch.setenv("BW_TEST_MARKER", str(marker))
    folder = tmp_path / "plugins"
    build_plugin(COUNTED, "counted", folder)
    for extra in ([], [], ["--rescan"]):
        assert main(["plugins", "list", "--dir", str(folder), "--json", *extra]) == 0
        out, _ = capfd.readouterr()
        # What the library printed went to the scanner's /dev/null, not into the JSON.
        assert json.loads(out)[0]["name"] == "counted"
    assert marker.read_text().splitlines() == ["loaded", "loaded"]


def test_list_refuses_a_world_writable_plugin_unless_allowed(
    plugins: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (plugins / f"libhello.{EXT}").chmod(0o666)
    assert run(capsys, "plugins", "list", "--dir", str(plugins))[0] == 1
    argv = ("plugins", "list", "--dir", str(plugins), "--allow-insecure-permissions")
    assert run(capsys, *argv)[0] == 0


@pytest.mark.parametrize(
    "argv",
    [
        ["plugins", "list", "--dir", "/no/such/folder"],
        ["plugins", "list", "--bogus"],
        ["plugins", "list", "--timeout", "0"],
        ["plugins"],
        [],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert "error" in err


def test_a_bad_config_file_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "backworks.yaml"
    config.write_text("plugin_discovery:\n  directories: plugins\n  recursive: sometimes\n")
    code, _, err = run(capsys, "plugins", "list", "--config", str(config))
    assert code == 2
    assert "plugin_discovery.directories: must be a list of strings" in err
    assert "plugin_discovery.recursive: must be true or false" in err


# -- plugins inspect ----------------------------------------------------------------


def test_inspect_prints_one_object_and_exits_0_for_a_usable_plugin(
    plugins: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "plugins", "inspect", str(plugins / f"libhello.{EXT}"), "--json")
    assert code == 0
    (item,) = json.loads(out)
    assert (item["name"], item["ok"]) == ("hello", True)


def test_inspect_exits_1_for_a_file_that_is_not_a_usable_plugin(
    tmp_path: Path, build_plugin: BuildPlugin, capsys: pytest.CaptureFixture[str]
) -> None:
    path = build_plugin(raw_source(constructor=SEGFAULT), "segv")
    code, out, _ = run(capsys, "plugins", "inspect", str(path))
    assert code == 1
    assert "error: crashed with SIGSEGV while loading" in out
    code, out, _ = run(capsys, "plugins", "inspect", str(tmp_path))  # a folder
    assert (code, out.splitlines()[-1]) == (1, "error: not a regular file")


def test_inspect_of_a_missing_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "plugins", "inspect", str(tmp_path / "nope.so"))[0] == 2


def test_python_dash_m_backworks_runs_the_cli(plugins: Path) -> None:
    argv = [sys.executable, "-m", "backworks", "plugins", "list", "--dir", str(plugins), "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [item["name"] for item in json.loads(done.stdout)] == ["hello", None]
