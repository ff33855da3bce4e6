"""The binding to the plugin ABI: the only package that imports cffi.

Everything above it sees plain Python values (`PluginInfo`, `Request`, `Response`); no
cffi object escapes it.

- declarations.py: the C header's declarations handed to cffi, and the constants;
- values.py: the values that cross the binding's edge;
- marshal.py: host-owned request memory in, the plugin's answer copied and released;
- native.py: ABI 1 libraries (descriptor checks) and instances (the calls);
- legacy.py: the adapter for libraries of the original design (ABI 0);
- loader.py: `open_plugin_library`, the one way to open either;
- hostlog.py: where a plugin's `host->log` calls go (structlog; imported on its own,
  so a worker process, which forwards log lines to the host, never loads structlog).
"""

from backworks.abi.declarations import (
    ABI_MAJOR,
    ABI_MINOR,
    ABI_VERSION,
    BW_CANCELLED,
    BW_FAIL,
    BW_OK,
    CONSTANTS,
    ENTRY_SYMBOL,
    FLAG_NAMES,
    FLAG_NONBLOCKING,
    FLAG_THREAD_SAFE,
    HEADER_NAME,
    LOG_DEBUG,
    LOG_ERROR,
    LOG_INFO,
    LOG_WARN,
    abi_text,
    ffi,
    include_dir,
)
from backworks.abi.loader import PluginInstance, PluginLibrary, open_plugin_library
from backworks.abi.marshal import DEFAULT_MAX_RESPONSE_BYTES, descriptor_string
from backworks.abi.native import NativeInstance, NativeLibrary, open_library
from backworks.abi.values import CancelFlag, LogSink, Pairs, PluginInfo, Request, Response

__all__ = [
    "ABI_MAJOR",
    "ABI_MINOR",
    "ABI_VERSION",
    "BW_CANCELLED",
    "BW_FAIL",
    "BW_OK",
    "CONSTANTS",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "ENTRY_SYMBOL",
    "FLAG_NAMES",
    "FLAG_NONBLOCKING",
    "FLAG_THREAD_SAFE",
    "HEADER_NAME",
    "LOG_DEBUG",
    "LOG_ERROR",
    "LOG_INFO",
    "LOG_WARN",
    "CancelFlag",
    "LogSink",
    "NativeInstance",
    "NativeLibrary",
    "Pairs",
    "PluginInfo",
    "PluginInstance",
    "PluginLibrary",
    "Request",
    "Response",
    "abi_text",
    "descriptor_string",
    "ffi",
    "include_dir",
    "open_library",
    "open_plugin_library",
]
