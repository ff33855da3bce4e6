"""The access log: one line per request with what an operator filters and joins on."""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from backworks.http.forwarded import ClientAddress
from tests.serving import Kit, Serve

PLUGIN_ROUTE = "/plugins/{plugin}/{tail:.*}"


@pytest.fixture(params=["lane", "aiohttp"])
def engine(request: pytest.FixtureRequest) -> str:
    """Both HTTP engines write the same line."""
    return str(request.param)


async def one_line(client: Any, path: str, **options: Any) -> dict[str, Any]:
    with capture_logs() as logs:
        resp = await client.request(options.pop("method", "GET"), path, **options)
        await resp.read()
    (line,) = [e for e in logs if e["event"] == "request"]
    assert line["request_id"] == resp.headers["X-Request-Id"]
    return dict(line)


async def test_a_line_names_route_client_agent_and_bytes(kit: Kit, serve: Serve) -> None:
    kit("kit")
    client = await serve({})
    line = await one_line(
        client,
        "/plugins/kit/echo",
        method="POST",
        data=b"x" * 300,
        headers={"User-Agent": "curl/8.5", "X-Forwarded-For": "198.51.100.7"},
    )
    assert line["route"] == PLUGIN_ROUTE
    assert line["path"] == "/plugins/kit/echo"
    assert line["client"] == "127.0.0.1", "X-Forwarded-For from an untrusted peer is ignored"
    assert line["user_agent"] == "curl/8.5"
    assert line["bytes_in"] == 300
    assert line["bytes_out"] > 100  # the echo of the request, as JSON
    assert "trace_id" not in line, "no ids without tracing"


async def test_a_trusted_proxy_names_the_client(kit: Kit, serve: Serve) -> None:
    kit("kit")
    client = await serve({"server": {"trusted_proxies": ["127.0.0.0/8", "10.0.0.0/8"]}})
    line = await one_line(
        client,
        "/plugins/kit/status?code=204",
        headers={"X-Forwarded-For": "6.6.6.6, 203.0.113.5, 10.1.2.3"},
    )
    assert line["client"] == "203.0.113.5", "the first hop from the right that is no proxy"
    assert line["bytes_out"] == 0
    unmatched = await one_line(client, "/nowhere")
    assert (unmatched["route"], unmatched["status"]) == ("<unmatched>", 404)


def test_forwarded_for_is_believed_only_from_a_trusted_peer() -> None:
    resolve = ClientAddress(["10.0.0.0/8", "::1"]).resolve
    assert resolve("10.0.0.2", "192.0.2.1") == "192.0.2.1"
    assert resolve("::1", "192.0.2.1, 10.9.9.9") == "192.0.2.1"
    assert resolve("192.0.2.50", "1.2.3.4") == "192.0.2.50", "an untrusted peer"
    assert resolve("10.0.0.2", "10.0.0.3, 10.0.0.4") == "10.0.0.3", "all proxies: leftmost"
    assert resolve("10.0.0.2", "not-an-ip") == "not-an-ip"
    assert resolve("10.0.0.2", None) == "10.0.0.2"
    assert ClientAddress().resolve("10.0.0.2", "192.0.2.1") == "10.0.0.2", "none trusted"
    assert resolve(None, "192.0.2.1") is None


async def test_a_bad_trusted_proxy_is_a_config_error_with_its_key(kit: Kit, serve: Serve) -> None:
    from backworks.errors import ConfigError

    with pytest.raises(ConfigError, match=r"server\.trusted_proxies\[1\]: must be an IP"):
        await serve({"server": {"trusted_proxies": ["10.0.0.0/8", "proxy.local"]}})
