"""The values reloading works with: a plugin's versions, and how each reload went.

The Host builds and switches versions and the Reloader decides when (host.py,
reloader.py); this module holds the small values around them: a `PluginVersion` and
the `ReloadStatus` the admin routes show per plugin.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import attrs

from backworks.config import PluginConfig
from backworks.lifecycle.health import HealthMonitor
from backworks.plugins.loading import LoadedPlugin, PluginSpec
from backworks.runtime.runner import PluginRunner

Trigger = Literal["watch", "admin", "config", "signal"]


@attrs.frozen
class PluginVersion:
    """One loaded version of a plugin: what it was built from, and the runner serving it."""

    spec: PluginSpec  # names the file in the plugin folder, not the private copy
    settings: PluginConfig
    runner: PluginRunner
    plugin: LoadedPlugin
    generation: int  # which private copy (library_copies) it runs from
    health: HealthMonitor  # its scheduled health checks, started when it is installed
    # The library file as it was when copied (copies.file_key): a config reload
    # rebuilds a version whose file has changed since, watched or not.
    file_key: tuple[int, int, int, int] | None = None


@attrs.frozen
class ReloadStatus:
    """The last reload of one plugin: when, what asked for it, and how it went."""

    ok: bool
    trigger: Trigger
    at: float = attrs.field(factory=time.time)
    error: str | None = None
    generation: int | None = None  # the private copy now serving (library_copies)

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "ok": self.ok,
            "trigger": self.trigger,
            "error": self.error,
            "generation": self.generation,
        }
