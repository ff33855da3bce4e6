"""The plugin lane on the wire: what it does as an HTTP/1.1 server, byte by byte."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from structlog.testing import capture_logs

from backworks.http.aio.state import HOST
from tests.serving import Client, Kit, Serve, eventually
from tests.wire import exchange

GET_HELLO = b"GET /plugins/kit/status?code=200 HTTP/1.1\r\nHost: x\r\n\r\n"


def port_of(client: Client) -> int:
    assert client.port is not None
    return client.port


async def lane(serve: Serve, kit: Kit, **server: Any) -> Client:
    kit("kit")
    config: dict[str, Any] = {
        "endpoints": {
            "/static": {"method": "GET", "response": {"status": 200, "body": '{"s": 1}'}},
            "/echo": {"method": "POST", "runtime": {"type": "plugin", "handler": "kit"}},
        },
        "global_headers": {"x-powered-by": "backworks"},
    }
    if server:
        config["server"] = server
    return await serve(config)


async def test_keep_alive_serves_many_requests_on_one_connection(serve: Serve, kit: Kit) -> None:
    client = await lane(serve, kit)
    answers, closed = await exchange(port_of(client), GET_HELLO, GET_HELLO, GET_HELLO, pause=0.05)
    assert [a.status for a in answers] == [200, 200, 200]
    assert not closed, "an HTTP/1.1 connection stays open"
    ids = {a.header("X-Request-Id") for a in answers}
    assert len(ids) == 3, "each request gets its own id"


async def test_pipelined_requests_are_answered_in_order(serve: Serve, kit: Kit) -> None:
    client = await lane(serve, kit)
    # A slow pooled call first, then quick ones: the quick answers must wait their turn.
    slow = b"GET /plugins/kit/sleep?ms=300 HTTP/1.1\r\nHost: x\r\nX-Request-Id: one\r\n\r\n"
    fast = b"GET /static HTTP/1.1\r\nHost: x\r\nX-Request-Id: two\r\n\r\n"
    last = b"GET /plugins/kit/status?code=201 HTTP/1.1\r\nHost: x\r\nX-Request-Id: three\r\n\r\n"
    answers, _ = await exchange(port_of(client), slow + fast + last)
    assert [(a.status, a.header("X-Request-Id")) for a in answers] == [
        (200, "one"),
        (200, "two"),
        (201, "three"),
    ]
    assert json.loads(answers[0].body) == {"slept": True}


async def test_a_request_split_into_many_writes_is_read_whole(serve: Serve, kit: Kit) -> None:
    client = await lane(serve, kit)
    body = b"x" * 5000
    request = (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
    chunks = [request[i : i + 7] for i in range(0, 203, 7)] + [request[203:]]
    answers, _ = await exchange(port_of(client), *chunks, pause=0.001)
    assert len(answers) == 1
    assert json.loads(answers[0].body)["body_len"] == 5000


async def test_a_chunked_body_reaches_the_plugin(serve: Serve, kit: Kit) -> None:
    client = await lane(serve, kit)
    request = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    [answer], _ = await exchange(port_of(client), request)
    assert json.loads(answer.body)["body_len"] == 11


@pytest.mark.parametrize("framing", ["sized", "chunked"])
async def test_a_body_over_the_limit_is_413_and_the_connection_closes(
    serve: Serve, kit: Kit, framing: str
) -> None:
    client = await lane(serve, kit, max_body_bytes=1000)
    if framing == "sized":
        request = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n" + b"x" * 2000
    else:
        request = (
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"3e8\r\n" + b"x" * 1000 + b"\r\n3e8\r\n" + b"x" * 1000 + b"\r\n0\r\n\r\n"
        )  # fmt: skip
    [answer], closed = await exchange(port_of(client), request)
    assert answer.status == 413
    assert json.loads(answer.body)["error"]["code"] == "payload_too_large"
    assert closed


async def test_head_answers_the_length_of_get_without_a_body(serve: Serve, kit: Kit) -> None:
    client = await lane(serve, kit)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(client))
    writer.write(b"HEAD /static HTTP/1.1\r\nHost: x\r\n\r\nGET /static HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert b"Content-Length: 8\r\n" in head
    after = await reader.readuntil(b"\r\n\r\n")
    assert after.startswith(b"HTTP/1.1 200 OK"), "the HEAD answer carried no body"
    assert await reader.readexactly(8) == b'{"s": 1}'
    writer.close()


async def test_expect_100_continue_is_answered_before_the_body(serve: Serve, kit: Kit) -> None:
    client = await lane(serve, kit)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(client))
    writer.write(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    )
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"data")
    final = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert final.startswith(b"HTTP/1.1 200 OK")
    writer.close()


@pytest.mark.parametrize(
    ("request_line", "closes"),
    [
        (b"GET /static HTTP/1.0\r\n\r\n", True),
        (b"GET /static HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", False),
        (b"GET /static HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", True),
    ],
)
async def test_connection_close_and_http_1_0(
    serve: Serve, kit: Kit, request_line: bytes, closes: bool
) -> None:
    client = await lane(serve, kit)
    [answer], closed = await exchange(port_of(client), request_line, read_timeout=1.0)
    assert answer.status == 200
    assert closed is closes
    assert (answer.header("Connection") == "close") is closes


async def test_global_headers_date_and_the_request_id_are_on_every_answer(
    serve: Serve, kit: Kit
) -> None:
    client = await lane(serve, kit)
    plain = b"GET /static HTTP/1.1\r\nHost: x\r\nX-Request-Id: mine-1\r\n\r\n"
    odd = b"GET /static HTTP/1.1\r\nHost: x\r\nX-Request-Id: not plain!\r\n\r\n"
    missing = b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"
    answers, _ = await exchange(port_of(client), plain + odd + missing)
    assert [a.status for a in answers] == [200, 200, 404]
    assert answers[0].header("X-Request-Id") == "mine-1"
    assert answers[1].header("X-Request-Id") not in (None, "not plain!")
    for answer in answers:
        assert answer.header("x-powered-by") == "backworks"
        assert (answer.header("Date") or "").endswith(" GMT")
    error = json.loads(answers[2].body)["error"]
    assert error["request_id"] == answers[2].header("X-Request-Id")


async def test_malformed_requests_get_the_envelope_without_an_echo_and_one_log_line(
    serve: Serve, kit: Kit
) -> None:
    client = await lane(serve, kit)
    with capture_logs() as logs:
        [answer], closed = await exchange(
            port_of(client), b"GE\x00T /secret-token HTTP/1.1\r\n\r\n"
        )
    assert answer.status == 400
    assert json.loads(answer.body)["error"]["code"] == "bad_request"
    assert b"secret-token" not in answer.body
    assert closed
    bad = [e for e in logs if e["event"] == "bad_request"]
    assert len(bad) == 1
    assert "exc_info" not in bad[0]
    assert "secret-token" not in json.dumps(logs, default=str)


async def test_too_many_or_too_long_header_fields_are_431(serve: Serve, kit: Kit) -> None:
    client = await lane(serve, kit)
    many = b"".join(b"X-%d: v\r\n" % i for i in range(200))
    long = b"X-Long: " + b"v" * 9000 + b"\r\n"
    for fields in (many, long):
        request = b"GET /static HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n"
        [answer], closed = await exchange(port_of(client), request)
        assert answer.status == 431
        assert closed


async def test_a_client_slow_to_send_its_head_or_body_gets_408(serve: Serve, kit: Kit) -> None:
    client = await lane(serve, kit, header_timeout_ms=300, body_timeout_ms=300)
    half_head = b"GET /static HTTP/1.1\r\nHost: x\r\n"
    [answer], closed = await exchange(port_of(client), half_head, read_timeout=10)
    assert (answer.status, closed) == (408, True)
    half_body = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly part"
    [answer], closed = await exchange(port_of(client), half_body, read_timeout=10)
    assert (answer.status, closed) == (408, True)


async def test_an_idle_kept_alive_connection_is_closed_after_its_timeout(
    serve: Serve, kit: Kit
) -> None:
    client = await lane(serve, kit, keepalive_timeout_ms=300)
    [answer], closed = await exchange(port_of(client), GET_HELLO, linger=10)
    assert answer.status == 200
    assert closed, "closed once idle past keepalive_timeout_ms"


async def test_operations_routes_are_answered_in_turn_on_the_same_connection(
    serve: Serve, kit: Kit
) -> None:
    client = await lane(serve, kit)
    request = b"GET /_backworks/health HTTP/1.1\r\nHost: x\r\n\r\n"
    # Between two plugin requests in one write: aiohttp answers the middle one (relayed
    # in memory), the connection stays the lane's, and the answers leave in order.
    answers, closed = await exchange(port_of(client), GET_HELLO + request + GET_HELLO)
    assert [a.status for a in answers] == [200, 200, 200]
    assert json.loads(answers[1].body)["status"] == "serving"
    assert answers[1].header("Connection") is None, "kept alive like any answer"
    assert not closed
    assert all(a.header("Server") in (None, "backworks") for a in answers), "no versions"


async def test_an_upgrade_nobody_takes_is_an_ordinary_request(serve: Serve, kit: Kit) -> None:
    client = await lane(serve, kit)
    request = (
        b"GET /_backworks/health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\n\r\n"
    )
    answers, _ = await exchange(port_of(client), request + GET_HELLO)
    assert [a.status for a in answers] == [200, 200], "no WebSocket here: plain answers"


async def test_a_client_that_goes_away_cancels_its_plugin_call(serve: Serve, kit: Kit) -> None:
    client = await lane(serve, kit)
    _reader, writer = await asyncio.open_connection("127.0.0.1", port_of(client))
    writer.write(b"GET /plugins/kit/wait?ms=20000 HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    runner = client.app[HOST].runners["kit"]
    await eventually(lambda: runner.stats.in_flight == 1)
    with capture_logs() as logs:
        writer.close()
        # The plugin polls its cancel word and returns long before its 20 s.
        await eventually(lambda: runner.stats.in_flight == 0, timeout=10)
    assert runner.stats.cancelled == 1
    gone = [e for e in logs if e["event"] == "client_gone"]
    assert gone
    assert gone[0]["status"] == 499
