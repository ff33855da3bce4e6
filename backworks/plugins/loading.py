"""Loading plugins for use: trust checks, the library, and its `init`.

Discovery (in a child process) says which files are plugins; this module loads the
chosen ones into this process, which runs their code, so it checks owners, modes and
pinned digests first (trust.py), on the file as opened, not on its name. The server
loads only private copies made from a file so checked (lifecycle/build.py); the checks
run again on the copy before it is loaded, here and in worker processes. Every failure
is kept with the plugin's own reason, so the admin routes and the 503s of its
endpoints can say why it is unavailable.
"""

from __future__ import annotations

import enum
from pathlib import Path

import attrs

from backworks.abi import (
    DEFAULT_MAX_RESPONSE_BYTES,
    LogSink,
    PluginInfo,
    PluginInstance,
    PluginLibrary,
    open_plugin_library,
)
from backworks.errors import PluginLoadError
from backworks.plugins.trust import TrustedFile, open_trusted


class PluginState(enum.Enum):
    """Where a plugin stands: ready to serve, failed to start, or disabled by config."""

    READY = "ready"
    FAILED = "failed"
    DISABLED = "disabled"


@attrs.frozen
class PluginSpec:
    """What to load: a plugin name, the file that should provide it, and its settings."""

    name: str
    path: Path
    config_json: bytes = b"{}"
    allow_insecure_permissions: bool = False
    sha256: str | None = None


def open_file(spec: PluginSpec) -> TrustedFile:
    """Opens the file once and makes the owner and mode checks on what was opened.

    Unless `allow_insecure_permissions`; either way, read the library through the
    returned file (and close it), never by its name again. Raises PluginLoadError.
    """
    return open_trusted(spec.path, strict=not spec.allow_insecure_permissions)


def check_file(spec: PluginSpec) -> None:
    """The checks made before any code of the file runs; raises PluginLoadError.

    Owners and modes, then the pinned digest of the very file checked. Then open the
    file by name only if nobody else can change it: a private copy (copies.py).
    """
    with open_file(spec) as opened:
        if spec.sha256:
            opened.check_digest(spec.sha256)


def open_checked(spec: PluginSpec) -> PluginLibrary:
    """Opens the library and makes sure it provides the plugin the config expects.

    Call check_file first: opening runs the library's code.
    """
    library = open_plugin_library(spec.path)
    if library.info.name != spec.name:
        msg = (
            f"declares plugin {library.info.name!r}, but the config expects {spec.name!r} "
            "from this file"
        )
        raise PluginLoadError(spec.path, msg)
    return library


def load_plugin(
    spec: PluginSpec, log: LogSink, *, max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
) -> PluginInstance:
    """Loads and initialises one plugin; raises PluginLoadError or PluginInitError.

    `log` receives the plugin's `host->log` lines; an answer body over
    `max_response_bytes` fails its call. Blocking: `init` is plugin code and may take
    its time. Call it off the event loop.
    """
    check_file(spec)
    library = open_checked(spec)
    return library.instantiate(spec.config_json, log, max_response_bytes=max_response_bytes)


@attrs.define
class LoadedPlugin:
    """A plugin as the server knows it: ready (with what its descriptor says), or why not."""

    name: str
    state: PluginState
    path: str | None = None
    info: PluginInfo | None = None
    error: str | None = None
