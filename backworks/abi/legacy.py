"""The adapter for plugins of the original Backworks design: the legacy ABI, version 0.

Part of the binding layer (with `abi`, whose `ffi` it extends): the rest of the host
sees a `LegacyLibrary` and `LegacyInstance` that answer the same calls as
`NativeLibrary` and `NativeInstance`, with plain Python values only.

Such a library exports (design/ABI.md, section 5):

    const struct backworks_legacy_info *plugin_info(void);        required
    int32_t plugin_initialize(const char *config_json);            optional, 0 = ok
    const char *plugin_process_endpoint(const char *endpoint,
                                        const char *method,
                                        const char *data);         optional, NULL = not handled
    int32_t plugin_shutdown(void);                                 optional

The first design only said that `plugin_info` returns `{name, version, description}`
C strings. We read it as a pointer to a struct of three `const char *` in that
order, which is what that design's Rust loader (`#[repr(C)]` with three
`*const c_char` fields) and a C struct of three `const char *` both produce.

The rules the adapter enforces, because this ABI cannot express them:

- `plugin_process_endpoint` answers with a string the host copies and never frees
  (there is no way to give it back). It is copied before the next call can run, so a
  plugin may reuse one static buffer. NULL answers 404 with a JSON error; a string
  answers 200 with it as the body, as JSON.
- The plugin is not thread-safe, and it keeps its state in globals: every call into
  one library runs under that library's lock, whichever instance it comes through.
- It cannot see cancellation; a call cancelled before it started is not made.
- `endpoint` is the configured route pattern that matched (`bw_request.endpoint`, or
  the path when there is none) and `data` the request body as UTF-8 text.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from backworks.abi.declarations import LOG_WARN, ffi
from backworks.abi.marshal import DEFAULT_MAX_RESPONSE_BYTES, descriptor_string
from backworks.abi.values import CancelFlag, LogSink, PluginInfo, Request, Response
from backworks.errors import PluginCallError, PluginCancelledError, PluginInitError, PluginLoadError
from backworks.names import invalid_name_reason

__all__ = ["INFO_SYMBOL", "LegacyInstance", "LegacyLibrary", "open_legacy_library"]

INFO_SYMBOL = "plugin_info"

# A struct tag, not a typedef: plugin.h's typedefs are the ABI 1 layout that the
# layout tests compare with the C header and the Rust mirror; this one is not in it.
ffi.cdef(
    """
    struct backworks_legacy_info {
        const char *name;
        const char *version;
        const char *description;
    };
    const struct backworks_legacy_info *plugin_info(void);
    int32_t plugin_initialize(const char *config_json);
    const char *plugin_process_endpoint(const char *endpoint, const char *method,
                                        const char *data);
    int32_t plugin_shutdown(void);
    """
)


def _symbol(lib: Any, name: str) -> Any:
    try:
        return getattr(lib, name)
    except AttributeError:
        return None


def _read_info(lib: Any, path: str) -> PluginInfo | None:
    """What `plugin_info()` says, validated; None when the library does not export it."""
    plugin_info = _symbol(lib, INFO_SYMBOL)
    if plugin_info is None:
        return None
    info = plugin_info()
    if info == ffi.NULL:
        raise PluginLoadError(path, f"{INFO_SYMBOL}() returned NULL")
    name = descriptor_string(info.name, f"{INFO_SYMBOL}() field 'name'", path, required=True)
    if (why := invalid_name_reason(name)) is not None:
        raise PluginLoadError(path, why)
    return PluginInfo(
        path=path,
        name=name,
        version=descriptor_string(
            info.version, f"{INFO_SYMBOL}() field 'version'", path, required=True
        ),
        description=descriptor_string(
            info.description, f"{INFO_SYMBOL}() field 'description'", path, required=False
        ),
        abi_version=0,
        flags=0,  # never thread-safe, never non-blocking
        legacy=True,
    )


def open_legacy_library(path: str, lib: Any) -> LegacyLibrary | None:
    """Wraps the loaded `lib` if it exports `plugin_info`; None when it does not.

    Raises `PluginLoadError` when `plugin_info` says something unusable. Called by
    `abi.open_plugin_library`, which has loaded the file.
    """
    info = _read_info(lib, path)
    return None if info is None else LegacyLibrary(path, lib, info)


def _c_text(text: str) -> Any:
    """A NUL-terminated copy of `text` as valid UTF-8 (the first design's plugins take
    `&str`s; an invalid byte would make one panic across the boundary)."""
    return ffi.new("char[]", text.encode("utf-8", "replace"))


class LegacyLibrary:
    """A loaded library of the legacy ABI. Never unloaded, like `NativeLibrary`."""

    def __init__(self, path: str, lib: Any, info: PluginInfo) -> None:
        self.path = path
        self.info = info
        self._lib = lib
        self._initialize = _symbol(lib, "plugin_initialize")
        self._process = _symbol(lib, "plugin_process_endpoint")
        self._shutdown = _symbol(lib, "plugin_shutdown")
        # The plugin's state is global to the library: one lock for all its calls.
        self.lock = threading.Lock()

    def instantiate(
        self,
        config_json: bytes,
        log: LogSink,
        *,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> LegacyInstance:
        """Runs `plugin_initialize` (when exported); raises `PluginInitError` when it fails.

        `log` receives the adapter's own warnings: this ABI gives plugins no logger.
        `max_response_bytes`: the longest answer taken (a longer one fails the call).
        """
        if self._initialize is not None:
            config = ffi.new("char[]", config_json or b"{}")
            with self.lock:
                rc = self._initialize(config)
            if rc != 0:
                raise PluginInitError(self.info.name, f"plugin_initialize returned {rc}")
        return LegacyInstance(self, log, max_response_bytes)

    def process(self, endpoint: str, method: str, data: str, limit: int) -> bytes | None:
        """Calls `plugin_process_endpoint`; its answer copied, or None for "not handled".

        The answer is read with a bound, so a pointer to memory with no NUL in reach
        cannot make the host read forever: one longer than `limit` is refused, not cut.
        """
        if self._process is None:
            return None
        args = (_c_text(endpoint), _c_text(method), _c_text(data))
        with self.lock:
            answer = self._process(*args)
            # Copied before the lock is let go: the next call may overwrite the buffer.
            if answer == ffi.NULL:
                return None
            copied: bytes = ffi.string(answer, limit + 1)
        if len(copied) > limit:
            msg = (
                f"plugin_process_endpoint returned more than {limit} bytes, its limit "
                "(max_response_mb); the answer was refused"
            )
            raise PluginCallError(self.info.name, msg)
        return copied

    def shutdown(self) -> int:
        """Calls `plugin_shutdown` (when exported); returns its code (0 = ok)."""
        if self._shutdown is None:
            return 0
        with self.lock:
            return int(self._shutdown())


class LegacyInstance:
    """A legacy plugin as the host calls it: the calls of `abi.NativeInstance`.

    `handle` maps the request onto `plugin_process_endpoint`; the hooks and `health`
    do not exist in this ABI and answer None.
    """

    def __init__(self, library: LegacyLibrary, log: LogSink, max_response_bytes: int) -> None:
        self.library = library
        self.max_response_bytes = max_response_bytes
        self.info = library.info
        self._log = log
        self._closed = False
        self._lock = threading.Lock()

    def _ensure_open(self, call: str) -> None:
        if self._closed:
            raise PluginCallError(self.info.name, f"{call} called after shutdown")

    def handle(self, req: Request, cancel: CancelFlag) -> Response:
        self._ensure_open("handle")
        if cancel.is_set:
            raise PluginCancelledError(self.info.name, "handle cancelled before it started")
        endpoint = req.endpoint or req.path
        data = req.body.decode("utf-8", "replace")
        answer = self.library.process(endpoint, req.method, data, self.max_response_bytes)
        if answer is None:
            message = f"{self.info.name} does not handle {req.method} {endpoint}"
            return Response(status=404, body=json.dumps({"error": message}).encode())
        return Response(status=200, body=answer)  # no content type: application/json

    def on_request(self, req: Request, cancel: CancelFlag) -> Response | None:
        self._ensure_open("on_request")
        return None

    def on_response(self, req: Request, upstream: Response, cancel: CancelFlag) -> Response | None:
        self._ensure_open("on_response")
        return None

    def health(self) -> Response | None:
        self._ensure_open("health")
        return None

    def shutdown(self) -> None:
        """Calls `plugin_shutdown` once; later calls do nothing. A non-zero code is
        logged: the host is stopping the plugin either way."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        rc = self.library.shutdown()
        if rc != 0:
            self._log(LOG_WARN, f"plugin_shutdown returned {rc}")
