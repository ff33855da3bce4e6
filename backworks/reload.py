"""The values reloading works with: versions, where the config came from, how it went.

The Host builds and switches versions and the Reloader decides when (host.py,
reloader.py); this module holds the small values around them: a `PluginVersion`, the
`ConfigSource` a config reload reads again (with the same command-line overrides as
at start), the `ReloadStatus` the admin routes show per plugin, and which config
changes only a restart can apply.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import attrs

from backworks.config import Config, PluginConfig, load_config
from backworks.errors import BackworksError, PluginError
from backworks.executor import PluginRunner
from backworks.registry import LoadedPlugin, PluginSpec

Trigger = Literal["watch", "admin", "config", "signal"]


def with_listen_address(config: Config, host: str | None, port: int | None) -> Config:
    """`config` with the command line's --host/--port, where given."""
    server = attrs.evolve(
        config.server,
        host=host if host is not None else config.server.host,
        port=port if port is not None else config.server.port,
    )
    return attrs.evolve(config, server=server)


@attrs.frozen
class ConfigSource:
    """The file the running config was read from, and what the command line overrode."""

    path: Path
    host: str | None = None
    port: int | None = None

    def load(self) -> Config:
        """Reads the file again; raises ConfigError listing every problem. Blocking."""
        return with_listen_address(load_config(self.path), self.host, self.port)


@attrs.frozen
class PluginVersion:
    """One loaded version of a plugin: what it was built from, and the runner serving it."""

    spec: PluginSpec  # names the file in the plugin folder, not the private copy
    settings: PluginConfig
    runner: PluginRunner
    plugin: LoadedPlugin
    generation: int  # which private copy (library_copies) it runs from


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


class NotReloadable(BackworksError):
    """A reload was asked of a plugin that cannot be reloaded; `known` False: no such plugin."""

    def __init__(self, plugin: str, reason: str, *, known: bool = True) -> None:
        self.plugin = plugin
        self.reason = reason
        self.known = known
        super().__init__(f"plugin {plugin!r} cannot be reloaded: {reason}")


# Settings read once, when the server starts listening; a reload cannot change them.
_RESTART_ONLY: tuple[tuple[str, Callable[[Config], object]], ...] = (
    ("server.host", lambda c: c.server.host),
    ("server.port", lambda c: c.server.port),
    ("server.max_body_bytes", lambda c: c.server.max_body_bytes),
    ("logging", lambda c: c.logging),
    ("dashboard", lambda c: c.dashboard),
)


def restart_needed(old: Config, new: Config) -> list[str]:
    """The key paths whose change in `new` only takes effect after a restart."""
    return [key for key, read in _RESTART_ONLY if read(old) != read(new)]


def keep_restart_only(running: Config, new: Config) -> Config:
    """`new` with the running values of what only a restart can change."""
    server = attrs.evolve(
        new.server,
        host=running.server.host,
        port=running.server.port,
        max_body_bytes=running.server.max_body_bytes,
    )
    return attrs.evolve(new, server=server, logging=running.logging, dashboard=running.dashboard)


def reason_of(error: BackworksError) -> str:
    """What a plugin's admin row and log line say about why it could not start."""
    return error.message if isinstance(error, PluginError) else str(error)
