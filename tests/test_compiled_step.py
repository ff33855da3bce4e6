"""The compiled step (abi/step.py) answers byte for byte as the pure-Python path does.

One config served twice with an inline plugin: once with the compiled step, once with
`server.compiled_step: false`. The same raw requests go to both and the whole bytes
that come back must be equal (the Date field aside): ordinary answers, HEAD, HTTP/1.0,
pipelining, the global headers, and every odd answer the step hands back to the
Python path (failures, refusals, quoted media types, non-ASCII header text, 204, a
plugin header that overrides a global one, answers larger than its buffer).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from backworks.abi import step
from backworks.config import load_config
from backworks.http.aio.state import HOST
from backworks.server.app import create_app
from tests.conftest import BuildPlugin
from tests.serving import Kit, LaneTestServer

pytestmark = pytest.mark.skipif(not step.available(), reason="the extension was not built")

# Answers the test kit cannot give: each path names its oddity.
ODD = r"""
#include <backworks/sdk.h>

static int ends(bw_str s, const char *suffix) {
    size_t n = strlen(suffix);
    return s.len >= n && memcmp(s.ptr + s.len - n, suffix, n) == 0;
}

static int32_t odd_handle(void *state, const bw_request *req, bw_response *resp) {
    bw_header h[4];
    (void)state;
    h[0].name = bw_str_from("X-Upper"); h[0].value = bw_str_from("Kept As Is");
    h[1].name = bw_str_from("content-length"); h[1].value = bw_str_from("999");
    h[2].name = bw_str_from("X-Request-Id"); h[2].value = bw_str_from("theirs");
    h[3].name = bw_str_from("x-empty"); h[3].value = bw_str_from("");
    if (ends(req->path, "/quoted"))
        return bw_respond(resp, 200, "text/plain; charset=\"utf-8\"", NULL, 0, "q", 1);
    if (ends(req->path, "/params"))
        return bw_respond(resp, 200, "text/plain;charset=utf-8 ;  q=1", NULL, 0, "p", 1);
    if (ends(req->path, "/bad-type"))
        return bw_respond(resp, 200, "text/", NULL, 0, "b", 1);
    if (ends(req->path, "/high-value")) {
        h[0].value = bw_str_from("caf\xc3\xa9 \xff");
        return bw_respond(resp, 200, NULL, h, 1, "{}", 2);
    }
    if (ends(req->path, "/date")) {
        h[0].name = bw_str_from("Date"); h[0].value = bw_str_from("Thu, 01 Jan 1970 00:00:00 GMT");
        return bw_respond(resp, 200, NULL, h, 1, "{}", 2);
    }
    if (ends(req->path, "/global")) {
        h[0].name = bw_str_from("X-Powered-By"); h[0].value = bw_str_from("odd");
        return bw_respond(resp, 200, NULL, h, 4, "{}", 2);
    }
    if (ends(req->path, "/tabs")) {
        h[0].value = bw_str_from("a \t b");
        return bw_respond(resp, 200, NULL, h, 1, "{}", 2);
    }
    if (ends(req->path, "/trailing-space")) {
        h[0].value = bw_str_from("a ");
        return bw_respond(resp, 200, NULL, h, 1, "{}", 2);
    }
    if (ends(req->path, "/big")) {
        static char big[100000];
        memset(big, 'x', sizeof big);
        return bw_respond(resp, 200, "text/plain", NULL, 0, big, sizeof big);
    }
    if (ends(req->path, "/unknown-status"))
        return bw_respond(resp, 299, NULL, NULL, 0, "{}", 2);
    if (ends(req->path, "/null-body"))
        return bw_respond(resp, 200, NULL, NULL, 0, NULL, 0);
    return bw_respond(resp, 200, NULL, h, 4, "{\"odd\": true}", 13);
}

BW_DEFINE_PLUGIN(.name = "odd", .version = "1.0.0", .description = "odd answers",
                 .flags = BW_FLAG_THREAD_SAFE | BW_FLAG_NONBLOCKING,
                 .init = bw_init_stateless, .handle = odd_handle)
"""

CONFIG: dict[str, Any] = {
    "plugins": {"kit": {"dispatch": "inline"}},
    "endpoints": {
        "/items/{id}/echo": {"method": "GET", "runtime": {"type": "plugin", "handler": "kit"}},
        "/static": {"method": "GET", "response": {"status": 200, "body": '{"s": 1}'}},
    },
    "global_headers": {"x-powered-by": "backworks", "X-Frame-Options": "DENY"},
    "server": {"max_body_bytes": 200_000},
}


def get(target: str, *fields: str, version: str = "1.1", method: str = "GET") -> bytes:
    lines = [f"{method} {target} HTTP/{version}", "Host: test", "X-Request-Id: rq-1", *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


def post(target: str, body: bytes) -> bytes:
    head = f"POST {target} HTTP/1.1\r\nHost: test\r\nX-Request-Id: rq-2\r\n"
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


CASES: list[tuple[str, bytes]] = [
    ("echo", get("/plugins/kit/echo?x=1&y=a%26b", "X-Custom: Value")),
    ("echo, generated request id", b"GET /plugins/kit/echo HTTP/1.1\r\nHost: test\r\n\r\n"),
    ("HEAD", get("/plugins/kit/echo", method="HEAD")),
    ("http/1.0", get("/plugins/kit/echo", version="1.0")),
    ("http/1.0 keep-alive", get("/plugins/kit/echo", "Connection: keep-alive", version="1.0")),
    ("connection close", get("/plugins/kit/echo", "Connection: close")),
    ("text answer with a header", get("/plugins/kit/headers")),
    ("status 201", get("/plugins/kit/status?code=201")),
    ("status 204", get("/plugins/kit/status?code=204")),
    ("status 304", get("/plugins/kit/status?code=304")),
    ("status 503", get("/plugins/kit/status?code=503")),
    ("status 599", get("/plugins/kit/status?code=599")),
    ("status 600", get("/plugins/kit/status?code=600")),
    ("status 101", get("/plugins/kit/bad?what=interim")),
    ("failure", get("/plugins/kit/fail")),
    ("NUL in the content type", get("/plugins/kit/bad?what=nul-type")),
    ("control character in a header", get("/plugins/kit/bad?what=ctl-header")),
    ("space in a header name", get("/plugins/kit/bad?what=bad-name")),
    ("body back", post("/plugins/kit/binary", b"\x00\x01body\x00")),
    ("large body back", post("/plugins/kit/binary", b"y" * 150_000)),
    ("path parameter, utf-8", get("/items/caf%C3%A9/echo")),
    ("NUL in the path", get("/items/a%00b/echo")),
    ("non-ascii header value", get("/plugins/kit/echo", "X-N: caf\xe9")),
    ("many headers", get("/plugins/kit/echo", *(f"X-{i}: {i}" for i in range(100)))),
    ("absolute-form", get("http://test/plugins/kit/echo")),
    ("odd headers", get("/plugins/odd/plain")),
    ("quoted media type", get("/plugins/odd/quoted")),
    ("media type parameters", get("/plugins/odd/params")),
    ("no media type", get("/plugins/odd/bad-type")),
    ("non-ascii header value in the answer", get("/plugins/odd/high-value")),
    ("the plugin's Date", get("/plugins/odd/date")),
    ("a global header overridden", get("/plugins/odd/global")),
    ("tabs inside a value", get("/plugins/odd/tabs")),
    ("trailing space in a value", get("/plugins/odd/trailing-space")),
    ("an answer larger than the step's buffer", get("/plugins/odd/big")),
    ("HEAD of a large answer", get("/plugins/odd/big", method="HEAD")),
    ("a status without a name", get("/plugins/odd/unknown-status")),
    ("an empty body", get("/plugins/odd/null-body")),
    ("static", get("/static")),
]
PIPELINED = b"".join(request for _, request in CASES[:20])

_DATE = re.compile(rb"\r\nDate: [^\r]*")
_GENERATED_ID = re.compile(rb"[0-9a-f]{12}[0-9a-f]{10}")


async def raw(port: int, request: bytes) -> bytes:
    """Everything the server sends for `request` followed by a closing one (unless
    `request` closes the connection itself: an HTTP/1.0 one without keep-alive)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    closes = request.endswith(b"HTTP/1.0\r\nHost: test\r\nX-Request-Id: rq-1\r\n\r\n")
    try:
        writer.write(request if closes else request + get("/static", "Connection: close"))
        data = await asyncio.wait_for(reader.read(-1), 20)
    finally:
        writer.close()
    return _GENERATED_ID.sub(b"<id>", _DATE.sub(b"\r\nDate: <date>", data))


@pytest.fixture
async def servers(
    tmp_path: Path,
    plugins_dir: Path,
    kit: Kit,
    build_plugin: BuildPlugin,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[dict[bool, LaneTestServer]]:
    """The config served with the compiled step (True) and without it (False)."""
    monkeypatch.setenv("BACKWORKS_CACHE_DIR", str(tmp_path / "cache"))
    kit("kit")
    build_plugin(ODD, name="odd", folder=plugins_dir)
    made: dict[bool, LaneTestServer] = {}
    for compiled in (True, False):
        config = {
            **CONFIG,
            "plugin_discovery": {"enabled": True, "directories": ["./plugins"]},
            "server": {**CONFIG["server"], "compiled_step": compiled},
        }
        path = tmp_path / f"compiled-{compiled}.yaml"
        path.write_text(yaml.safe_dump(config))
        made[compiled] = LaneTestServer(create_app(load_config(path)))
    for server in made.values():
        await server.start_server()
    yield made
    for server in made.values():
        await server.close()


@pytest.mark.parametrize(
    ("case", "request_bytes"),
    [*CASES, ("pipelined", PIPELINED)],
    ids=[c for c, _ in CASES] + ["pipelined"],
)
async def test_the_compiled_step_answers_byte_for_byte_as_python(
    servers: dict[bool, LaneTestServer], case: str, request_bytes: bytes
) -> None:
    compiled = await raw(servers[True].port or 0, request_bytes)
    python = await raw(servers[False].port or 0, request_bytes)
    assert compiled.startswith(b"HTTP/1.1 "), f"{case!r}: no answer came back"
    assert compiled == python


async def test_only_the_server_that_asks_for_it_uses_the_step(
    servers: dict[bool, LaneTestServer],
) -> None:
    for compiled, server in servers.items():
        runners = server.app[HOST].runners
        snapshot = runners["kit"].snapshot()
        assert (snapshot["dispatch"], snapshot["compiled_step"]) == ("inline", compiled)


async def test_calls_the_step_rendered_are_counted_like_any_other(
    servers: dict[bool, LaneTestServer],
) -> None:
    for server in servers.values():
        await raw(server.port or 0, get("/plugins/kit/echo") * 3 + get("/plugins/kit/fail"))
    compiled = servers[True].app[HOST].runners["kit"]._step
    assert compiled is not None
    assert compiled.pending == 3, "the step rendered the three echoes itself"
    for server in servers.values():
        counters = server.app[HOST].runners["kit"].snapshot()["counters"]
        assert (counters["calls"], counters["ok"], counters["failed"]) == (4, 3, 1)
        assert counters["latency_ms"]["p50"] is not None


def test_the_environment_turns_the_step_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(step.ENV, "0")
    assert not step.enabled()
    monkeypatch.setenv(step.ENV, "1")
    assert step.enabled()
