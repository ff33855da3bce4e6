"""The plain values that cross the binding's edge: no cffi object is among them.

`Request` and `Response` are made once per request on the hot path, so they are
named tuples (a third of the cost of a frozen attrs class, and as immutable);
`PluginInfo`, made once per plugin, is an attrs class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import attrs

from backworks.abi.declarations import FLAG_NAMES, FLAG_NONBLOCKING, FLAG_THREAD_SAFE, abi_text, ffi


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


class Request(NamedTuple):
    """One request as a plugin sees it (`bw_request`); header names are lower-case."""

    method: str
    path: str
    query: str = ""
    endpoint: str = ""
    params: Pairs = ()
    headers: Pairs = ()
    body: bytes = b""
    request_id: str = ""
    timeout_ms: int = 0


class Response(NamedTuple):
    """One response, copied out of the plugin's memory (`bw_response`).

    An empty `content_type` means the default, application/json. A hook's answer of
    status 0 means "no answer: go on".
    """

    status: int
    body: bytes = b""
    content_type: str = ""
    headers: Pairs = ()


class CancelFlag:
    """The `cancelled` word of a call: the host sets it, the plugin polls it.

    Host-owned memory that must outlive the native call; whoever runs the call keeps a
    reference to it until the call returns.
    """

    __slots__ = ("_word", "address")

    def __init__(self) -> None:
        self._word = ffi.new("uint32_t *")
        self.address = int(ffi.cast("uintptr_t", self._word))  # where a bw_request points

    def set(self) -> None:
        self._word[0] = 1

    @property
    def is_set(self) -> bool:
        return bool(self._word[0])


LogSink = Callable[[int, str], None]
"""Receives `(level, message)` from a plugin's `host->log`; must be thread-safe."""
