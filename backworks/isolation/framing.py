"""The binary framing between the host and its worker processes: a pure codec.

Every message is one frame, little-endian, no padding:

    u32 body_length | u8 kind | u32 call_id | body (body_length bytes)

`call_id` ties a reply to its call; messages that belong to no call (INIT, READY,
LOG, ...) carry 0. A body is a sequence of fields:

    u8 / u32 / i32 / u64    fixed-width integers
    bytes, str              u32 length, then the bytes (str: UTF-8, surrogateescape,
                            so the exact bytes aiohttp decoded survive the trip)
    pairs                   u32 count, then each name and value as a str

A call is one frame each way on the calls channel: the host sends HANDLE (a
request), the worker answers RESPONSE, NONE or FAILED. CANCEL frames use the same
format on the control channel. Nothing here does I/O; both sides feed what they read
into a `FrameReader` and hand bodies to the `decode_*` functions.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Final, TypeVar

import attrs

from backworks.abi import DEFAULT_MAX_RESPONSE_BYTES, Pairs, PluginInfo, Request, Response
from backworks.errors import AbiMismatchError, PluginError, PluginInitError, PluginLoadError

T = TypeVar("T")

HEADER: Final = struct.Struct("<IBI")
# A frame larger than this is a protocol error, not a request: it would mean a
# corrupt stream, and reading on would allocate whatever the garbage length says.
MAX_BODY: Final = 1 << 30

# -- host -> worker
INIT: Final = 1
HANDLE: Final = 2
ON_REQUEST: Final = 3
ON_RESPONSE: Final = 4
HEALTH: Final = 5
SHUTDOWN: Final = 6
CANCEL: Final = 7
CALL_KINDS: Final = frozenset({HANDLE, ON_REQUEST, ON_RESPONSE, HEALTH, SHUTDOWN})
# -- worker -> host
READY: Final = 16
START_FAILED: Final = 17
RESPONSE: Final = 18
NONE: Final = 19
FAILED: Final = 20
LOG: Final = 21
CPU_EXCEEDED: Final = 22

# Why a call (FAILED) or a start (START_FAILED) did not work: the host raises the
# matching error class.
ERR_CALL: Final = 1  # PluginCallError: BW_FAIL or an unknown code
ERR_CANCELLED: Final = 2  # PluginCancelledError: BW_CANCELLED
ERR_INTERNAL: Final = 3  # the worker itself failed around the call
ERR_LOAD: Final = 4  # PluginLoadError
ERR_ABI: Final = 5  # AbiMismatchError
ERR_INIT: Final = 6  # PluginInitError

_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_INFO_NUMBERS = struct.Struct("<IQB")  # abi_version, flags, has_* and legacy bits
_READY_NUMBERS = struct.Struct("<IQ")  # pid, baseline RSS in KiB
# flags, threads, memory_limit_mb, cpu_limit_ms, max_response_mb
_INIT_NUMBERS = struct.Struct("<BIIII")
_FAILED_NUMBERS = struct.Struct("<B")
_LOG_NUMBERS = struct.Struct("<i")

# The running table a worker shares with the host (see process.py): one entry per
# call thread, the id of the call it runs, 0 when idle; then UNSENT_ENTRIES entries
# for answers made but not yet written (answers leave in batches: child.Outbox).
TABLE_ENTRY: Final = struct.Struct("<I")
UNSENT_ENTRIES: Final = 128  # more answers waiting than this: the worker writes first


def table_size(threads: int) -> int:
    """Bytes of the running table of a worker with `threads` call threads."""
    return TABLE_ENTRY.size * (max(threads, 1) + UNSENT_ENTRIES)


_INIT_INSECURE = 1
_INIT_PROBE = 2


class ProtocolError(Exception):
    """The byte stream is not a valid sequence of frames (a bug or a corrupt peer)."""


# ---------------------------------------------------------------------------
# Frames


class FrameReader:
    """Splits a byte stream into frames, whatever the chunks it arrives in."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        """Returns the `(kind, call_id, body)` of every frame `data` completes."""
        buf = self._buf + data if self._buf else data
        frames = []
        pos, end, size = 0, len(buf), HEADER.size
        while end - pos >= size:
            length, kind, call_id = HEADER.unpack_from(buf, pos)
            if length > MAX_BODY:
                msg = f"frame of kind {kind} claims {length} bytes (at most {MAX_BODY})"
                raise ProtocolError(msg)
            stop = pos + size + length
            if stop > end:
                break
            frames.append((kind, call_id, buf[pos + size : stop]))
            pos = stop
        self._buf = buf[pos:] if pos < end else b""
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buf)


def frame(kind: int, call_id: int, body: bytes = b"") -> bytes:
    """One frame: the header (length, kind, call id), then `body`."""
    return HEADER.pack(len(body), kind, call_id) + body


def with_call_id(data: bytes, call_id: int) -> bytes:
    """The frame `data` under another call id (a call sent again, to another worker)."""
    length, kind, _ = HEADER.unpack_from(data)
    return HEADER.pack(length, kind, call_id) + data[HEADER.size :]


def _frame_of(kind: int, call_id: int, parts: list[bytes]) -> bytes:
    body = b"".join(parts)
    return HEADER.pack(len(body), kind, call_id) + body


class _Fields:
    """Reads the fields of one body in order."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, st: struct.Struct) -> tuple[int, ...]:
        values = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return values

    def blob(self) -> bytes:
        (n,) = _U32.unpack_from(self.buf, self.pos)
        start = self.pos + 4
        self.pos = start + n
        if self.pos > len(self.buf):
            msg = f"a field of {n} bytes runs past the end of its {len(self.buf)}-byte frame"
            raise ProtocolError(msg)
        return self.buf[start : self.pos]

    def text(self) -> str:
        return self.blob().decode("utf-8", "surrogateescape")

    def pairs(self) -> Pairs:
        (n,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return tuple((self.text(), self.text()) for _ in range(n))


def _put(parts: list[bytes], data: bytes) -> None:
    parts.append(_U32.pack(len(data)))
    parts.append(data)


def _put_str(parts: list[bytes], text: str) -> None:
    _put(parts, text.encode("utf-8", "surrogateescape"))


def _put_pairs(parts: list[bytes], pairs: Sequence[tuple[str, str]]) -> None:
    parts.append(_U32.pack(len(pairs)))
    for name, value in pairs:
        _put_str(parts, name)
        _put_str(parts, value)


# ---------------------------------------------------------------------------
# Requests and responses


def _put_request(parts: list[bytes], req: Request) -> None:
    for text in (req.method, req.path, req.query, req.endpoint, req.request_id):
        _put_str(parts, text)
    _put_pairs(parts, req.params)
    _put_pairs(parts, req.headers)
    _put(parts, req.body)
    parts.append(_U32.pack(min(max(req.timeout_ms, 0), 0xFFFFFFFF)))


def _take_request(f: _Fields) -> Request:
    method, path, query, endpoint, request_id = f.text(), f.text(), f.text(), f.text(), f.text()
    params = f.pairs()
    headers = f.pairs()
    body = f.blob()
    (timeout_ms,) = f.take(_U32)
    return Request(
        method=method,
        path=path,
        query=query,
        endpoint=endpoint,
        params=params,
        headers=headers,
        body=body,
        request_id=request_id,
        timeout_ms=timeout_ms,
    )


def _put_response(parts: list[bytes], resp: Response) -> None:
    parts.append(_I32.pack(resp.status))
    _put_str(parts, resp.content_type)
    _put_pairs(parts, resp.headers)
    _put(parts, resp.body)


def _take_response(f: _Fields) -> Response:
    (status,) = f.take(_I32)
    content_type = f.text()
    headers = f.pairs()
    return Response(status=status, body=f.blob(), content_type=content_type, headers=headers)


def encode_call(
    kind: int, call_id: int, req: Request | None = None, upstream: Response | None = None
) -> bytes:
    """A call frame: HANDLE/ON_REQUEST carry `req`, ON_RESPONSE also `upstream`."""
    parts: list[bytes] = []
    if req is not None:
        _put_request(parts, req)
    if upstream is not None:
        _put_response(parts, upstream)
    return _frame_of(kind, call_id, parts)


def decode_request(body: bytes) -> Request:
    """The request of a HANDLE or ON_REQUEST frame."""
    return _decoding(_take_request, body)


def decode_request_and_upstream(body: bytes) -> tuple[Request, Response]:
    """The request and the upstream answer of an ON_RESPONSE frame."""

    def take(f: _Fields) -> tuple[Request, Response]:
        return _take_request(f), _take_response(f)

    return _decoding(take, body)


def encode_response(call_id: int, resp: Response) -> bytes:
    """A RESPONSE frame answering call `call_id` with `resp`."""
    parts: list[bytes] = []
    _put_response(parts, resp)
    return _frame_of(RESPONSE, call_id, parts)


def decode_response(body: bytes) -> Response:
    """The answer a RESPONSE frame carries."""
    return _decoding(_take_response, body)


def encode_failure(call_id: int, error: int, message: str) -> bytes:
    """A FAILED frame: call `call_id` failed for reason `error` (ERR_*), with `message`."""
    parts = [_FAILED_NUMBERS.pack(error)]
    _put_str(parts, message)
    return _frame_of(FAILED, call_id, parts)


def decode_failure(body: bytes) -> tuple[int, str]:
    """The reason code (ERR_*) and message of a FAILED frame."""

    def take(f: _Fields) -> tuple[int, str]:
        (error,) = f.take(_FAILED_NUMBERS)
        return error, f.text()

    return _decoding(take, body)


def encode_log(level: int, message: str) -> bytes:
    """A LOG frame: one line the plugin logged through `host->log`."""
    parts = [_LOG_NUMBERS.pack(level)]
    _put_str(parts, message)
    return _frame_of(LOG, 0, parts)


def decode_log(body: bytes) -> tuple[int, str]:
    """The level and message of a LOG frame."""

    def take(f: _Fields) -> tuple[int, str]:
        (level,) = f.take(_LOG_NUMBERS)
        return level, f.text()

    return _decoding(take, body)


def encode_cpu_exceeded(call_id: int, used_ms: int) -> bytes:
    """A CPU_EXCEEDED frame: call `call_id` used `used_ms` of CPU, over its limit."""
    return frame(CPU_EXCEEDED, call_id, _U32.pack(min(used_ms, 0xFFFFFFFF)))


def decode_cpu_exceeded(body: bytes) -> int:
    """The CPU milliseconds a CPU_EXCEEDED frame reports."""
    return _decoding(lambda f: f.take(_U32)[0], body)


# ---------------------------------------------------------------------------
# Starting a worker


@attrs.frozen
class WorkerInit:
    """What a worker needs to load its plugin: the first frame it reads."""

    path: str
    name: str
    config_json: bytes = b"{}"
    allow_insecure_permissions: bool = False
    sha256: str = ""
    threads: int = 1
    memory_limit_mb: int = 0  # 0: no limit
    cpu_limit_ms: int = 0  # 0: no limit
    probe: bool = False  # only report the descriptor, run no `init`
    # An answer body over this fails its call, in the worker, before it is copied.
    max_response_mb: int = DEFAULT_MAX_RESPONSE_BYTES >> 20


def encode_init(init: WorkerInit) -> bytes:
    """The INIT frame, the first a worker reads: what to load and with which limits."""
    parts: list[bytes] = []
    _put_str(parts, init.path)
    _put_str(parts, init.name)
    _put(parts, init.config_json)
    _put_str(parts, init.sha256)
    flags = (_INIT_INSECURE if init.allow_insecure_permissions else 0) | (
        _INIT_PROBE if init.probe else 0
    )
    parts.append(
        _INIT_NUMBERS.pack(
            flags, init.threads, init.memory_limit_mb, init.cpu_limit_ms, init.max_response_mb
        )
    )
    return _frame_of(INIT, 0, parts)


def decode_init(body: bytes) -> WorkerInit:
    """The WorkerInit an INIT frame carries."""

    def take(f: _Fields) -> WorkerInit:
        path, name, config, sha = f.text(), f.text(), f.blob(), f.text()
        flags, threads, memory, cpu, max_response = f.take(_INIT_NUMBERS)
        return WorkerInit(
            path=path,
            name=name,
            config_json=config,
            allow_insecure_permissions=bool(flags & _INIT_INSECURE),
            sha256=sha,
            threads=threads,
            memory_limit_mb=memory,
            cpu_limit_ms=cpu,
            probe=bool(flags & _INIT_PROBE),
            max_response_mb=max_response,
        )

    return _decoding(take, body)


@attrs.frozen
class Ready:
    """A worker's first answer: its plugin is initialised (or, probing, loaded)."""

    info: PluginInfo
    pid: int
    baseline_rss_kb: int  # resident memory before the plugin was loaded; 0 = unknown


def encode_ready(ready: Ready) -> bytes:
    """The READY frame: the plugin's descriptor, the worker's pid and baseline RSS."""
    info = ready.info
    parts: list[bytes] = []
    for text in (info.path, info.name, info.version, info.description):
        _put_str(parts, text)
    bits = info.has_health | info.has_on_request << 1 | info.has_on_response << 2 | info.legacy << 3
    parts.append(_INFO_NUMBERS.pack(info.abi_version, info.flags, bits))
    parts.append(_READY_NUMBERS.pack(ready.pid, ready.baseline_rss_kb))
    return _frame_of(READY, 0, parts)


def decode_ready(body: bytes) -> Ready:
    """The Ready a READY frame carries."""

    def take(f: _Fields) -> Ready:
        path, name, version, description = f.text(), f.text(), f.text(), f.text()
        abi_version, flags, bits = f.take(_INFO_NUMBERS)
        pid, baseline = f.take(_READY_NUMBERS)
        info = PluginInfo(
            path=path,
            name=name,
            version=version,
            description=description,
            abi_version=abi_version,
            flags=flags,
            has_health=bool(bits & 1),
            has_on_request=bool(bits & 2),
            has_on_response=bool(bits & 4),
            legacy=bool(bits & 8),
        )
        return Ready(info=info, pid=pid, baseline_rss_kb=baseline)

    return _decoding(take, body)


def encode_start_failed(error: int, path: str, message: str) -> bytes:
    """A START_FAILED frame: why the worker could not load or start its plugin."""
    parts = [_FAILED_NUMBERS.pack(error)]
    _put_str(parts, path)
    _put_str(parts, message)
    return _frame_of(START_FAILED, 0, parts)


def decode_start_failed(body: bytes) -> tuple[int, str, str]:
    """The reason code (ERR_*), path and message of a START_FAILED frame."""

    def take(f: _Fields) -> tuple[int, str, str]:
        (error,) = f.take(_FAILED_NUMBERS)
        return error, f.text(), f.text()

    return _decoding(take, body)


StartError = PluginError | PluginLoadError  # what a START_FAILED frame stands for


def decode_start_error(plugin: str, body: bytes) -> StartError:
    """The error a START_FAILED frame reports, as the class the host raises for it."""
    error, path, message = decode_start_failed(body)
    if error == ERR_ABI:
        return AbiMismatchError(path, message)
    if error == ERR_LOAD:
        return PluginLoadError(path, message)
    return PluginInitError(plugin, message)


def _decoding(take: Callable[[_Fields], T], body: bytes) -> T:
    f = _Fields(body)
    try:
        value = take(f)
    except struct.error as e:
        msg = f"malformed frame body ({len(body)} bytes): {e}"
        raise ProtocolError(msg) from e
    if f.pos != len(body):
        msg = f"{len(body) - f.pos} bytes left over after the last field of a frame"
        raise ProtocolError(msg)
    return value
