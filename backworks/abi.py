"""The binding to the plugin ABI: the only module that imports cffi.

The C declarations come from `sdk-c/include/backworks/plugin.h` (the lines between its
BW_CDEF markers), so the header and the binding cannot drift; a test also compares
every size and offset with what a C compiler makes of the header.

Everything above this module sees plain Python values (`PluginInfo`, `Request`,
`Response`); no cffi object escapes it. Every native call follows the same steps:
marshal the inputs into host-owned memory that stays referenced for the whole call,
call, copy the plugin's answer out, and `release` it exactly once in a `finally`.
"""

from __future__ import annotations

import os
import re
import struct
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import attrs
from cffi import FFI

from backworks.errors import (
    AbiMismatchError,
    PluginCallError,
    PluginCancelledError,
    PluginInitError,
    PluginLoadError,
)

if TYPE_CHECKING:
    from backworks.abi_legacy import LegacyInstance, LegacyLibrary

HEADER_NAME = "backworks/plugin.h"
ENTRY_SYMBOL = "backworks_plugin_entry"


def include_dir() -> Path:
    """The folder to pass as `-I` when compiling a plugin against this host's SDK."""
    packaged = Path(__file__).parent / "include"  # inside an installed wheel
    if (packaged / HEADER_NAME).is_file():
        return packaged
    return Path(__file__).resolve().parent.parent / "sdk-c" / "include"  # a checkout


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
_PLUGIN_SIZE_1_0 = ffi.sizeof("bw_plugin")
PLUGIN_NAME_RULE = "[a-z0-9][a-z0-9_-]{0,63}"
_NAME_RE = re.compile(PLUGIN_NAME_RULE)
# Strings in a descriptor are read with a bound, so a garbage pointer to memory with
# no NUL in reach cannot make us read forever.
_MAX_DESCRIPTOR_STRING = 4096


def abi_text(version: int) -> str:
    """`0x00010002` -> `"1.2"`."""
    return f"{version >> 16}.{version & 0xFFFF}"


def invalid_name_reason(name: str) -> str | None:
    """Why `name` cannot be a plugin name, or None when it can (ABI and legacy alike)."""
    if _NAME_RE.fullmatch(name):
        return None
    return f"plugin name {name!r} is invalid: expected {PLUGIN_NAME_RULE}"


# ---------------------------------------------------------------------------
# Plain values that cross this module's edge


@attrs.frozen
class PluginInfo:
    """What a library's descriptor says about its plugin."""

    path: str
    name: str
    version: str
    description: str
    abi_version: int
    flags: int
    has_health: bool = False
    has_on_request: bool = False
    has_on_response: bool = False
    legacy: bool = False

    @property
    def abi(self) -> str:
        return "0 (legacy)" if self.legacy else abi_text(self.abi_version)

    @property
    def flag_names(self) -> list[str]:
        return [name for bit, name in FLAG_NAMES.items() if self.flags & bit]

    @property
    def thread_safe(self) -> bool:
        return bool(self.flags & FLAG_THREAD_SAFE)

    @property
    def nonblocking(self) -> bool:
        return bool(self.flags & FLAG_NONBLOCKING)


Pairs = tuple[tuple[str, str], ...]


@attrs.frozen
class Request:
    """One request as a plugin sees it (`bw_request`)."""

    method: str
    path: str
    query: str = ""
    endpoint: str = ""
    params: Pairs = ()
    headers: Pairs = ()
    body: bytes = b""
    request_id: str = ""
    timeout_ms: int = 0


@attrs.frozen
class Response:
    """One response, copied out of the plugin's memory (`bw_response`)."""

    status: int
    body: bytes = b""
    content_type: str = ""
    headers: Pairs = ()


class CancelFlag:
    """The `cancelled` word of a call: the host sets it, the plugin polls it.

    Host-owned memory that must outlive the native call; whoever runs the call keeps a
    reference to it until the call returns.
    """

    __slots__ = ("_word",)

    def __init__(self) -> None:
        self._word = ffi.new("uint32_t *")

    def set(self) -> None:
        self._word[0] = 1

    @property
    def is_set(self) -> bool:
        return bool(self._word[0])


LogSink = Callable[[int, str], None]
"""Receives `(level, message)` from a plugin's `host->log`; must be thread-safe."""


# ---------------------------------------------------------------------------
# Marshalling


def _text(s: str) -> bytes:
    # surrogateescape gives back the exact bytes aiohttp decoded from the wire.
    return s.encode("utf-8", "surrogateescape")


def _address(cdata: Any) -> int:
    return int(ffi.cast("uintptr_t", cdata))


class _Packed:
    """Strings laid end to end in one host-owned buffer, as flat (address, length) spans.

    One allocation and no per-string cffi objects: marshalling is what a plugin call
    costs most, so the structs that point into the buffer are packed with `struct`
    in native layout (checked against cffi's at import) instead of field by field.
    """

    __slots__ = ("buffer", "spans")

    def __init__(self, texts: Sequence[str | bytes]) -> None:
        encoded = [t if isinstance(t, bytes) else _text(t) for t in texts]
        blob = b"".join(encoded)
        self.buffer = ffi.from_buffer(blob) if blob else None
        spans: list[int] = []
        position = _address(self.buffer) if blob else 0
        for chunk in encoded:
            size = len(chunk)
            spans += (position if size else 0, size)
            position += size
        self.spans = spans


# bw_request: struct_size, method, path, query, endpoint, params (+len), headers (+len),
# body (+len), request_id, timeout_ms, cancelled -- in the header's order.
_REQUEST = struct.Struct("@I" + "PN" * 8 + "IP")
_HEADER_SIZE = ffi.sizeof("bw_header")
_pair_structs: dict[int, struct.Struct] = {}


def _pair_struct(count: int) -> struct.Struct:
    """The `struct` layout of `bw_header[count]`."""
    packer = _pair_structs.get(count)
    if packer is None:
        packer = _pair_structs.setdefault(count, struct.Struct("@" + "PN" * (2 * count)))
    return packer


def _pack_pairs(spans: list[int], count: int) -> Any:
    """A host-owned `bw_header[count]` from 4 * count span numbers; None when empty."""
    return ffi.from_buffer(_pair_struct(count).pack(*spans)) if count else None


class _RequestFrame:
    """Host-owned memory of one `bw_request`, alive while this object is referenced.

    One buffer holds it all: the struct, then the header/param array, then every
    string; only a non-empty body is referenced where it lies (no copy).
    """

    __slots__ = ("body", "buffer", "c_request", "cancel", "raw")

    def __init__(self, req: Request, cancel: CancelFlag) -> None:
        texts: list[str | bytes] = [req.method, req.path, req.query, req.endpoint, req.request_id]
        for pair in req.params:
            texts += pair
        for pair in req.headers:
            texts += pair
        encoded = [t if isinstance(t, bytes) else _text(t) for t in texts]
        n_params, n_headers = len(req.params), len(req.headers)
        pairs_at = _REQUEST.size
        strings_at = pairs_at + (n_params + n_headers) * _HEADER_SIZE
        self.buffer = buffer = bytearray(strings_at)
        buffer += b"".join(encoded)
        self.raw = ffi.from_buffer(buffer)
        base = _address(self.raw)
        spans: list[int] = []
        position = base + strings_at
        for chunk in encoded:
            size = len(chunk)
            spans += (position if size else 0, size)
            position += size
        if n_params or n_headers:
            _pair_struct(n_params + n_headers).pack_into(buffer, pairs_at, *spans[10:])
        body = req.body
        self.body = ffi.from_buffer(body) if body else None
        self.cancel = cancel
        _REQUEST.pack_into(
            buffer,
            0,
            _REQUEST.size,
            *spans[:8],  # method, path, query, endpoint
            base + pairs_at if n_params else 0,
            n_params,
            base + pairs_at + n_params * _HEADER_SIZE if n_headers else 0,
            n_headers,
            _address(self.body) if body else 0,
            len(body),
            *spans[8:10],  # request_id
            min(max(req.timeout_ms, 0), 0xFFFFFFFF),
            _address(cancel._word),
        )
        self.c_request = ffi.cast("bw_request *", self.raw)


def _check_request_layout() -> None:
    """The `struct` format above must lay bw_request out exactly as the C compiler does."""
    if _REQUEST.size != ffi.sizeof("bw_request") or struct.calcsize("@PNPN") != _HEADER_SIZE:
        msg = "bw_request/bw_header layout differs from the struct format used to pack them"
        raise RuntimeError(msg)
    raw = ffi.from_buffer(_REQUEST.pack(*range(1, 20)))
    probe = ffi.cast("bw_request *", raw)
    fields = (
        probe.struct_size,
        _address(probe.method.ptr), probe.method.len,
        _address(probe.path.ptr), probe.path.len,
        _address(probe.query.ptr), probe.query.len,
        _address(probe.endpoint.ptr), probe.endpoint.len,
        _address(probe.params), probe.params_len,
        _address(probe.headers), probe.headers_len,
        _address(probe.body), probe.body_len,
        _address(probe.request_id.ptr), probe.request_id.len,
        probe.timeout_ms,
        _address(probe.cancelled),
    )  # fmt: skip
    if fields != tuple(range(1, 20)):
        msg = f"bw_request fields land at other offsets than packed: {fields}"
        raise RuntimeError(msg)


_check_request_layout()


class _ResponseFrame:
    """A host-owned `bw_response` handed to a plugin to fill, plus anything it needs."""

    __slots__ = ("c_response", "keep")

    def __init__(self, upstream: Response | None = None) -> None:
        self.c_response = ffi.new("bw_response *")
        self.c_response.struct_size = ffi.sizeof("bw_response")
        self.keep: tuple[Any, ...] = ()
        if upstream is not None:
            self._fill(upstream)

    def _fill(self, resp: Response) -> None:
        texts: list[str | bytes] = [resp.content_type]
        for pair in resp.headers:
            texts += pair
        strings = _Packed(texts)
        array = _pack_pairs(strings.spans[2:], len(resp.headers))
        body = ffi.from_buffer(resp.body) if resp.body else None
        c = self.c_response
        c.status = resp.status
        c.content_type.ptr = ffi.cast("const char *", strings.spans[0])
        c.content_type.len = strings.spans[1]
        if array is not None:
            c.headers = ffi.cast("const bw_header *", array)
            c.headers_len = len(resp.headers)
        if body is not None:
            c.body, c.body_len = body, len(resp.body)
        self.keep = (strings, array, body)


def _check_length(length: int, item_size: int, what: str) -> None:
    # A length no object can have: typically a C `-1` stored into a size_t. Reading it
    # would raise OverflowError/MemoryError or walk off into unmapped memory.
    if length > sys.maxsize // item_size:
        msg = f"{what} has an impossible length {length}"
        raise ValueError(msg)


def _bytes(ptr: Any, length: int, what: str) -> bytes:
    if length == 0:
        return b""
    if ptr == ffi.NULL:
        msg = f"{what} is NULL but its length is {length}"
        raise ValueError(msg)
    _check_length(length, 1, what)
    return ffi.unpack(ffi.cast("const char *", ptr), length)  # type: ignore[no-any-return]


def _copy_str(s: Any, what: str) -> str:
    return _bytes(s.ptr, s.len, what).decode("utf-8", "replace")


def _copy_response(c: Any) -> Response:
    """Copies a plugin-filled `bw_response` into Python memory (before `release`)."""
    headers = []
    if c.headers_len:
        if c.headers == ffi.NULL:
            msg = f"response headers are NULL but headers_len is {c.headers_len}"
            raise ValueError(msg)
        _check_length(c.headers_len, ffi.sizeof("bw_header"), "response headers")
        for i in range(c.headers_len):
            h = c.headers[i]
            headers.append((_copy_str(h.name, "header name"), _copy_str(h.value, "header value")))
    return Response(
        status=int(c.status),
        body=_bytes(c.body, c.body_len, "response body"),
        content_type=_copy_str(c.content_type, "content_type"),
        headers=tuple(headers),
    )


def _release(c: Any) -> None:
    if c.release != ffi.NULL:
        release, data = c.release, c.release_data
        # Cleared first: whatever happens next, this response is never released twice.
        c.release = ffi.NULL
        release(data)


def _take_response(c: Any, plugin: str) -> Response:
    """Copy out, then release exactly once, even when the copy fails."""
    try:
        return _copy_response(c)
    except ValueError as e:
        raise PluginCallError(plugin, f"returned a malformed response: {e}") from e
    finally:
        _release(c)


def _failure_message(c: Any) -> str:
    """The message a plugin put in a response body next to BW_FAIL, released after."""
    try:
        return _bytes(c.body, c.body_len, "error body").decode("utf-8", "replace").strip()
    except ValueError:
        return ""
    finally:
        _release(c)


# ---------------------------------------------------------------------------
# Host services


def _host_log(ctx: Any, level: int, message: Any, length: int) -> None:
    try:
        sink: LogSink = ffi.from_handle(ctx)
        text = "" if message == ffi.NULL else ffi.unpack(message, length).decode("utf-8", "replace")
        sink(int(level), text)
    except Exception:  # noqa: S110 -- an exception must never unwind into plugin code
        pass


# One C entry point for every plugin's log calls; `ctx` says whose sink it is.
_HOST_LOG: Any = ffi.callback("void(void *, int32_t, const char *, size_t)")(_host_log)


class _HostServices:
    """The `bw_host` given to one plugin instance; alive until its shutdown returned."""

    __slots__ = ("c_host", "handle")

    def __init__(self, sink: LogSink) -> None:
        self.handle = ffi.new_handle(sink)
        self.c_host = ffi.new("bw_host *")
        self.c_host.abi_version = ABI_VERSION
        self.c_host.struct_size = ffi.sizeof("bw_host")
        self.c_host.ctx = self.handle
        self.c_host.log = _HOST_LOG


# ---------------------------------------------------------------------------
# Libraries and instances


def descriptor_string(ptr: Any, what: str, path: str, *, required: bool) -> str:
    """A NUL-terminated UTF-8 string a library describes itself with (`what` names it)."""
    if ptr == ffi.NULL:
        if required:
            raise PluginLoadError(path, f"{what} is NULL")
        return ""
    raw = ffi.string(ptr, _MAX_DESCRIPTOR_STRING)
    try:
        return raw.decode("utf-8")  # type: ignore[no-any-return]
    except UnicodeDecodeError:
        raise PluginLoadError(path, f"{what} is not UTF-8") from None


def _read_descriptor(desc: Any, path: str) -> PluginInfo:
    """Validates a v1 descriptor and returns what it says, or raises naming the fault."""
    host = abi_text(ABI_VERSION)
    if desc == ffi.NULL:
        raise AbiMismatchError(path, f"plugin declined host ABI {host}")
    version = int(desc.abi_version)
    if version >> 16 != ABI_MAJOR:
        msg = (
            f"built against plugin ABI {abi_text(version)}, but this host speaks ABI "
            f"{host}; rebuild the plugin against Backworks SDK {ABI_MAJOR}.x"
        )
        raise AbiMismatchError(path, msg)
    if desc.struct_size < _PLUGIN_SIZE_1_0:
        msg = (
            f"descriptor struct_size is {desc.struct_size} bytes, smaller than ABI "
            f"{ABI_MAJOR}.0's {_PLUGIN_SIZE_1_0}; rebuild the plugin against the SDK header"
        )
        raise AbiMismatchError(path, msg)
    for field in ("init", "handle"):
        if getattr(desc, field) == ffi.NULL:
            raise PluginLoadError(path, f"descriptor has no {field!r} function (it is required)")
    name = descriptor_string(desc.name, "descriptor field 'name'", path, required=True)
    if (why := invalid_name_reason(name)) is not None:
        raise PluginLoadError(path, why)
    return PluginInfo(
        path=path,
        name=name,
        version=descriptor_string(desc.version, "descriptor field 'version'", path, required=True),
        description=descriptor_string(
            desc.description, "descriptor field 'description'", path, required=False
        ),
        abi_version=version,
        flags=int(desc.flags),
        has_health=desc.health != ffi.NULL,
        has_on_request=desc.on_request != ffi.NULL,
        has_on_response=desc.on_response != ffi.NULL,
    )


class NativeLibrary:
    """A loaded plugin library with a validated descriptor.

    Native code is never unloaded: a library's thread-local destructors or runtime may
    still run after any "last" call, so the handle lives as long as the process.
    """

    def __init__(self, path: str, lib: Any, desc: Any, info: PluginInfo) -> None:
        self.path = path
        self.info = info
        self._lib = lib
        self._desc = desc

    def instantiate(self, config_json: bytes, log: LogSink) -> NativeInstance:
        """Runs the plugin's `init`; raises `PluginInitError` with the plugin's own reason."""
        host = _HostServices(log)
        config = ffi.new("char[]", config_json)  # NUL-terminated for convenience
        state = ffi.new("void **")
        error = ffi.new("bw_response *")
        error.struct_size = ffi.sizeof("bw_response")
        rc = self._desc.init(host.c_host, config, len(config_json), state, error)
        if rc != BW_OK:
            reason = _failure_message(error) or f"init returned {rc} with no message"
            raise PluginInitError(self.info.name, reason)
        _release(error)
        return NativeInstance(self, host, state[0])


def _dlopen(path: str | Path) -> tuple[str, Any]:
    """Loads exactly the file `path` names; raises `PluginLoadError` when it cannot."""
    path = str(path)
    # dlopen() (and cffi's find_library fallback) would search the system's library
    # path for a name without a slash ("libx.so", "m"): load exactly the file named.
    file = os.path.abspath(path)
    if not os.path.isfile(file):
        raise PluginLoadError(path, "cannot be loaded: no such file")
    try:
        # RTLD_NOW: an unresolved symbol fails here, not in the middle of a request.
        return path, ffi.dlopen(file, ffi.RTLD_NOW | ffi.RTLD_LOCAL)
    except OSError as e:
        raise PluginLoadError(path, f"cannot be loaded: {e}") from e


def _entry_point(lib: Any) -> Any:
    """The library's `backworks_plugin_entry`, or None when it does not export one."""
    try:
        return lib.backworks_plugin_entry
    except AttributeError:
        return None


def open_library(path: str | Path) -> NativeLibrary:
    """Loads `path` and validates its descriptor; raises `PluginLoadError` naming the fault.

    ABI 1 only; the host opens plugins with `open_plugin_library`, which also takes
    libraries of the legacy ABI. Loading runs the library's constructors in this
    process: untrusted files are examined by discovery in a child process first.
    """
    path, lib = _dlopen(path)
    entry = _entry_point(lib)
    if entry is None:
        raise PluginLoadError(path, f"does not export {ENTRY_SYMBOL}()")
    desc = entry(ABI_VERSION)
    return NativeLibrary(path, lib, desc, _read_descriptor(desc, path))


PluginLibrary: TypeAlias = "NativeLibrary | LegacyLibrary"
PluginInstance: TypeAlias = "NativeInstance | LegacyInstance"


def open_plugin_library(path: str | Path) -> PluginLibrary:
    """Loads any plugin library: ABI 1 (`backworks_plugin_entry`) first, else the legacy
    ABI 0 of the original design (`plugin_info`, see abi_legacy). The one way the host
    and discovery open plugins; raises `PluginLoadError` naming the fault.

    Both kinds answer `info` and `instantiate(config_json, log)`, and their instances
    the calls of `NativeInstance`.
    """
    # The adapter builds on this module (ffi, the value classes): imported here, not
    # at the top, so the two modules do not import each other while loading.
    from backworks import abi_legacy

    path, lib = _dlopen(path)
    entry = _entry_point(lib)
    if entry is not None:
        desc = entry(ABI_VERSION)
        return NativeLibrary(path, lib, desc, _read_descriptor(desc, path))
    legacy = abi_legacy.open_legacy_library(path, lib)
    if legacy is None:
        msg = f"does not export {ENTRY_SYMBOL}() (nor the legacy {abi_legacy.INFO_SYMBOL}())"
        raise PluginLoadError(path, msg)
    return legacy


class NativeInstance:
    """One initialised plugin state: the calls of the ABI, as plain Python.

    Thread-safety is the caller's job (the executor enforces ABI rules 4 and 5).
    """

    def __init__(self, library: NativeLibrary, host: _HostServices, state: Any) -> None:
        self.library = library
        self.info = library.info
        self._desc = library._desc
        self._host = host
        self._state = state
        self._closed = False
        self._lock = threading.Lock()

    def _ensure_open(self, call: str) -> None:
        # After shutdown the state is freed: a call would be a use-after-free in the plugin.
        if self._closed:
            raise PluginCallError(self.info.name, f"{call} called after shutdown")

    def _check(self, rc: int, c_response: Any, call: str) -> None:
        if rc == BW_OK:
            return
        message = _failure_message(c_response)
        if rc == BW_CANCELLED:
            raise PluginCancelledError(self.info.name, f"{call} cancelled")
        detail = f"{call} returned {rc}" + (f": {message}" if message else "")
        raise PluginCallError(self.info.name, detail)

    def handle(self, req: Request, cancel: CancelFlag) -> Response:
        self._ensure_open("handle")
        frame = _RequestFrame(req, cancel)
        out = _ResponseFrame()
        rc = self._desc.handle(self._state, frame.c_request, out.c_response)
        self._check(rc, out.c_response, "handle")
        return _take_response(out.c_response, self.info.name)

    def on_request(self, req: Request, cancel: CancelFlag) -> Response | None:
        """Runs the request hook; None lets the request go on (also when there is none)."""
        self._ensure_open("on_request")
        if self._desc.on_request == ffi.NULL:
            return None
        frame = _RequestFrame(req, cancel)
        out = _ResponseFrame()
        rc = self._desc.on_request(self._state, frame.c_request, out.c_response)
        self._check(rc, out.c_response, "on_request")
        resp = _take_response(out.c_response, self.info.name)
        return resp if resp.status else None

    def on_response(self, req: Request, upstream: Response, cancel: CancelFlag) -> Response | None:
        """Runs the response hook; None keeps `upstream` (also when there is none)."""
        self._ensure_open("on_response")
        if self._desc.on_response == ffi.NULL:
            return None
        frame = _RequestFrame(req, cancel)
        up = _ResponseFrame(upstream)
        out = _ResponseFrame()
        rc = self._desc.on_response(self._state, frame.c_request, up.c_response, out.c_response)
        self._check(rc, out.c_response, "on_response")
        resp = _take_response(out.c_response, self.info.name)
        return resp if resp.status else None

    def health(self) -> Response | None:
        """The plugin's own health report, or None when it has no `health`."""
        self._ensure_open("health")
        if self._desc.health == ffi.NULL:
            return None
        out = _ResponseFrame()
        rc = self._desc.health(self._state, out.c_response)
        self._check(rc, out.c_response, "health")
        return _take_response(out.c_response, self.info.name)

    def shutdown(self) -> None:
        """Calls the plugin's `shutdown` once; later calls do nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._desc.shutdown != ffi.NULL:
            self._desc.shutdown(self._state)
