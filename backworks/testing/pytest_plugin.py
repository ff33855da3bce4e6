"""The `backworks_plugin` pytest fixture, registered through the `pytest11` entry point.

    def test_hello(backworks_plugin):
        plugin = backworks_plugin("target/release/libhello.so", config={"greeting": "hi"})
        assert plugin.call("GET", "/hello/ada").json() == {"message": "hi, ada"}

Every plugin the fixture opened is closed (its `shutdown` called) when the test ends.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, Protocol

import pytest

from backworks.testing.plugin import Plugin


class OpenPlugin(Protocol):
    """The `backworks_plugin` fixture: opens a `Plugin` closed at the test's end."""

    def __call__(self, path: str | os.PathLike[str], **options: Any) -> Plugin: ...


@pytest.fixture
def backworks_plugin() -> Iterator[OpenPlugin]:
    """`backworks_plugin(path, config=..., isolation=..., **settings)`: a started Plugin."""
    opened: list[Plugin] = []

    def open_plugin(path: str | os.PathLike[str], **options: Any) -> Plugin:
        plugin = Plugin(path, **options)
        opened.append(plugin)
        return plugin

    yield open_plugin
    for plugin in reversed(opened):
        plugin.close()
