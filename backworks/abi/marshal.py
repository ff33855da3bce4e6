"""Marshalling: host-owned request memory in, the plugin's answer copied out.

Every native call follows the same steps: marshal the inputs into host-owned memory
that stays referenced for the whole call, call, copy the plugin's answer out, and
`release` it exactly once in a `finally`.
"""

from __future__ import annotations

import struct
import sys
import threading
from collections.abc import Sequence
from itertools import chain
from typing import Any

from backworks import httpspec
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


_request_structs: dict[int, struct.Struct] = {}


def _request_struct(pairs: int) -> struct.Struct:
    """The `struct` layout of a `bw_request` followed by `bw_header[pairs]`."""
    packer = _request_structs.get(pairs)
    if packer is None:
        layout = _REQUEST.format + "PN" * (2 * pairs)
        packer = _request_structs.setdefault(pairs, struct.Struct(layout))
        if pairs and struct.calcsize(layout) != _REQUEST.size + pairs * _HEADER_SIZE:
            msg = "bw_header[] does not follow bw_request the way struct lays it out"
            raise RuntimeError(msg)
    return packer


def _pack_pairs(spans: list[int], count: int) -> Any:
    """A host-owned `bw_header[count]` from 4 * count span numbers; None when empty."""
    return ffi.from_buffer(_pair_struct(count).pack(*spans)) if count else None


# A zeroed bw_response with its struct_size, as every call's output starts.
_FRESH_RESPONSE = bytes(
    ffi.buffer(ffi.new("bw_response *", {"struct_size": ffi.sizeof("bw_response")}))
)


class _Scratch:
    """One thread's reusable memory for the `bw_request` and `bw_response` of a call.

    A thread makes one native call at a time (a call that overran its timeout keeps
    its thread until it returns), so its scratch memory is never in use twice: one
    allocation per thread instead of several cffi objects per call. The memory is a
    bytearray that cffi points into (never resized, so the address holds): `struct`
    and slicing write it at native speed.
    """

    __slots__ = (
        "address",
        "c_request",
        "c_response",
        "cdata",
        "out",
        "response",
        "size",
        "view",
    )

    def __init__(self, size: int) -> None:
        self.size = size
        self.view = bytearray(size)
        self.cdata = ffi.from_buffer(self.view)
        self.address = _address(self.cdata)
        self.c_request = ffi.cast("bw_request *", self.cdata)
        self.out = memoryview(self.view)  # where the compiled step renders an answer
        self.response = bytearray(_FRESH_RESPONSE)
        self.c_response = ffi.cast("bw_response *", ffi.from_buffer(self.response))


_SCRATCH_SIZE = 64 * 1024
_scratches = threading.local()


def _scratch(size: int) -> _Scratch:
    try:
        scratch: _Scratch = _scratches.scratch
    except AttributeError:
        scratch = _scratches.scratch = _Scratch(_SCRATCH_SIZE)
    # A request larger than the scratch memory gets memory of its own, for this call.
    return scratch if size <= scratch.size else _Scratch(size)


def frame_request(req: Request, cancel: CancelFlag) -> tuple[Any, Any]:
    """Lays `req` out as one host-owned `bw_request`; returns it and what keeps it alive.

    Keep the second value referenced until the native call has returned. The struct,
    the header/param array, every string and the body lie end to end in this thread's
    scratch memory; the structs are packed with `struct` in native layout (checked
    against cffi's at import) instead of field by field: marshalling is what a plugin
    call costs most. Strings are copied as bytes: one encode for the ASCII they
    nearly always are.
    """
    params, headers = req.params, req.headers
    texts = (
        req.method,
        req.path,
        req.query,
        req.endpoint,
        req.request_id,
        *chain.from_iterable(params),
        *chain.from_iterable(headers),
    )
    joined = "".join(texts)
    try:
        blob = joined.encode("ascii")
        lengths: Sequence[str | bytes] = texts
    except UnicodeEncodeError:
        encoded = [_text(t) for t in texts]
        blob = b"".join(encoded)
        lengths = encoded
    pairs = len(params) + len(headers)
    strings_at = _REQUEST.size + pairs * _HEADER_SIZE
    body = req.body
    body_at = strings_at + len(blob)
    scratch = _scratch(body_at + len(body))
    view, base = scratch.view, scratch.address
    spans: list[int] = []
    position = base + strings_at
    for text in lengths:
        size = len(text)
        spans += (position if size else 0, size)  # an empty string is NULL, as ever
        position += size
    view[strings_at:body_at] = blob
    if body:
        view[body_at : body_at + len(body)] = body
    # The struct and the pair array after it, in one go.
    _request_struct(pairs).pack_into(
        view,
        0,
        _REQUEST.size,
        *spans[:8],  # method, path, query, endpoint
        base + _REQUEST.size if params else 0,
        len(params),
        base + _REQUEST.size + len(params) * _HEADER_SIZE if headers else 0,
        len(headers),
        base + body_at if body else 0,
        len(body),
        *spans[8:10],  # request_id
        min(max(req.timeout_ms, 0), 0xFFFFFFFF),
        cancel.address,
        *spans[10:],  # the params, then the headers: name and value each
    )
    return scratch.c_request, scratch


def fresh_response(memory: Any) -> Any:
    """The `bw_response` of `memory` (from frame_request), zeroed for a plugin to fill."""
    memory.response[:] = _FRESH_RESPONSE
    return memory.c_response


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


def _check_response_layout() -> None:
    """The `struct` format of bw_response must match what the C compiler makes of it."""
    if _RESPONSE.size != ffi.sizeof("bw_response"):
        msg = "bw_response layout differs from the struct format used to read it"
        raise RuntimeError(msg)
    c = ffi.new("bw_response *")
    c.struct_size, c.status = 1, 2
    c.content_type.ptr, c.content_type.len = ffi.cast("char *", 3), 4
    c.headers, c.headers_len = ffi.cast("bw_header *", 5), 6
    c.body, c.body_len = ffi.cast("uint8_t *", 7), 8
    c.release, c.release_data = ffi.cast("bw_release_fn", 9), ffi.cast("void *", 10)
    if _RESPONSE.unpack(bytes(ffi.buffer(c))) != tuple(range(1, 11)):
        msg = "bw_response fields lie at other offsets than the struct format reads them"
        raise RuntimeError(msg)


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


# What a copied response is for: the answer to a request, a hook's answer (status 0:
# "go on"), or a health report (read by the host, never written to a client).
ANSWER, HOOK, REPORT = 0, 1, 2

# Content types that passed the check, so each plugin's usual one is checked once.
_checked_types: dict[bytes, str] = {}


class ResponseTooLarge(ValueError):
    """A plugin's answer is larger than its plugin may answer (max_response_mb)."""


def _check_size(body_len: int, limit: int) -> None:
    _check_length(body_len, 1, "response body")
    if body_len > limit:
        msg = (
            f"answered with a body of {body_len} bytes, more than its limit of {limit} "
            "bytes (max_response_mb); the answer was refused"
        )
        raise ResponseTooLarge(msg)


def _content_type(raw: bytes) -> str:
    checked = _checked_types.get(raw)
    if checked is not None:
        return checked
    if not httpspec.is_media_type(raw):
        msg = f"content_type {raw[:80]!r} is not a media type (type/subtype; parameters)"
        raise ValueError(msg)
    text = raw.decode("ascii", "replace")
    if len(_checked_types) < 256:
        _checked_types[raw] = text
    return text


def _header(h: Any) -> tuple[str, str]:
    name = _bytes(h.name.ptr, h.name.len, "header name")
    value = _bytes(h.value.ptr, h.value.len, "header value")
    if not httpspec.is_token(name):
        msg = f"header name {name[:80]!r} is not an HTTP token"
        raise ValueError(msg)
    if not httpspec.is_field_value(value):
        msg = f"header {name.decode()!r} has a value HTTP cannot carry: {value[:80]!r}"
        raise ValueError(msg)
    return name.decode("ascii"), value.decode("utf-8", "replace")


def _copy_response(c: Any, kind: int, limit: int) -> Response:
    """Copies a plugin-filled `bw_response` into Python memory (before `release`).

    An answer (and a hook's) must be one HTTP can carry byte for byte: a final status
    (200-599; 0 from a hook), a media type, headers of token names and field values,
    and a body within `limit` bytes (checked before anything is copied, so an answer
    over it costs no memory here). Anything else raises ValueError: refused here, it
    counts as the plugin's failure.
    """
    _check_size(c.body_len, limit)
    status = int(c.status)
    if (
        kind != REPORT
        and status not in httpspec.FINAL_STATUSES
        and not (kind == HOOK and not status)
    ):
        msg = f"status {status} is not a final HTTP status (200-599)"
        raise ValueError(msg)
    headers: tuple[tuple[str, str], ...] = ()
    count = c.headers_len
    if count:
        if c.headers == ffi.NULL:
            msg = f"response headers are NULL but headers_len is {count}"
            raise ValueError(msg)
        _check_length(count, ffi.sizeof("bw_header"), "response headers")
        array = c.headers
        headers = tuple(_header(array[i]) for i in range(count))
    ct = c.content_type
    raw_type = _bytes(ct.ptr, ct.len, "content_type")
    if kind == REPORT:
        content_type = raw_type.decode("utf-8", "replace")
    else:
        content_type = _content_type(raw_type) if raw_type else ""
    return Response(status, _bytes(c.body, c.body_len, "response body"), content_type, headers)


def release(c: Any) -> None:
    """Calls the response's `release` once; clears it first, so a second call does nothing."""
    if c.release != ffi.NULL:
        release, data = c.release, c.release_data
        # Cleared first: whatever happens next, this response is never released twice.
        c.release = ffi.NULL
        release(data)


def take_response(
    c: Any, plugin: str, kind: int = ANSWER, limit: int = DEFAULT_MAX_RESPONSE_BYTES
) -> Response:
    """Copy out, then release exactly once, even when the copy fails or is refused.

    An answer whose body is over `limit` bytes is refused before any of it is copied.
    """
    try:
        return _copy_response(c, kind, limit)
    except ResponseTooLarge as e:
        raise PluginCallError(plugin, str(e)) from None
    except ValueError as e:
        raise PluginCallError(plugin, f"returned a malformed response: {e}") from e
    finally:
        release(c)


# bw_response: struct_size, status, content_type, headers (+len), body (+len), release,
# release_data -- in the header's order (checked against cffi's layout at import).
_RESPONSE = struct.Struct("@Ii" + "PN" * 3 + "PP")
_check_response_layout()


def take_answer(memory: Any, plugin: str, limit: int) -> Response:
    """`take_response` for the scratch memory of frame_request: the same checks, faster.

    The struct is read in one `struct` call; the content type and the body, which the
    SDK's helpers lay end to end, in one copy when they are.
    """
    fields = _RESPONSE.unpack_from(memory.response)
    c = memory.c_response
    try:
        _, status, ct_at, ct_len, _, count, body_at, body_len, _, _ = fields
        _check_size(body_len, limit)
        if count or status not in httpspec.FINAL_STATUSES:
            return _copy_response(c, ANSWER, limit)  # headers to check, or a refusal
        if not ct_len:
            return Response(status, _bytes(c.body, body_len, "response body"))
        if ct_at + ct_len == body_at and body_len and ct_at:
            both = _bytes(c.content_type.ptr, ct_len + body_len, "response")
            return Response(status, both[ct_len:], _content_type(both[:ct_len]))
        content_type = _content_type(_bytes(c.content_type.ptr, ct_len, "content_type"))
        return Response(status, _bytes(c.body, body_len, "response body"), content_type)
    except ResponseTooLarge as e:
        raise PluginCallError(plugin, str(e)) from None
    except ValueError as e:
        raise PluginCallError(plugin, f"returned a malformed response: {e}") from e
    finally:
        if fields[8]:
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
