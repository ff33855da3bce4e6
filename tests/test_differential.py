"""The lane and the aiohttp engine answer the same: one corpus of requests (good, odd
and malformed; whole, split into tiny writes, and pipelined), the same config served by
both, every answer's status, body and the headers that matter compared.

Both read requests through the lane's edge; what differs is who answers: the request
core itself, or aiohttp's handler of the same app (relayed in memory).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestServer

from backworks.config import load_config
from backworks.server.app import create_app
from tests.serving import Kit, LaneTestServer
from tests.wire import Answer, exchange

CONFIG: dict[str, Any] = {
    "plugin_discovery": {"enabled": True, "directories": ["./plugins"]},
    "endpoints": {
        "/static": {"method": "GET", "response": {"status": 200, "body": '{"s": 1}'}},
        "/created": {
            "method": "POST",
            "response": {"status": 201, "body": "made", "content_type": "text/plain"},
        },
        "/echo": {"methods": ["POST", "PUT"], "runtime": {"type": "plugin", "handler": "kit"}},
        "/items/{id}/echo": {"method": "GET", "runtime": {"type": "plugin", "handler": "kit"}},
        "/hooked/echo": {
            "method": "GET",
            "hooks": ["guard"],
            "runtime": {"type": "plugin", "handler": "kit"},
        },
    },
    "global_headers": {"x-powered-by": "backworks"},
    "server": {"max_body_bytes": 4096},
}


def head(line: str, *fields: str, body: bytes = b"") -> bytes:
    lines = [line, "Host: test", *fields]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


CHUNKED = (
    b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"4;ext=1\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\n"
)
# Each case: a name, and the writes that make it (one write each, unless split).
CORPUS: list[tuple[str, list[bytes]]] = [
    ("static", [head("GET /static HTTP/1.1")]),
    ("static with an empty query", [head("GET /static? HTTP/1.1")]),
    ("static HEAD", [head("HEAD /static HTTP/1.1")]),
    ("static other status and type", [head("POST /created HTTP/1.1")]),
    ("no route", [head("GET /nowhere HTTP/1.1")]),
    ("wrong method", [head("DELETE /static HTTP/1.1")]),
    ("plugin status", [head("GET /plugins/kit/status?code=201 HTTP/1.1")]),
    ("plugin deliberate 503", [head("GET /plugins/kit/status?code=503 HTTP/1.1")]),
    ("plugin echo", [head("GET /plugins/kit/echo?x=1&y=a%26b HTTP/1.1", "X-Custom: Value")]),
    ("plugin headers", [head("GET /plugins/kit/headers HTTP/1.1")]),
    ("plugin failure", [head("GET /plugins/kit/fail HTTP/1.1")]),
    ("unknown plugin", [head("GET /plugins/ghost HTTP/1.1")]),
    ("path parameter, percent-decoded", [head("GET /items/a%20b/echo HTTP/1.1")]),
    ("encoded slash in the path", [head("GET /plugins/kit/x%2Fy/echo HTTP/1.1")]),
    ("utf-8 in the path", [head("GET /items/caf%C3%A9/echo HTTP/1.1")]),
    ("absolute-form target", [head("GET http://test/static HTTP/1.1")]),
    ("sized body", [head("POST /echo HTTP/1.1", body=b"hello body")]),
    ("chunked body with an extension", [CHUNKED]),
    ("body on PUT", [head("PUT /echo HTTP/1.1", body=b"\x00\x01\x02")]),
    ("body over the limit", [head("POST /echo HTTP/1.1", body=b"x" * 5000)]),
    ("duplicate headers", [head("GET /plugins/kit/echo HTTP/1.1", "X-A: 1", "X-A: 2")]),
    ("non-ascii header value", [head("GET /plugins/kit/echo HTTP/1.1", "X-N: caf\xe9")]),
    ("plain request id kept", [head("GET /static HTTP/1.1", "X-Request-Id: abc-123")]),
    ("hook answers early", [head("GET /hooked/echo HTTP/1.1", "X-Deny: 1")]),
    ("hook lets it through", [head("GET /hooked/echo HTTP/1.1")]),
    ("http/1.0", [b"GET /static HTTP/1.0\r\n\r\n"]),
    ("connection close", [head("GET /static HTTP/1.1", "Connection: close")]),
    ("garbage", [b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage\r\n\r\n"]),
    ("lower-case method", [b"get /static HTTP/1.1\r\nHost: test\r\n\r\n"]),
    ("space before the colon", [b"GET /static HTTP/1.1\r\nHost : test\r\n\r\n"]),
    (
        "length and chunked together",
        [
            b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n0\r\n\r\n"
        ],
    ),
    ("too many header fields", [head("GET /static HTTP/1.1", *(f"X-{i}: v" for i in range(200)))]),
    ("a header field too long", [head("GET /static HTTP/1.1", "X-Long: " + "v" * 9000)]),
]
SPLIT = [
    (f"{name}, split", [b[i : i + 3] for b in writes for i in range(0, len(b), 3)])
    for name, writes in CORPUS[:12]
]
PIPELINED = [
    (
        "pipelined",
        [
            head("GET /static HTTP/1.1")
            + head("GET /plugins/kit/status?code=202 HTTP/1.1")
            + head("GET /nowhere HTTP/1.1")
            + head("POST /echo HTTP/1.1", body=b"pipelined body")
            + head("GET /plugins/kit/sleep?ms=50 HTTP/1.1")
            + head("HEAD /static HTTP/1.1")
        ],
    )
]

# Headers whose difference would matter to a client; the rest (Server, Date, order)
# may differ between the engines.
COMPARED = ("content-type", "content-length", "allow", "x-powered-by", "x-kit", "x-hooked-by-guard")
_REQUEST_ID = re.compile(r'("request_id": ")[^"]*(")')


def comparable(answer: Answer) -> tuple[object, ...]:
    headers = {k.lower(): v for k, v in answer.headers}
    body = _REQUEST_ID.sub(r"\1<id>\2", answer.body.decode("latin-1"))
    return (answer.status, body, tuple(headers.get(name) for name in COMPARED))


@pytest.fixture
async def engines(
    tmp_path: Path, plugins_dir: Path, kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[dict[str, int]]:
    """The same config served by each engine: engine name -> port."""
    monkeypatch.setenv("BACKWORKS_CACHE_DIR", str(tmp_path / "cache"))
    kit("kit")
    kit("guard")
    servers: dict[str, TestServer] = {}
    for engine in ("lane", "aiohttp"):
        path = tmp_path / f"{engine}.yaml"
        config = {**CONFIG, "server": {**CONFIG["server"], "engine": engine}}
        path.write_text(yaml.safe_dump(config))
        servers[engine] = LaneTestServer(create_app(load_config(path)))
    for server in servers.values():
        await server.start_server()
    yield {name: server.port or 0 for name, server in servers.items()}
    for server in servers.values():
        await server.close()


@pytest.mark.parametrize(
    ("case", "writes"), CORPUS + SPLIT + PIPELINED, ids=[c for c, _ in CORPUS + SPLIT + PIPELINED]
)
async def test_both_engines_answer_the_same(
    engines: dict[str, int], case: str, writes: list[bytes]
) -> None:
    sent = b"".join(writes)
    methods = re.findall(rb"(?:^|\r\n\r\n|[a-z])([A-Z]+) /", sent)
    heads = tuple(i for i, method in enumerate(methods) if method == b"HEAD")
    seen = {}
    for engine, port in engines.items():
        pause = 0.002 if len(writes) > 1 else 0.0
        answers, _ = await exchange(port, *writes, pause=pause, heads=heads)
        assert answers, f"{engine} answered nothing to {case!r}"
        seen[engine] = [comparable(a) for a in answers]
    assert seen["lane"] == seen["aiohttp"], json.dumps(seen, indent=1, default=str)
