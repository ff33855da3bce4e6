"""`backworks new plugin`: what it writes and what it refuses (builds: test_plugins_e2e)."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog

import backworks
from backworks.cli import scaffold
from backworks.cli.main import EXIT_OK, EXIT_USAGE, main
from backworks.cli.scaffold import ScaffoldError, create_plugin_project


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    finally:
        structlog.reset_defaults()  # main() configures logging for the whole process
    out, err = capsys.readouterr()
    return code, out, err


def test_new_rust_plugin_writes_a_cdylib_crate_on_this_checkouts_sdk(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        capsys, "new", "plugin", "my-weather", "--lang", "rust", "--dir", str(tmp_path)
    )
    assert code == EXIT_OK
    project = tmp_path / "my-weather"
    assert sorted(p.relative_to(project).as_posix() for p in project.rglob("*")) == [
        ".gitignore",
        "Cargo.toml",
        "README.md",
        "src",
        "src/lib.rs",
    ]
    manifest = (project / "Cargo.toml").read_text()
    assert 'name = "my-weather-plugin"' in manifest
    assert 'crate-type = ["cdylib"]' in manifest
    sdk = scaffold.sdk_crate_dir()
    assert sdk is not None
    assert f'backworks-plugin-sdk = {{ path = "{sdk.as_posix()}" }}' in manifest
    source = (project / "src" / "lib.rs").read_text()
    assert "impl BackworksPlugin for MyWeatherPlugin" in source
    assert 'fn name(&self) -> &str {\n        "my-weather"' in source
    assert "export_plugin!(MyWeatherPlugin);" in source
    assert "libmy_weather_plugin.so" in (project / "README.md").read_text()
    assert "cargo build --release" in out


def test_new_c_plugin_writes_a_source_and_a_makefile_on_this_installs_headers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "new", "plugin", "hello2", "--lang", "c")
    assert code == EXIT_OK
    project = tmp_path / "hello2"
    assert sorted(p.name for p in project.iterdir()) == [
        ".gitignore",
        "Makefile",
        "README.md",
        "hello2.c",
    ]
    source = (project / "hello2.c").read_text()
    assert "#include <backworks/sdk.h>" in source
    assert 'BW_DEFINE_PLUGIN(.name = "hello2"' in source
    makefile = (project / "Makefile").read_text()
    include = (Path(backworks.__file__).parent.parent / "sdk-c" / "include").resolve()
    assert f"BACKWORKS_INCLUDE ?= {include.as_posix()}\n" in makefile
    assert "\t$(CC) $(CFLAGS) $(SHARED)" in makefile  # recipes need tabs
    assert "make" in out


@pytest.mark.parametrize("name", ["Bad", "_under", "sp ace", "x" * 65, ""])
def test_an_invalid_plugin_name_is_refused_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    code, _, err = run(capsys, "new", "plugin", name, "--lang", "c", "--dir", str(tmp_path))
    assert code == EXIT_USAGE
    assert f"plugin name {name!r} is invalid" in err
    assert list(tmp_path.iterdir()) == []


def test_an_existing_non_empty_folder_is_refused_and_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    code, _, err = run(capsys, "new", "plugin", "taken", "--lang", "rust", "--dir", str(tmp_path))
    assert code == EXIT_USAGE
    assert "the folder is not empty" in err
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]


def test_an_existing_file_in_the_way_is_refused(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(ScaffoldError, match="the path exists and is not a folder"):
        create_plugin_project("taken", "c", tmp_path / "taken")


def test_an_existing_empty_folder_is_used(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    made = create_plugin_project("empty", "c", tmp_path / "empty")
    assert "empty.c" in made.files


def test_an_unknown_language_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "new", "plugin", "x", "--lang", "go", "--dir", str(tmp_path))
    assert code == EXIT_USAGE
    assert "invalid choice: 'go'" in err


def test_without_the_sdk_a_rust_project_is_refused_never_pointed_at_an_unpublished_crate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scaffold, "sdk_crate_dir", lambda: None)
    with pytest.raises(ScaffoldError, match="Rust SDK is missing from this installation"):
        create_plugin_project("lonely", "rust", tmp_path / "lonely")
    assert not (tmp_path / "lonely").exists(), "nothing is written"


@pytest.mark.parametrize(
    ("name", "crate", "struct"),
    [
        ("weather", "weather-plugin", "WeatherPlugin"),
        ("my-plugin", "my-plugin", "MyPlugin"),
        ("test", "test-plugin", "TestPlugin"),
        ("3d_view", "bw-3d_view-plugin", "Plugin3dView"),
    ],
)
def test_rust_names_are_derived_so_cargo_and_rustc_accept_them(
    name: str, crate: str, struct: str
) -> None:
    assert scaffold._crate_name(name) == crate
    assert scaffold._struct_name(name) == struct
