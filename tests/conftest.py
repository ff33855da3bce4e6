from __future__ import annotations

from pathlib import Path
from typing import Protocol

import pytest

from tests.cbuild import EXT, compile_library


class BuildPlugin(Protocol):
    """The `build_plugin` fixture: compiles C `source` into `folder/lib<name>.<ext>`."""

    def __call__(
        self,
        source: str,
        name: str = "plugin",
        folder: Path | None = None,
        extra_flags: tuple[str, ...] = (),
    ) -> Path: ...


# `kit`, `serve` and `plugins_dir`: a real server over real C plugins, for any test file;
# `cargo_target`, `weather_plugin` and `test_plugins`: Rust plugins built once a session.
pytest_plugins = ["tests.serving", "tests.rust_build"]


@pytest.fixture(scope="session")
def build_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cbuild")


@pytest.fixture
def build_plugin(tmp_path: Path, build_cache: Path) -> BuildPlugin:
    """`build_plugin(source, name="x", folder=None)` compiles C into `folder/libx.so`."""

    def build(
        source: str,
        name: str = "plugin",
        folder: Path | None = None,
        extra_flags: tuple[str, ...] = (),
    ) -> Path:
        out = (folder or tmp_path) / f"lib{name}.{EXT}"
        return compile_library(source, out, cache=build_cache, extra_flags=extra_flags)

    return build
