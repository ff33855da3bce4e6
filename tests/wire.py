"""Raw HTTP over a socket, for tests that need what a client library hides: pipelining,
split writes, half-sent bodies, garbage, and the exact bytes of an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import NamedTuple


class Answer(NamedTuple):
    """One HTTP answer as it came off the wire."""

    status: int
    headers: list[tuple[str, str]]  # in order; names as sent
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header `name` (any case), or None."""
        lower = name.lower()
        return next((v for k, v in self.headers if k.lower() == lower), None)


async def exchange(
    port: int,
    *chunks: bytes,
    pause: float = 0.0,
    read_timeout: float = 10.0,
    linger: float = 0.3,
    heads: tuple[int, ...] = (),
) -> tuple[list[Answer], bool]:
    """Sends `chunks` (with `pause` s between them), reads every answer; and whether the
    server closed the connection (within `linger` s after the last complete answer, or
    `read_timeout` s while an answer is incomplete). `heads`: the indexes of the answers
    to HEAD requests (they have a Content-Length but no body)."""
    data, closed = await converse(
        port, *chunks, pause=pause, read_timeout=read_timeout, linger=linger, heads=heads
    )
    return parse(data, heads)[0], closed


async def converse(
    port: int,
    *chunks: bytes,
    pause: float = 0.0,
    read_timeout: float = 10.0,
    linger: float = 0.3,
    heads: tuple[int, ...] = (),
) -> tuple[bytes, bool]:
    """`exchange`, but the bytes as they came (interim answers and all) instead of the
    answers: for tests about what exactly was written, and in which order. A reset by
    the server raises ConnectionResetError: a clean close is EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        data = b""
        closed = False
        while True:
            try:
                part = await asyncio.wait_for(reader.read(65536), read_timeout)
            except TimeoutError:
                break
            if not part:
                closed = True
                break
            data += part
            answers, rest = parse(data, heads)
            if rest == b"" and answers:
                # Keep reading briefly: more answers or the close may follow.
                read_timeout = linger
        return data, closed
    finally:
        await closed_quietly(writer)


async def closed_quietly(writer: asyncio.StreamWriter) -> None:
    """Closes `writer` and waits until it is: a test that failed half-way leaves no
    transport for the garbage collector to warn about."""
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def parse(data: bytes, heads: tuple[int, ...] = ()) -> tuple[list[Answer], bytes]:
    """Splits `data` into complete answers (1xx interim ones dropped) and the rest;
    the answers numbered in `heads` answer HEAD requests: no body."""
    answers: list[Answer] = []
    while True:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return answers, data
        head = data[:end].decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        headers = [tuple(line.split(": ", 1)) for line in head[1:]]
        rest = data[end + 4 :]
        if 100 <= status < 200:
            data = rest
            continue
        length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
        if len(answers) in heads or status in (204, 304):
            length = 0
        if len(rest) < length:
            return answers, data
        answers.append(Answer(status, [(k, v) for k, v in headers], rest[:length]))
        data = rest[length:]
