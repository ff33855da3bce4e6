"""The lane's bytes: answers as prebuilt wire bytes, and requests re-serialized.

An answer leaves in one write: its status line and Content-Type made once per pair,
then the connection's own fields (X-Request-Id, Date, Content-Length, the global
headers, Connection), then the body. A request relayed to aiohttp is written back
out canonically, from what the lane parsed and checked: its head without the framing
fields, then a Content-Length and `Connection: close`, then its body.
"""

from __future__ import annotations

from collections.abc import Mapping

from backworks.abi import Response
from backworks.httpspec import EMPTY_BODY_STATUSES, HOST_HEADERS, reason

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
CLOSE = b"Connection: close\r\n"
KEEP_ALIVE = b"Connection: keep-alive\r\n"

_PREFIXES: dict[tuple[int, str], bytes] = {}


def prefix(status: int, content_type: str) -> bytes:
    """The status line and Content-Type of an answer, made once per pair."""
    made = _PREFIXES.get((status, content_type))
    if made is None:
        media = content_type or "application/json"
        made = f"HTTP/1.1 {status} {reason(status)}\r\nContent-Type: {media}\r\n".encode()
        if len(_PREFIXES) < 1024:
            _PREFIXES[status, content_type] = made
    return made


def render(
    answer: Response,
    request_id: bytes,
    date: bytes,
    global_block: bytes,
    global_names: frozenset[str],
    global_headers: Mapping[str, str] | None,
    connection: bytes,
    head_only: bool,
) -> bytes:
    """An answer's bytes: status, headers, body (none for HEAD, 204 and 304).

    `connection`: the Connection field to send, or b"". `global_headers` is asked only
    when the answer sets one of the global headers itself (it is then not repeated).
    """
    status = answer.status
    if not answer.headers and status not in EMPTY_BODY_STATUSES:
        # The common answer: one prebuilt prefix, one formatting.
        return b"%sX-Request-Id: %s\r\nDate: %s\r\nContent-Length: %d\r\n%s%s\r\n%s" % (
            prefix(status, answer.content_type),
            request_id,
            date,
            len(answer.body),
            global_block,
            connection,
            b"" if head_only else answer.body,
        )
    parts = [prefix(status, answer.content_type), b"X-Request-Id: ", request_id, b"\r\n"]
    with_date = True
    if answer.headers:
        own = set()
        for name, value in answer.headers:
            lower = name.lower()
            if lower not in HOST_HEADERS and lower != "x-request-id":
                own.add(lower)
                parts.append(f"{name}: {value}\r\n".encode("utf-8", "replace"))
        with_date = "date" not in own
        if own & global_names and global_headers is not None:
            global_block = b"".join(
                f"{k}: {v}\r\n".encode() for k, v in global_headers.items() if k.lower() not in own
            )
    if with_date:
        parts += (b"Date: ", date, b"\r\n")
    body = answer.body
    if status in EMPTY_BODY_STATUSES:
        body = b""
    else:
        parts += (b"Content-Length: ", str(len(body)).encode(), b"\r\n")
    parts += (global_block, connection, b"\r\n")
    if not head_only:
        parts.append(body)
    return b"".join(parts)


# The request fields the lane has acted on itself: the body's framing, and Expect.
_REFRAMED = frozenset({"content-length", "transfer-encoding", "expect"})


def relayed_request(
    method: str,
    target: bytes,
    version: str,
    fields: tuple[tuple[str, str], ...],
    body: bytes,
) -> bytes:
    """A request as the lane read it, written out for aiohttp: canonical framing only.

    Its fields as they came, but the framing ones and Expect (the lane has answered
    it); a sized body goes with its Content-Length, a chunked one as one chunk.
    """
    lines = [b"%s %s HTTP/%s\r\n" % (method.encode(), target, version.encode())]
    chunked = sized = False
    for name, value in fields:
        if name not in _REFRAMED:
            lines.append(b"%s: %s\r\n" % (name.encode("latin-1"), _raw(value)))
        elif name == "transfer-encoding":
            chunked = True
        elif name == "content-length":
            sized = True
    if chunked:
        lines.append(b"Transfer-Encoding: chunked\r\n\r\n")
        if body:
            lines.append(b"%x\r\n%s\r\n" % (len(body), body))
        lines.append(b"0\r\n\r\n")
    else:
        if sized or body:
            lines.append(b"Content-Length: %d\r\n" % len(body))
        lines.append(b"\r\n")
        lines.append(body)
    return b"".join(lines)


def _raw(value: str) -> bytes:
    """A field value back in the bytes it came in (the lane decodes them losslessly)."""
    return value.encode("utf-8", "surrogateescape")


# Fields of aiohttp's answer that are the connection's, so the lane's to say.
_CONNECTION_FIELDS = (b"connection", b"keep-alive", b"server")


def relayed_answer(raw: bytes, connection: bytes, head_only: bool) -> bytes | None:
    """aiohttp's answer to a relayed request, fit for the lane's connection.

    Its connection fields are replaced with `connection`, and a body that aiohttp
    framed by closing gets a Content-Length. None: no complete answer came.
    """
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.split(b"\r\n")
    kept = [lines[0]]
    framed = False
    for line in lines[1:]:
        name = line.partition(b":")[0].strip().lower()
        if name in _CONNECTION_FIELDS:
            continue
        framed = framed or name in (b"content-length", b"transfer-encoding")
        kept.append(line)
    status = lines[0].split(b" ", 2)[1:2]
    if not framed and status and int(status[0]) not in EMPTY_BODY_STATUSES and not head_only:
        kept.append(b"Content-Length: %d" % len(body))
    if connection:
        kept.append(connection[:-2])
    return b"\r\n".join(kept) + b"\r\n\r\n" + body
