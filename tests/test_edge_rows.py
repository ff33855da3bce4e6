"""Issue 18's tables, row by row: what a client gets at the edge, on both HTTP engines.

Every row of the issue's table, the aiohttp engine's own gaps and the verdicts of the
HTTP floor, each sent as raw bytes to a real server of each engine. Both engines read
every connection on the lane's edge, so a byte-level rule holds on both by
construction; these tests keep it so on each. The rows about memory and about other
clients (an endless field, pipelined floods) are in tests/test_hostile_clients.py,
which watches a separate server process; the rows whose verdict is "the same on both"
are compared side by side in tests/test_http_differential.py.

A refusal is the error envelope, `Connection: close`, then a lingering close: the
client reads the whole answer, then EOF, never a reset (`converse` raises on a reset).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import BuildPlugin
from tests.serving import Client, Kit, Serve
from tests.wire import Answer, closed_quietly, converse, exchange, parse

ADMIN_TOKEN = "edge-admin-t0ken"
CONFIG: dict[str, Any] = {
    "endpoints": {
        "/static": {"method": "GET", "response": {"status": 200, "body": '{"s": 1}'}},
        "/health": {"method": "GET", "response": {"status": 200, "body": '{"up": true}'}},
        "/echo": {"methods": ["POST", "PUT"], "runtime": {"type": "plugin", "handler": "kit"}},
        "/items/{id}/echo": {"method": "GET", "runtime": {"type": "plugin", "handler": "kit"}},
    },
    "admin": {"token": ADMIN_TOKEN},
}

# A plugin whose answer's Content-Type carries a quoted parameter: .../bad has a
# backslash pair, then a bare CR, another pair, then a NUL inside the quotes (a header
# no HTTP client may be sent); .../pair a valid quoted-pair (RFC 9110 5.6.4).
QUOTED_C = r"""
#include <backworks/sdk.h>

static int ends_with(bw_str s, const char *suffix) {
    size_t n = strlen(suffix);
    return s.len >= n && memcmp(s.ptr + s.len - n, suffix, n) == 0;
}

static int32_t quoted_init(const bw_host *host, const char *config, size_t len, void **state,
                           bw_response *error) {
    (void)host; (void)config; (void)len; (void)error;
    *state = NULL;
    return BW_OK;
}

static void quoted_shutdown(void *state) { (void)state; }

static int32_t quoted_handle(void *state, const bw_request *req, bw_response *resp) {
    static const char bad[] = "text/plain; a=\"\\\\\r\\\\\0x\"";
    bw_str ctype = { bad, sizeof bad - 1 };
    int32_t rc;
    (void)state;
    if (ends_with(req->path, "/pair"))
        return bw_respond(resp, 200, "text/plain; a=\"x\\y\"", NULL, 0, "ok", 2);
    rc = bw_respond(resp, 200, "text/plain", NULL, 0, "ok", 2);
    resp->content_type = ctype;
    return rc;
}

BW_DEFINE_PLUGIN(.name = "quoted", .version = "0.1.0", .description = "quoted ctype",
                 .init = quoted_init, .handle = quoted_handle, .shutdown = quoted_shutdown)
"""


@pytest.fixture(params=["lane", "aiohttp"])
def engine(request: pytest.FixtureRequest) -> str:
    """Every row holds on both engines: both serve every route used here."""
    return str(request.param)


def port_of(client: Client) -> int:
    assert client.port is not None
    return client.port


async def edge(serve: Serve, kit: Kit, **server: Any) -> int:
    """A server of CONFIG (with `server` settings) on the engine under test: its port."""
    kit("kit")
    config = json.loads(json.dumps(CONFIG))
    if server:
        config["server"] = server
    return port_of(await serve(config))


def req(line: str, *fields: str, body: bytes = b"", host: str | None = "t") -> bytes:
    """A request's bytes: `line`, a Host (unless None), `fields`, a sized `body`."""
    lines = [line, *([f"Host: {host}"] if host is not None else []), *fields]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def assert_refused(answers: list[Answer], closed: bool, status: int, code: str) -> None:
    """Exactly one answer, the envelope with `status`/`code`, `Connection: close`, EOF."""
    assert [a.status for a in answers] == [status], answers
    [answer] = answers
    error = json.loads(answer.body)["error"]
    assert set(error) == {"code", "message", "plugin", "request_id"}
    assert error["code"] == code
    assert error["request_id"] == answer.header("X-Request-Id")
    assert answer.header("Connection") == "close"
    assert closed, "the connection ends after a refusal"


async def refused(port: int, request: bytes, status: int, code: str) -> None:
    answers, closed = await exchange(port, request)
    assert_refused(answers, closed, status, code)


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A raw connection to `port`, closed however the test ends."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        await closed_quietly(writer)


def echoed(answer: Answer) -> dict[str, Any]:
    """What the kit's echo route saw: method, path, headers, body_len..."""
    assert answer.status == 200, answer
    return json.loads(answer.body)  # type: ignore[no-any-return]


# --- the table: one header field that never ends ----------------------------------------


async def test_a_field_that_never_ends_is_431_after_about_64_kib(serve: Serve, kit: Kit) -> None:
    port = await edge(serve, kit)
    async with connection(port) as (reader, writer):
        writer.write(b"GET /static HTTP/1.1\r\nHost: t\r\nX-Endless: ")
        first = asyncio.ensure_future(reader.read(1))
        sent = 0
        started = time.monotonic()
        try:
            # 64 KiB writes, each given 50 ms for an answer: the bytes sent before the
            # answer are about what the server read before it refused, not what the
            # kernel's socket buffers took in.
            while sent < 16 << 20:
                writer.write(b"a" * 65536)
                await asyncio.wait_for(writer.drain(), 10)
                sent += 65536
                done, _ = await asyncio.wait([first], timeout=0.05)
                if done:
                    break
        except (ConnectionResetError, BrokenPipeError):
            pass  # the server closed: what it wrote before is still to be read
        data = await asyncio.wait_for(first, 10) + await asyncio.wait_for(reader.read(), 10)
    assert data.startswith(b"HTTP/1.1 431 "), data[:100]
    assert json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "header_fields_too_large"
    # Refused as the bytes arrive: not after megabytes, not at the 10 s header timeout.
    assert sent <= 1 << 20, f"{sent >> 10} KiB sent before the refusal"
    assert time.monotonic() - started < 8


# --- the table: trailers ------------------------------------------------------------------


async def test_a_trailer_never_authorizes_an_admin_route(serve: Serve, kit: Kit) -> None:
    port = await edge(serve, kit)
    line = "POST /_backworks/plugins/kit/reset HTTP/1.1"
    chunked = "Transfer-Encoding: chunked"
    in_trailer = req(line, chunked)[:-2] + (
        b"\r\n0\r\nAuthorization: Bearer " + ADMIN_TOKEN.encode() + b"\r\n\r\n"
    )
    in_head = req(line, chunked, f"Authorization: Bearer {ADMIN_TOKEN}") + b"0\r\n\r\n"
    [answer], _ = await exchange(port, in_trailer)
    assert answer.status == 401, "a trailer field is not a header field (RFC 9110 6.5)"
    [answer], _ = await exchange(port, in_head)
    assert answer.status == 200, "the same token in the head is the admin's"


async def test_a_plugin_never_sees_a_trailer_as_a_header(serve: Serve, kit: Kit) -> None:
    port = await edge(serve, kit)
    request = req("POST /echo HTTP/1.1", "Transfer-Encoding: chunked")
    request += b"4\r\nwiki\r\n0\r\nX-Trailer: smuggled\r\n\r\n"
    [answer], _ = await exchange(port, request)
    seen = echoed(answer)
    assert seen["body_len"] == 4
    assert "x-trailer" not in [name.lower() for name, _ in seen["headers"]]


# --- the table: Host ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /static HTTP/1.1\r\n\r\n",
        b"GET /static HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /static HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
    ],
    ids=["no Host", "two Hosts", "the same Host twice"],
)
async def test_http_1_1_needs_exactly_one_host(
    serve: Serve, kit: Kit, request_bytes: bytes
) -> None:
    port = await edge(serve, kit)
    await refused(port, request_bytes, 400, "bad_request")


async def test_http_1_0_needs_no_host(serve: Serve, kit: Kit) -> None:
    port = await edge(serve, kit)
    [answer], _ = await exchange(port, b"GET /static HTTP/1.0\r\n\r\n")
    assert answer.status == 200


# --- the table: pipelines and Connection: close --------------------------------------------


async def test_connection_close_is_on_the_last_answer_of_a_pipeline_only(
    serve: Serve, kit: Kit
) -> None:
    port = await edge(serve, kit)
    slow = req("GET /plugins/kit/sleep?ms=300 HTTP/1.1")
    last = req("GET /static HTTP/1.1", "Connection: close")
    answers, closed = await exchange(port, slow + last)
    assert [a.status for a in answers] == [200, 200]
    assert answers[0].header("Connection") != "close", "the slow answer does not close"
    assert answers[1].header("Connection") == "close"
    assert closed


@pytest.mark.parametrize(
    "closing",
    [
        req("GET /plugins/kit/sleep?ms=200 HTTP/1.1", "Connection: close"),
        req("GET /static HTTP/1.1", "Connection: close"),
    ],
    ids=["slow", "quick"],
)
async def test_nothing_is_written_after_a_closing_answer(
    serve: Serve, kit: Kit, closing: bytes
) -> None:
    port = await edge(serve, kit)
    behind = req("GET /static HTTP/1.1") + b"garbage \x00 behind\r\n\r\n"
    data, closed = await converse(port, closing + behind)
    answers, rest = parse(data)
    assert [a.status for a in answers] == [200]
    assert answers[0].header("Connection") == "close"
    assert rest == b"", "not one byte after the closing answer"
    assert closed, "then EOF (a reset would have raised)"


# --- the table: Expect ------------------------------------------------------------------


async def read_answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One answer off `reader`: its head and its (Content-Length) body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
    body = await asyncio.wait_for(reader.readexactly(int(length[1])), 10) if length else b""
    return head, body


async def test_100_continue_waits_for_the_answers_before_it(serve: Serve, kit: Kit) -> None:
    port = await edge(serve, kit)
    async with connection(port) as (reader, writer):
        slow = req("GET /plugins/kit/sleep?ms=300 HTTP/1.1")
        expecting = req("POST /echo HTTP/1.1", "Content-Length: 4", "Expect: 100-continue")
        writer.write(slow + expecting)
        first, _ = await read_answer(reader)
        assert first.startswith(b"HTTP/1.1 200 "), "the slow answer first, not a 100 Continue"
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert interim.startswith(b"HTTP/1.1 100 ")
        writer.write(b"data")
        head, body = await read_answer(reader)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert json.loads(body)["body_len"] == 4


async def test_http_1_0_expect_is_ignored(serve: Serve, kit: Kit) -> None:
    port = await edge(serve, kit)
    head = b"POST /echo HTTP/1.0\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    # The body follows after a pause, as from a client that waits a little for a 100.
    data, _ = await converse(port, head, b"data", pause=0.3)
    assert b" 100 " not in data.split(b"\r\n", 1)[0], "no 100 Continue to an HTTP/1.0 client"
    [answer], _ = parse(data)
    assert echoed(answer)["body_len"] == 4


async def test_an_expectation_other_than_100_continue_is_417(serve: Serve, kit: Kit) -> None:
    port = await edge(serve, kit)
    request = req("POST /echo HTTP/1.1", "Content-Length: 4", "Expect: 100-nope")
    await refused(port, request, 417, "expectation_failed")


# --- the table: upgrades nobody takes, CONNECT ------------------------------------------

SMUGGLED = b"GET /plugins/kit/echo?smuggled HTTP/1.1\r\nHost: t\r\n\r\n"


async def test_an_upgrade_nobody_takes_is_an_ordinary_request_with_its_body(
    serve: Serve, kit: Kit
) -> None:
    port = await edge(serve, kit)
    request = req("POST /echo HTTP/1.1", "Connection: Upgrade", "Upgrade: x", body=SMUGGLED)
    answers, _ = await exchange(port, request + req("GET /static HTTP/1.1"))
    assert [a.status for a in answers] == [200, 200], "the POST and the GET behind it"
    assert echoed(answers[0])["body_len"] == len(SMUGGLED), "the body is the POST's"
    assert answers[1].body == b'{"s": 1}', "the body never ran as a request"


async def test_an_upgrade_to_an_operations_route_never_runs_its_body(
    serve: Serve, kit: Kit
) -> None:
    port = await edge(serve, kit)
    body = b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n"
    request = req(
        "POST /_backworks/plugins/kit/health HTTP/1.1",
        "Connection: Upgrade",
        "Upgrade: x",
        body=body,
    )
    answers, _ = await exchange(port, request + req("GET /static HTTP/1.1"))
    assert [a.status for a in answers] == [401, 200], "the admin route's, then the GET's"
    assert b"backworks_" not in answers[0].body + answers[1].body, "/metrics never ran"
    assert answers[1].body == b'{"s": 1}'


async def test_connect_is_501_and_its_body_never_runs(serve: Serve, kit: Kit) -> None:
    port = await edge(serve, kit)
    await refused(port, req("CONNECT /echo HTTP/1.1", body=SMUGGLED), 501, "not_implemented")


# --- the table: fields that must appear once --------------------------------------------


async def test_transfer_encoding_split_over_two_fields_is_400(serve: Serve, kit: Kit) -> None:
    port = await edge(serve, kit)
    request = req("POST /echo HTTP/1.1", "Transfer-Encoding: gzip", "Transfer-Encoding: chunked")
    await refused(port, request + b"4\r\nwiki\r\n0\r\n\r\n", 400, "bad_request")


SINGLE_VALUE = {
    "Content-Length": ("4", "4"),
    "Content-Type": ("text/plain", "application/json"),
    "Content-Location": ("/a", "/b"),
    "Content-Range": ("bytes 0-3/4", "bytes 0-3/8"),
    "ETag": ('"a"', '"b"'),
    "Max-Forwards": ("1", "2"),
    "Server": ("a", "b"),
    "User-Agent": ("a", "b"),
    "Authorization": ("Bearer a", "Bearer b"),
}


@pytest.mark.parametrize("name", SINGLE_VALUE)
async def test_a_single_value_field_sent_twice_is_400(serve: Serve, kit: Kit, name: str) -> None:
    port = await edge(serve, kit)
    first, second = SINGLE_VALUE[name]
    fields = [f"{name}: {first}", f"{name}: {second}"]
    if name != "Content-Length":
        fields.append("Content-Length: 4")
    await refused(port, req("POST /echo HTTP/1.1", *fields) + b"data", 400, "bad_request")


# --- the table: trailing whitespace -------------------------------------------------------


async def test_trailing_whitespace_of_a_field_value_is_stripped(serve: Serve, kit: Kit) -> None:
    port = await edge(serve, kit)
    request = req("GET /plugins/kit/echo HTTP/1.1", "X-Request-Id: abc \t", "X-Custom: v \t ")
    [answer], _ = await exchange(port, request)
    assert answer.header("X-Request-Id") == "abc", "the client's id, kept"
    headers = dict(echoed(answer)["headers"])
    assert headers["x-custom"] == "v"
    assert headers["x-request-id"] == "abc"


async def test_an_expect_with_trailing_whitespace_still_gets_100(serve: Serve, kit: Kit) -> None:
    port = await edge(serve, kit)
    async with connection(port) as (reader, writer):
        writer.write(req("POST /echo HTTP/1.1", "Content-Length: 4", "Expect: 100-continue \t"))
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert interim.startswith(b"HTTP/1.1 100 ")
        writer.write(b"data")
        head, body = await read_answer(reader)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert json.loads(body)["body_len"] == 4


# --- the table: request targets -----------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        req("GET /items/a#b/echo HTTP/1.1"),
        req("POST /echo#x HTTP/1.1", body=b"data"),
        req("GET http://t:99999/static HTTP/1.1"),
        req("GET * HTTP/1.1"),
    ],
    ids=["fragment in a path", "fragment at the end", "port out of range", "* with GET"],
)
async def test_a_target_that_is_not_a_request_target_is_400(
    serve: Serve, kit: Kit, request_bytes: bytes
) -> None:
    port = await edge(serve, kit)
    await refused(port, request_bytes, 400, "bad_request")


# --- the table: HTTP/1.0 keep-alive -------------------------------------------------------


async def test_http_1_0_keep_alive_is_honoured_and_said(serve: Serve, kit: Kit) -> None:
    port = await edge(serve, kit)
    request = b"GET /static HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    answers, closed = await exchange(port, request, request, pause=0.05)
    assert [a.status for a in answers] == [200, 200], "the connection was reused"
    assert [a.header("Connection") for a in answers] == ["keep-alive", "keep-alive"]
    assert not closed


# --- the table: operations requests in a pipeline ---------------------------------------


@pytest.mark.parametrize(
    ("behind", "body"),
    [
        ("/health", b'{"up": true}'),
        ("/static", b'{"s": 1}'),
        ("/_backworks/health", b'"status": "serving"'),
        ("/metrics", b"backworks_"),
    ],
)
async def test_requests_pipelined_behind_metrics_are_answered(
    serve: Serve, kit: Kit, behind: str, body: bytes
) -> None:
    port = await edge(serve, kit)
    pipeline = req("GET /metrics HTTP/1.1") + req(f"GET {behind} HTTP/1.1")
    answers, closed = await exchange(port, pipeline)
    assert [a.status for a in answers] == [200, 200]
    assert b"backworks_" in answers[0].body
    assert body in answers[1].body
    assert not closed, "an operations request does not end the connection"


# --- the table: a Content-Type no client may be sent ---------------------------------------


async def test_a_quoted_parameter_with_a_bare_cr_or_nul_is_the_plugins_failure(
    serve: Serve, build_plugin: BuildPlugin, kit: Kit, plugins_dir: Any
) -> None:
    build_plugin(QUOTED_C, "quoted", plugins_dir)
    port = await edge(serve, kit)
    data, _ = await converse(port, req("GET /plugins/quoted/bad HTTP/1.1"))
    assert b"\x00" not in data.split(b"\r\n\r\n", 1)[0], "no NUL in a header"
    [answer], _ = parse(data)
    assert answer.status == 502
    assert json.loads(answer.body)["error"]["code"] == "plugin_failed"
    [answer], _ = await exchange(port, req("GET /plugins/quoted/pair HTTP/1.1"))
    assert answer.status == 200, "a backslash then a VCHAR is a valid quoted-pair"
    assert answer.header("Content-Type") == 'text/plain; a="x\\y"'
    assert answer.body == b"ok"


# --- the table: a body over the limit, sent whole before reading ---------------------------


async def test_a_body_over_the_limit_sent_whole_gets_413_then_eof(serve: Serve, kit: Kit) -> None:
    port = await edge(serve, kit)  # max_body_bytes: 1 MB, the default
    body = b"x" * 2_097_152
    data, closed = await converse(port, req("POST /echo HTTP/1.1", body=body))
    answers, _ = parse(data)
    assert_refused(answers, closed, 413, "payload_too_large")


# --- the aiohttp engine's own gaps (now the edge's rules on both) --------------------------


async def test_a_head_sent_a_byte_at_a_time_gets_408_at_the_header_timeout(
    serve: Serve, kit: Kit
) -> None:
    port = await edge(serve, kit, header_timeout_ms=500)
    async with connection(port) as (reader, writer):
        answer = asyncio.ensure_future(reader.read())
        started = time.monotonic()
        try:
            for byte in b"GET /static HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 200:
                if answer.done():
                    break
                writer.write(bytes([byte]))
                await asyncio.sleep(0.05)  # the hostile client's pace, not a wait for the server
        except (ConnectionResetError, BrokenPipeError):
            pass
        data = await asyncio.wait_for(answer, 10)
        elapsed = time.monotonic() - started
    answers, _ = parse(data)
    assert_refused(answers, True, 408, "request_timeout")
    assert elapsed < 5, f"answered after {elapsed:.1f} s, the header timeout is 0.5 s"


async def test_a_body_that_stops_coming_gets_408(serve: Serve, kit: Kit) -> None:
    port = await edge(serve, kit, body_timeout_ms=300)
    request = req("POST /echo HTTP/1.1", "Content-Length: 100") + b"only part"
    await refused(port, request, 408, "request_timeout")


async def test_a_pipeline_is_answered_up_to_its_connection_close(serve: Serve, kit: Kit) -> None:
    port = await edge(serve, kit)
    pipeline = (
        req("GET /static HTTP/1.1")
        + req("GET /plugins/kit/status?code=201 HTTP/1.1", "Connection: close")
        + req("GET /static HTTP/1.1")
    )
    answers, closed = await exchange(port, pipeline)
    assert [a.status for a in answers] == [200, 201]
    assert closed


async def test_a_valid_request_before_a_malformed_one_is_answered(serve: Serve, kit: Kit) -> None:
    port = await edge(serve, kit)
    answers, closed = await exchange(
        port, req("GET /static HTTP/1.1") + b"GE\x00T / HTTP/1.1\r\n\r\n"
    )
    assert [a.status for a in answers] == [200, 400]
    assert json.loads(answers[1].body)["error"]["code"] == "bad_request"
    assert closed


async def test_requests_behind_a_bodiless_upgrade_are_answered(serve: Serve, kit: Kit) -> None:
    port = await edge(serve, kit)
    pipeline = (
        req("GET /static HTTP/1.1", "Connection: Upgrade", "Upgrade: foo")
        + req("GET /static HTTP/1.1")
        + req("GET /plugins/kit/status?code=201 HTTP/1.1")
    )
    answers, _ = await exchange(port, pipeline)
    assert [a.status for a in answers] == [200, 200, 201]


# The issue allows either clear error for HTTP/0.9 and an unknown major version: 400
# (not HTTP/1.x) or 505 (a version this server does not speak).
REFUSED_VERSION = {400: "bad_request", 505: "http_version_not_supported"}


@pytest.mark.parametrize(
    ("request_bytes", "statuses"),
    [
        (b"GET /static\r\n\r\n", (400, 505)),
        (req("GET /static HTTP/2.0"), (505,)),
        (req("GET /static HTTP/3.0"), (400, 505)),
    ],
    ids=["HTTP/0.9", "HTTP/2.0", "HTTP/3.0"],
)
async def test_an_unknown_http_version_is_refused_never_answered_in_kind(
    serve: Serve, kit: Kit, request_bytes: bytes, statuses: tuple[int, ...]
) -> None:
    port = await edge(serve, kit)
    data, closed = await converse(port, request_bytes)
    assert data.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), data[:40]
    answers, _ = parse(data)
    assert answers, data[:80]
    status = answers[0].status
    assert status in statuses, answers
    assert_refused(answers, closed, status, REFUSED_VERSION[status])


@pytest.mark.parametrize(
    "path",
    [
        "/static",
        "/plugins/kit/status?code=200",
        "/nowhere",
        "/_backworks/health",
        "/_backworks/api/state",
        "/_backworks/plugins",
        "/metrics",
    ],
)
async def test_no_answer_names_a_server_version(serve: Serve, kit: Kit, path: str) -> None:
    port = await edge(serve, kit)
    [answer], _ = await exchange(port, req(f"GET {path} HTTP/1.1"))
    server = answer.header("Server")
    assert server is None or not re.search(r"\d", server), server


async def test_the_anonymous_state_view_shows_no_other_clients_requests(
    serve: Serve, kit: Kit
) -> None:
    port = await edge(serve, kit)
    secret = req("GET /plugins/kit/echo?q=secret-path-1 HTTP/1.1", "X-Request-Id: secret-rid-1")
    [answer], _ = await exchange(port, secret)
    assert answer.status == 200
    state = req("GET /_backworks/api/state HTTP/1.1")
    admin = req("GET /_backworks/api/state HTTP/1.1", f"Authorization: Bearer {ADMIN_TOKEN}")
    [anonymous], _ = await exchange(port, state)
    [admins], _ = await exchange(port, admin)
    assert anonymous.status == admins.status == 200
    assert b"secret-rid-1" not in anonymous.body
    assert b"/plugins/kit/echo" not in anonymous.body
    assert b"secret-rid-1" in admins.body, "the admin view keeps them"
    assert re.search(rb'"\w+": [1-9]', anonymous.body), "counts, not nothing"


# --- the head limits, counted as the bytes arrive -----------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        req("GET /static?" + "q" * 8200 + " HTTP/1.1"),
        req("GET /static HTTP/1.1", "X-Long: " + "v" * 8200),
        req("GET /static HTTP/1.1", *(f"X-{i}: v" for i in range(129))),
        req("GET /static HTTP/1.1", *(f"X-{i}: " + "v" * 6000 for i in range(12))),
    ],
    ids=["request line", "one field", "129 fields", "a 72 KB head"],
)
async def test_a_head_over_its_limits_is_431(serve: Serve, kit: Kit, request_bytes: bytes) -> None:
    port = await edge(serve, kit)
    await refused(port, request_bytes, 431, "header_fields_too_large")
