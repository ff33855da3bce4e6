"""The one way the host and discovery open a plugin library, whatever its ABI."""

from __future__ import annotations

from pathlib import Path
from typing import TypeAlias

from backworks.abi.declarations import ABI_VERSION, ENTRY_SYMBOL
from backworks.abi.legacy import INFO_SYMBOL, LegacyInstance, LegacyLibrary, open_legacy_library
from backworks.abi.native import NativeInstance, NativeLibrary, dlopen, entry_point, read_descriptor
from backworks.errors import PluginLoadError

PluginLibrary: TypeAlias = NativeLibrary | LegacyLibrary
PluginInstance: TypeAlias = NativeInstance | LegacyInstance


def open_plugin_library(path: str | Path) -> PluginLibrary:
    """Loads any plugin library: ABI 1 (`backworks_plugin_entry`) first, else the legacy
    ABI 0 of the original design (`plugin_info`, see legacy.py). The one way the host
    and discovery open plugins; raises `PluginLoadError` naming the fault.

    Both kinds answer `info` and `instantiate(config_json, log)`, and their instances
    the calls of `NativeInstance`.
    """
    path, lib = dlopen(path)
    entry = entry_point(lib)
    if entry is not None:
        desc = entry(ABI_VERSION)
        return NativeLibrary(path, lib, desc, read_descriptor(desc, path))
    legacy = open_legacy_library(path, lib)
    if legacy is None:
        msg = f"does not export {ENTRY_SYMBOL}() (nor the legacy {INFO_SYMBOL}())"
        raise PluginLoadError(path, msg)
    return legacy
