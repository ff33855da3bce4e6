"""Backworks: turn compiled plugins into HTTP APIs through a stable, versioned C ABI.

The public names below are imported on first use, not with the package: a plugin
worker process or the discovery scanner runs `python -m backworks.<module>` and must
not load aiohttp, structlog or the server for it. `__init__.pyi` gives them their
types; tests/test_public_api.py keeps the two lists equal.

    import backworks
    app = backworks.create_app(backworks.load_config(path))     # the server's app
    backworks.mount(parent_app, "/bw", config)                  # inside an app of yours
    with backworks.Plugin("libhello.so") as plugin:             # a plugin in a test
        plugin.call("GET", "/hello")
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module that defines it
_EXPORTS = {
    "create_app": "backworks.server.app",
    "mount": "backworks.server.embed",
    "Config": "backworks.config",
    "ConfigSource": "backworks.config",
    "load_config": "backworks.config",
    "parse_config": "backworks.config",
    "Plugin": "backworks.testing",
    "Answer": "backworks.testing",
    "Request": "backworks.abi.values",
    "Response": "backworks.abi.values",
    "BackworksError": "backworks.errors",
    "ConfigError": "backworks.errors",
    "PluginLoadError": "backworks.errors",
    "AbiMismatchError": "backworks.errors",
    "PluginError": "backworks.errors",
    "PluginInitError": "backworks.errors",
    "PluginCallError": "backworks.errors",
    "PluginTimeoutError": "backworks.errors",
    "PluginCrashedError": "backworks.errors",
    "CircuitOpenError": "backworks.errors",
    "StartupError": "backworks.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        msg = f"module 'backworks' has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # asked once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
