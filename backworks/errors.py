"""The error hierarchy: one root, and a subclass for each thing a caller handles apart.

Every error names what it is about (a file, a key path, a plugin) as an attribute and
in its message, so a person reading a log line knows where to look.
"""

from __future__ import annotations

from pathlib import Path


class BackworksError(Exception):
    """Root of every error Backworks raises on purpose."""


class ConfigError(BackworksError):
    """The configuration is invalid; `problems` lists each one with its key path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid configuration in {source}:\n{lines}")


class PluginLoadError(BackworksError):
    """A library could not be loaded or is not a usable Backworks plugin."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class AbiMismatchError(PluginLoadError):
    """A library was built against an ABI this host cannot serve."""


class PluginError(BackworksError):
    """Base for errors that arise while a loaded plugin is being used."""

    def __init__(self, plugin: str, message: str) -> None:
        self.plugin = plugin
        self.message = message
        super().__init__(f"plugin {plugin!r}: {message}")


class PluginInitError(PluginError):
    """A plugin's `init` failed; `message` carries the plugin's own reason."""


class PluginCallError(PluginError):
    """A call returned BW_FAIL (or an unknown code); the plugin's message is kept."""


class PluginCancelledError(PluginError):
    """A call saw the host's cancel flag and returned BW_CANCELLED."""


class PluginTimeoutError(PluginError):
    """A call overran its budget; the host answered without waiting for it."""


class PluginSaturatedError(PluginError):
    """No concurrency slot became free within the allowed wait."""


class CircuitOpenError(PluginError):
    """The plugin's circuit breaker is open; calls are refused until it recovers."""


class PluginUnavailableError(PluginError):
    """The plugin is disabled or failed to load; `message` says why."""


class PluginCrashedError(PluginError):
    """The process running the plugin died during a call.

    One worker death may fail several calls; it counts once against the circuit
    breaker. `counted` is True for the one call that stands for the death, False for
    the others lost with it (and for calls lost when the host stopped a worker on
    purpose: the reason was counted already, or was not the plugin's fault).
    """

    def __init__(self, plugin: str, message: str, *, counted: bool = True) -> None:
        super().__init__(plugin, message)
        self.counted = counted


class PluginOutcomeUnknownError(PluginCrashedError):
    """A call that may not be repeated was running when its worker died, beside others.

    It may or may not have taken effect (a POST that wrote its row, then lost its
    answer); only the client, with an idempotency key, can tell. Not the crash's
    culprit as far as the host knows: the culprit is answered PluginCrashedError.
    """


class PluginRestartingError(PluginUnavailableError):
    """No worker took the call within its budget (they were restarting): it never ran."""


class StartupError(BackworksError):
    """A critical plugin could not be started; the server must not open its port."""


class NotReloadable(BackworksError):
    """A reload was asked of a plugin that cannot be reloaded; `known` False: no such plugin."""

    def __init__(self, plugin: str, reason: str, *, known: bool = True) -> None:
        self.plugin = plugin
        self.reason = reason
        self.known = known
        super().__init__(f"plugin {plugin!r} cannot be reloaded: {reason}")


def reason_of(error: BackworksError) -> str:
    """What an admin row or a log line says about why a plugin could not start.

    A plugin error's own message (the plugin is named beside it), else the whole text.
    """
    return error.message if isinstance(error, PluginError) else str(error)
