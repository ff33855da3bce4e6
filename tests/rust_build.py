"""Builds Rust crates for the tests: the SDK, its example plugin, throwaway plugins.

Cargo is slow to start and slower to compile, so the tests share one target folder per
session: the SDK is compiled once per profile and every crate that depends on it reuses
those artifacts. All builds run `--offline`; the SDK and its examples use the standard
library only.

Also a pytest plugin module (tests/conftest.py lists it in `pytest_plugins`): the
session fixtures at the end (`cargo_target`, `weather_plugin`, `test_plugins`) are
shared by every test file, so each crate is built once per session, in release mode.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SDK_WORKSPACE = REPO / "sdk-rust"
SDK_CRATE = SDK_WORKSPACE / "backworks-plugin-sdk"
WEATHER_CRATE = REPO / "examples" / "weather-plugin"
# Plugins written against the SDK the way its users write them (`seed_plugin.rs` is
# the seed's example verbatim): crate name -> source file.
TEST_PLUGIN_SOURCES = Path(__file__).parent / "plugins" / "rust"
TEST_PLUGINS = {
    "seed-plugin": "seed_plugin.rs",
    "seed-weather": "seed_weather.rs",
    "probe": "probe.rs",
}

# A cargo build that takes longer than this is stuck, not slow.
CARGO_TIMEOUT_S = 600


class CargoError(Exception):
    """A cargo command failed; the message carries what it printed."""

    def __init__(self, what: str, result: subprocess.CompletedProcess[str]) -> None:
        self.what = what
        self.result = result
        output = (result.stdout + result.stderr).strip()
        super().__init__(f"{what} failed (exit {result.returncode}):\n{output[-6000:]}")


def cdylib_name(lib_name: str) -> str:
    """The file cargo makes of the `cdylib` library `lib_name` on this platform."""
    if sys.platform == "win32":
        return f"{lib_name}.dll"
    if sys.platform == "darwin":
        return f"lib{lib_name}.dylib"
    return f"lib{lib_name}.so"


def cargo(args: Sequence[str], *, target_dir: Path) -> subprocess.CompletedProcess[str]:
    """Runs `cargo <subcommand> --offline <rest>` with `target_dir`; does not check the status."""
    subcommand, *rest = args
    env = {**os.environ, "CARGO_TARGET_DIR": str(target_dir), "CARGO_TERM_COLOR": "never"}
    return subprocess.run(
        ["cargo", subcommand, "--offline", *rest],
        env=env,
        capture_output=True,
        text=True,
        timeout=CARGO_TIMEOUT_S,
        check=False,
    )


def cargo_checked(args: Sequence[str], *, target_dir: Path, what: str) -> str:
    """Like `cargo`, but raises `CargoError` on failure; returns stdout."""
    result = cargo(args, target_dir=target_dir)
    if result.returncode != 0:
        raise CargoError(what, result)
    return result.stdout


def built_library(target_dir: Path, lib_name: str, profile: str = "release") -> Path:
    """Where cargo put the `cdylib` called `lib_name` (underscores, not dashes)."""
    path = target_dir / profile / cdylib_name(lib_name)
    if not path.is_file():
        msg = f"cargo reported success but {path} does not exist"
        raise FileNotFoundError(msg)
    return path


def _toml_path(path: Path) -> str:
    # A TOML literal string: no escapes, so Windows backslashes survive too.
    return f"'{path.as_posix()}'"


def write_plugin_workspace(root: Path, crates: Mapping[str, str]) -> Path:
    """Writes a cargo workspace of `cdylib` plugin crates; returns its manifest.

    `crates` maps each crate's name (its library is the name with `_` for `-`) to the
    text of its `src/lib.rs`. Every crate depends on the SDK in this checkout by path,
    so one `cargo build --workspace` compiles them all in parallel.
    """
    root.mkdir(parents=True, exist_ok=True)
    members = ", ".join(f'"{name}"' for name in crates)
    manifest = root / "Cargo.toml"
    manifest.write_text(f'[workspace]\nresolver = "2"\nmembers = [{members}]\n')
    for name, source in crates.items():
        crate = root / name
        (crate / "src").mkdir(parents=True, exist_ok=True)
        (crate / "Cargo.toml").write_text(
            "[package]\n"
            f'name = "{name}"\n'
            'version = "0.1.0"\n'
            'edition = "2021"\n'
            "publish = false\n\n"
            "[lib]\n"
            'crate-type = ["cdylib"]\n\n'
            "[dependencies]\n"
            f"backworks-plugin-sdk = {{ path = {_toml_path(SDK_CRATE)} }}\n"
        )
        (crate / "src" / "lib.rs").write_text(source)
    return manifest


# ---------------------------------------------------------------------------
# Session fixtures


@pytest.fixture(scope="session")
def cargo_target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CARGO_TARGET_DIR for the session, so the SDK compiles once per profile."""
    return tmp_path_factory.mktemp("cargo-target")


@pytest.fixture(scope="session")
def weather_plugin(cargo_target: Path) -> Path:
    """examples/weather-plugin built in release mode: the library's path."""
    manifest = str(WEATHER_CRATE / "Cargo.toml")
    cargo_checked(
        ["build", "--release", "--manifest-path", manifest],
        target_dir=cargo_target,
        what="building examples/weather-plugin",
    )
    return built_library(cargo_target, "weather_plugin")


@pytest.fixture(scope="session")
def test_plugins(cargo_target: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The plugins of TEST_PLUGINS, built as one workspace in release mode: crate name ->
    library path."""
    sources = {
        name: (TEST_PLUGIN_SOURCES / file).read_text() for name, file in TEST_PLUGINS.items()
    }
    manifest = write_plugin_workspace(tmp_path_factory.mktemp("rust-plugins"), sources)
    cargo_checked(
        ["build", "--release", "--workspace", "--manifest-path", str(manifest)],
        target_dir=cargo_target,
        what="building the test plugins",
    )
    return {name: built_library(cargo_target, name.replace("-", "_")) for name in TEST_PLUGINS}
