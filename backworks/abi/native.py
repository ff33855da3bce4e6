"""ABI 1 libraries and their instances: the descriptor's checks and the calls of the ABI."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from backworks.abi.declarations import (
    ABI_MAJOR,
    ABI_VERSION,
    BW_CANCELLED,
    BW_OK,
    ENTRY_SYMBOL,
    PLUGIN_SIZE_1_0,
    abi_text,
    ffi,
    include_dir,
)
from backworks.abi.marshal import (
    DEFAULT_MAX_RESPONSE_BYTES,
    HOOK,
    REPORT,
    ResponseFrame,
    descriptor_string,
    failure_message,
    frame_request,
    fresh_response,
    release,
    take_answer,
    take_response,
)
from backworks.abi.values import CancelFlag, LogSink, PluginInfo, Request, Response
from backworks.errors import (
    AbiMismatchError,
    PluginCallError,
    PluginCancelledError,
    PluginInitError,
    PluginLoadError,
)
from backworks.names import invalid_name_reason


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


def rebuild_hint() -> str:
    """What to do about a plugin of another ABI major: where this host's headers are."""
    return (
        f"rebuild it against this host's SDK: C with `-I {include_dir()}`, Rust with the "
        "backworks-plugin-sdk of this Backworks release"
    )


def read_descriptor(desc: Any, path: str) -> PluginInfo:
    """Validates a v1 descriptor and returns what it says, or raises naming the fault."""
    host = abi_text(ABI_VERSION)
    if desc == ffi.NULL:
        # The SDKs decline a host of another major: the plugin was built for it.
        msg = (
            f"plugin declined host ABI {host}: it was built against another major "
            f"version of the plugin ABI; {rebuild_hint()}"
        )
        raise AbiMismatchError(path, msg)
    version = int(desc.abi_version)
    if version >> 16 != ABI_MAJOR:
        msg = (
            f"built against plugin ABI {abi_text(version)}, but this host speaks ABI "
            f"{host}; rebuild the plugin against Backworks SDK {ABI_MAJOR}.x "
            f"({rebuild_hint()})"
        )
        raise AbiMismatchError(path, msg)
    if desc.struct_size < PLUGIN_SIZE_1_0:
        msg = (
            f"descriptor struct_size is {desc.struct_size} bytes, smaller than ABI "
            f"{ABI_MAJOR}.0's {PLUGIN_SIZE_1_0}; rebuild the plugin against the SDK header"
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

    def instantiate(
        self,
        config_json: bytes,
        log: LogSink,
        *,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> NativeInstance:
        """Runs the plugin's `init`; raises `PluginInitError` with the plugin's own reason.

        `max_response_bytes`: the largest answer body the instance's calls copy out; a
        larger one fails the call (PluginCallError) before it is copied.
        """
        host = _HostServices(log)
        config = ffi.new("char[]", config_json)  # NUL-terminated for convenience
        state = ffi.new("void **")
        error = ffi.new("bw_response *")
        error.struct_size = ffi.sizeof("bw_response")
        rc = self._desc.init(host.c_host, config, len(config_json), state, error)
        if rc != BW_OK:
            reason = failure_message(error) or f"init returned {rc} with no message"
            raise PluginInitError(self.info.name, reason)
        release(error)
        return NativeInstance(self, host, state[0], max_response_bytes)


def dlopen(path: str | Path) -> tuple[str, Any]:
    """Loads exactly the file `path` names; raises `PluginLoadError` when it cannot."""
    path = str(path)
    # dlopen() (and cffi's find_library fallback) would search the system's library
    # path for a name without a slash ("libx.so", "m"): load exactly the file named.
    file = Path(path).absolute()
    if not file.is_file():
        raise PluginLoadError(path, "cannot be loaded: no such file")
    try:
        # RTLD_NOW: an unresolved symbol fails here, not in the middle of a request.
        return path, ffi.dlopen(str(file), ffi.RTLD_NOW | ffi.RTLD_LOCAL)
    except OSError as e:
        raise PluginLoadError(path, f"cannot be loaded: {e}") from e


def entry_point(lib: Any) -> Any:
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
    path, lib = dlopen(path)
    entry = entry_point(lib)
    if entry is None:
        raise PluginLoadError(path, f"does not export {ENTRY_SYMBOL}()")
    desc = entry(ABI_VERSION)
    return NativeLibrary(path, lib, desc, read_descriptor(desc, path))


class NativeInstance:
    """One initialised plugin state: the calls of the ABI, as plain Python.

    Thread-safety is the caller's job (the executor enforces ABI rules 4 and 5).
    """

    def __init__(
        self, library: NativeLibrary, host: _HostServices, state: Any, max_response_bytes: int
    ) -> None:
        self.library = library
        self.max_response_bytes = max_response_bytes
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
        message = failure_message(c_response)
        if rc == BW_CANCELLED:
            raise PluginCancelledError(self.info.name, f"{call} cancelled")
        detail = f"{call} returned {rc}" + (f": {message}" if message else "")
        raise PluginCallError(self.info.name, detail)

    def handle(self, req: Request, cancel: CancelFlag) -> Response:
        """Runs the plugin's `handle` on `req`; raises PluginCallError or its kin."""
        if self._closed:
            self._ensure_open("handle")
        c_request, memory = frame_request(req, cancel)
        out = fresh_response(memory)
        rc = self._desc.handle(self._state, c_request, out)
        if rc != BW_OK:
            self._check(rc, out, "handle")
        return take_answer(memory, self.info.name, self.max_response_bytes)

    def on_request(self, req: Request, cancel: CancelFlag) -> Response | None:
        """Runs the request hook; None lets the request go on (also when there is none)."""
        self._ensure_open("on_request")
        if self._desc.on_request == ffi.NULL:
            return None
        c_request, memory = frame_request(req, cancel)
        out = fresh_response(memory)
        rc = self._desc.on_request(self._state, c_request, out)
        self._check(rc, out, "on_request")
        resp = take_response(out, self.info.name, HOOK, self.max_response_bytes)
        return resp if resp.status else None

    def on_response(self, req: Request, upstream: Response, cancel: CancelFlag) -> Response | None:
        """Runs the response hook; None keeps `upstream` (also when there is none)."""
        self._ensure_open("on_response")
        if self._desc.on_response == ffi.NULL:
            return None
        c_request, memory = frame_request(req, cancel)
        up = ResponseFrame(upstream)
        out = fresh_response(memory)
        rc = self._desc.on_response(self._state, c_request, up.c_response, out)
        self._check(rc, out, "on_response")
        resp = take_response(out, self.info.name, HOOK, self.max_response_bytes)
        return resp if resp.status else None

    def health(self) -> Response | None:
        """The plugin's own health report, or None when it has no `health`."""
        self._ensure_open("health")
        if self._desc.health == ffi.NULL:
            return None
        out = ResponseFrame()
        rc = self._desc.health(self._state, out.c_response)
        self._check(rc, out.c_response, "health")
        return take_response(out.c_response, self.info.name, REPORT, self.max_response_bytes)

    def shutdown(self) -> None:
        """Calls the plugin's `shutdown` once; later calls do nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._desc.shutdown != ffi.NULL:
            self._desc.shutdown(self._state)
