"""`import backworks`: the public names, typed by the stub, loaded only when asked for."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import backworks

STUB = Path(backworks.__file__).with_suffix(".pyi")


def test_all_names_the_public_api_and_each_one_resolves() -> None:
    assert {"create_app", "mount", "load_config", "Plugin", "Request", "Response"} <= set(
        backworks.__all__
    )
    for name in backworks.__all__:
        assert getattr(backworks, name).__name__ == name
    assert set(dir(backworks)) >= set(backworks.__all__)


def test_the_stub_types_exactly_the_names_of_all() -> None:
    tree = ast.parse(STUB.read_text())
    typed = {
        alias.asname
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert typed == set(backworks.__all__)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = backworks.no_such_name  # type: ignore[attr-defined]


def test_importing_the_package_loads_no_server() -> None:
    """A plugin worker or the scanner imports `backworks` first: that must stay cheap."""
    probe = "import sys, backworks; print(sorted(m for m in sys.modules if m.startswith(('aiohttp', 'structlog', 'backworks.'))))"  # noqa: E501
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
