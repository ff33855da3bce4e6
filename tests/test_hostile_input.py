"""What a hostile plugin answer or client gets: our envelope, a bounded cost, nothing echoed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
import structlog
from structlog.testing import capture_logs

from backworks.http.aio.state import HOST
from backworks.logs import REDACTED, configure_logging
from tests.serving import Client, Kit, Serve, error_of, eventually


@pytest.fixture(params=["lane", "aiohttp"])
def engine(request: pytest.FixtureRequest) -> str:
    """Both HTTP engines keep these promises."""
    return str(request.param)


def port_of(client: Client) -> int:
    assert client.port is not None
    return client.port


@pytest.mark.parametrize("what", ["nul-type", "ctl-header", "bad-name", "interim"])
async def test_an_answer_http_cannot_carry_is_a_502_and_the_plugins_failure(
    kit: Kit, serve: Serve, what: str
) -> None:
    kit("kit")
    client = await serve({"plugins": {"kit": {"circuit_breaker": {"failure_threshold": 10}}}})
    with capture_logs() as logs:
        resp = await client.get(f"/plugins/kit/bad?what={what}")
    assert resp.status == 502
    assert (await error_of(resp))["code"] == "plugin_failed"
    assert "X-Injected" not in resp.headers
    runner = client.app[HOST].runners["kit"]
    assert runner.stats.failed == 1, "counted as the plugin's failure"
    assert runner.breaker.consecutive_failures == 1
    [failed] = [e for e in logs if e["event"] == "plugin_failed"]
    assert "malformed response" in failed["error"]
    [access] = [e for e in logs if e["event"] == "request"]
    assert access["status"] == 502, "never an empty reply recorded as 200"


async def test_a_good_answer_from_the_same_route_still_passes(kit: Kit, serve: Serve) -> None:
    kit("kit")
    client = await serve({})
    resp = await client.get("/plugins/kit/bad?what=none")
    assert resp.status == 200
    assert resp.headers["x-fine"] == "fine"


async def test_a_client_that_drops_mid_body_is_logged_as_gone_not_as_a_failure(
    kit: Kit, serve: Serve
) -> None:
    kit("kit")
    client = await serve(
        {
            "endpoints": {
                "/echo": {"method": "POST", "runtime": {"type": "plugin", "handler": "kit"}}
            }
        }
    )
    with capture_logs() as logs:
        _, writer = await asyncio.open_connection("127.0.0.1", port_of(client))
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nonly some")
        await writer.drain()
        await asyncio.sleep(0.1)  # the head is read: the server waits for the body
        writer.close()
        gone = await eventually(lambda: [e for e in logs if e["event"] == "client_gone"])
    assert gone[0]["status"] == 499
    assert not [e for e in logs if e.get("log_level") == "error"], "no error, no traceback"
    assert not [e for e in logs if e["event"] == "request" and e["status"] >= 500]


async def test_a_body_that_stops_coming_is_a_408(kit: Kit, serve: Serve) -> None:
    kit("kit")
    client = await serve(
        {
            "server": {"body_timeout_ms": 300, "header_timeout_ms": 300},
            "endpoints": {
                "/echo": {"method": "POST", "runtime": {"type": "plugin", "handler": "kit"}}
            },
        }
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(client))
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nonly some")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(65536), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"


@pytest.fixture
def restored_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()  # configure_logging set it up for the whole process


@pytest.mark.usefixtures("restored_logging")
def test_credentials_never_reach_a_log_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")  # writes to the stderr capsys holds now
    secret = "s3cret"
    structlog.get_logger("test").info(
        "anything",
        authorization=f"Bearer {secret}-admin-token",
        headers=[("cookie", f"session={secret}"), ("host", "example")],
        token=secret,
    )
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert "s3cret" not in json.dumps(line)
    assert line["authorization"] == REDACTED
    assert line["headers"] == [["cookie", REDACTED], ["host", "example"]]
