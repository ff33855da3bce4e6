"""Where the running config came from, and which of its keys only a restart applies.

A config reload reads the same file again with the same command-line overrides
(`ConfigSource`); settings read once, when the server starts listening, keep their
running values and are reported as needing a restart.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from backworks.config.model import Config, ServerConfig
from backworks.config.parse import default_config, load_config


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
    """The file the running config was read from, and what the command line overrode.

    `optional`: the server started without a config file (the defaults, discovering
    ./plugins); a reload reads `path` if it has appeared since, else the defaults again.
    """

    path: Path
    host: str | None = None
    port: int | None = None
    optional: bool = False

    def load(self) -> Config:
        """Reads the file again; raises ConfigError listing every problem. Blocking."""
        if self.optional and not self.path.is_file():
            config = default_config(self.path.parent)
        else:
            config = load_config(self.path)
        return with_listen_address(config, self.host, self.port)


# Settings read once, when the server starts listening; a reload cannot change them.
# Of `server`, only shutdown_timeout_ms is read again (when the server stops).
_RESTART_ONLY_SERVER = tuple(
    field.name for field in attrs.fields(ServerConfig) if field.name != "shutdown_timeout_ms"
)


def restart_needed(old: Config, new: Config) -> list[str]:
    """The key paths whose change in `new` only takes effect after a restart."""
    changed = [
        f"server.{name}"
        for name in _RESTART_ONLY_SERVER
        if getattr(old.server, name) != getattr(new.server, name)
    ]
    changed += [key for key in ("logging", "dashboard") if getattr(old, key) != getattr(new, key)]
    return changed


def keep_restart_only(running: Config, new: Config) -> Config:
    """`new` with the running values of what only a restart can change."""
    kept = {name: getattr(running.server, name) for name in _RESTART_ONLY_SERVER}
    server = attrs.evolve(new.server, **kept)
    return attrs.evolve(new, server=server, logging=running.logging, dashboard=running.dashboard)
