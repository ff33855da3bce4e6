"""Marshalling: host-owned request memory in, the plugin's answer copied out.

Every native call follows the same steps: marshal the inputs into host-owned memory
that stays referenced for the whole call, call, copy the plugin's answer out, and
`release` it exactly once in a `finally`.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Sequence
from typing import Any

from backworks.abi.declarations import MAX_DESCRIPTOR_STRING, ffi
from backworks.abi.values import CancelFlag, Request, Response
from backworks.errors import PluginCallError, PluginLoadError

# The default of `max_response_mb`: what one answer may hold, copied out of the plugin.
DEFAULT_MAX_RESPONSE_BYTES = 64 << 20
# A BW_FAIL message goes to a log line; a plugin may put anything in its body.
MAX_FAILURE_MESSAGE = 64 << 10


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


class RequestFrame:
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


class ResponseFrame:
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


def _copy_response(c: Any, limit: int) -> Response:
    """Copies a plugin-filled `bw_response` into Python memory (before `release`)."""
    # Before anything is copied: an answer over the limit must cost no memory here.
    _check_length(c.body_len, 1, "response body")
    if c.body_len > limit:
        msg = (
            f"answered with a body of {c.body_len} bytes, more than its limit of {limit} "
            "bytes (max_response_mb); the answer was refused"
        )
        raise ResponseTooLarge(msg)
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


def release(c: Any) -> None:
    """Calls the response's `release` once; clears it first, so a second call does nothing."""
    if c.release != ffi.NULL:
        release, data = c.release, c.release_data
        # Cleared first: whatever happens next, this response is never released twice.
        c.release = ffi.NULL
        release(data)


class ResponseTooLarge(ValueError):
    """A plugin's answer is larger than its plugin may answer (max_response_mb)."""


def take_response(c: Any, plugin: str, limit: int = DEFAULT_MAX_RESPONSE_BYTES) -> Response:
    """Copy out, then release exactly once, even when the copy fails.

    An answer whose body is over `limit` bytes is refused before any of it is copied.
    """
    try:
        return _copy_response(c, limit)
    except ResponseTooLarge as e:
        raise PluginCallError(plugin, str(e)) from None
    except ValueError as e:
        raise PluginCallError(plugin, f"returned a malformed response: {e}") from e
    finally:
        release(c)


def failure_message(c: Any) -> str:
    """The message a plugin put in a response body next to BW_FAIL, released after.

    At most MAX_FAILURE_MESSAGE bytes of it: it is a message for a log line.
    """
    try:
        length = min(c.body_len, MAX_FAILURE_MESSAGE)
        return _bytes(c.body, length, "error body").decode("utf-8", "replace").strip()
    except ValueError:
        return ""
    finally:
        release(c)


def descriptor_string(ptr: Any, what: str, path: str, *, required: bool) -> str:
    """A NUL-terminated UTF-8 string a library describes itself with (`what` names it)."""
    if ptr == ffi.NULL:
        if required:
            raise PluginLoadError(path, f"{what} is NULL")
        return ""
    raw = ffi.string(ptr, MAX_DESCRIPTOR_STRING)
    try:
        return raw.decode("utf-8")  # type: ignore[no-any-return]
    except UnicodeDecodeError:
        raise PluginLoadError(path, f"{what} is not UTF-8") from None
