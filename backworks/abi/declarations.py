"""The ABI's declarations: read from the C header, declared to cffi, and its constants.

The C declarations come from `sdk-c/include/backworks/plugin.h` (the lines between its
BW_CDEF markers), so the header and the binding cannot drift; a test also compares
every size and offset with what a C compiler makes of the header.
"""

from __future__ import annotations

import re
from pathlib import Path

from cffi import FFI

HEADER_NAME = "backworks/plugin.h"
ENTRY_SYMBOL = "backworks_plugin_entry"


def include_dir() -> Path:
    """The folder to pass as `-I` when compiling a plugin against this host's SDK."""
    package = Path(__file__).resolve().parent.parent
    packaged = package / "include"  # inside an installed wheel
    if (packaged / HEADER_NAME).is_file():
        return packaged
    return package.parent / "sdk-c" / "include"  # a checkout


def _cdef_source() -> str:
    """The header's declarations for cffi: the text between its marker lines."""
    text = (include_dir() / HEADER_NAME).read_text(encoding="utf-8")
    try:
        region = text.split("/* BW_CDEF_BEGIN */", 1)[1].split("/* BW_CDEF_END */", 1)[0]
    except IndexError:
        msg = f"{include_dir() / HEADER_NAME} has lost its BW_CDEF_BEGIN/END marker lines"
        raise RuntimeError(msg) from None
    return re.sub(r"/\*.*?\*/", "", region, flags=re.S)


_CDEF = _cdef_source()
ffi = FFI()
ffi.cdef(_CDEF)

# The header's `#define NAME <integer>` lines, read once: the constants have no other copy.
CONSTANTS: dict[str, int] = {
    m[1]: int(m[2], 0)
    for m in re.finditer(r"^#define\s+(BW_\w+)\s+(0x[0-9a-fA-F]+|\d+)\s*$", _CDEF, re.M)
}
ABI_MAJOR = CONSTANTS["BW_ABI_VERSION_MAJOR"]
ABI_MINOR = CONSTANTS["BW_ABI_VERSION_MINOR"]
ABI_VERSION = (ABI_MAJOR << 16) | ABI_MINOR

BW_OK = CONSTANTS["BW_OK"]
BW_FAIL = CONSTANTS["BW_FAIL"]
BW_CANCELLED = CONSTANTS["BW_CANCELLED"]
FLAG_THREAD_SAFE = CONSTANTS["BW_FLAG_THREAD_SAFE"]
FLAG_NONBLOCKING = CONSTANTS["BW_FLAG_NONBLOCKING"]
LOG_DEBUG = CONSTANTS["BW_LOG_DEBUG"]
LOG_INFO = CONSTANTS["BW_LOG_INFO"]
LOG_WARN = CONSTANTS["BW_LOG_WARN"]
LOG_ERROR = CONSTANTS["BW_LOG_ERROR"]

FLAG_NAMES: dict[int, str] = {FLAG_THREAD_SAFE: "thread_safe", FLAG_NONBLOCKING: "nonblocking"}

# A descriptor must be at least as large as version 1.0's; later minors only append.
PLUGIN_SIZE_1_0 = ffi.sizeof("bw_plugin")
# Strings in a descriptor are read with a bound, so a garbage pointer to memory with
# no NUL in reach cannot make us read forever.
MAX_DESCRIPTOR_STRING = 4096


def abi_text(version: int) -> str:
    """`0x00010002` -> `"1.2"`."""
    return f"{version >> 16}.{version & 0xFFFF}"
