"""One request answered by aiohttp's protocol in memory, for the lane to write.

The operations routes are aiohttp's (and, with `server.engine: aiohttp`, every
route). Their requests are read and checked by the lane like any other, then written
out canonically (wire.relayed_request) to a fresh aiohttp protocol over a transport
that only collects what it writes. Once the collected bytes hold a whole answer (read
by httptools, as a client would), it is handed back, aiohttp's protocol is done with,
and the lane writes the answer in its turn: the connection stays the lane's, so
requests pipelined behind are answered too, and aiohttp never reads a byte from a
client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httptools


class _Collector(asyncio.Transport):
    """A transport that keeps what is written; its close hands it over."""

    def __init__(
        self, peer: asyncio.Transport, done: Callable[[bytes], None], head_only: bool
    ) -> None:
        super().__init__()
        self._peer = peer
        self._done: Callable[[bytes], None] | None = done
        self._chunks: list[bytes] = []
        self._closing = False
        self._head_only = head_only  # the answer to a HEAD: its head is all of it
        self._parser = httptools.HttpResponseParser(self)
        self._complete = False
        self.protocol: asyncio.BaseProtocol | None = None

    # The answer parser's callbacks: a whole answer ends the relay.

    def on_headers_complete(self) -> None:
        if self._head_only:
            self._complete = True

    def on_message_complete(self) -> None:
        self._complete = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        # The client's address, for the routes that look at it; never the socket.
        if name in ("peername", "sockname"):
            return self._peer.get_extra_info(name, default)
        return default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        chunk = bytes(data)
        self._chunks.append(chunk)
        try:
            self._parser.feed_data(chunk)
        except httptools.HttpParserError:
            self._complete = True  # not HTTP we can read: handed back as it is
        if self._complete:
            self.close()

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        done, self._done = self._done, None
        protocol = self.protocol
        if protocol is not None:
            asyncio.get_running_loop().call_soon(protocol.connection_lost, None)
        if done is not None:
            done(b"".join(self._chunks))

    def abort(self) -> None:
        """Nobody waits for the answer any more: aiohttp's handler is cancelled."""
        self._done = None
        self.close()

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_reading(self) -> bool:
        return True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


class Relay:
    """A request in aiohttp's hands; `done(raw answer)` is called once it has answered."""

    __slots__ = ("_transport",)

    def __init__(
        self,
        make_protocol: Callable[[], asyncio.Protocol],
        peer: asyncio.Transport,
        request: bytes,
        done: Callable[[bytes], None],
        *,
        head_only: bool,
    ) -> None:
        protocol = make_protocol()
        transport = self._transport = _Collector(peer, done, head_only)
        transport.protocol = protocol
        protocol.connection_made(transport)
        protocol.data_received(request)

    def cancel(self) -> None:
        """The client went away: aiohttp's handler is cancelled, nothing is handed back."""
        self._transport.abort()
