"""The mutating admin routes' token, closing a breaker, and the separate admin listener."""

from __future__ import annotations

import aiohttp
import pytest

from backworks.ops.auth import NOT_CONFIGURED
from tests.serving import Kit, Serve, error_of, free_port

TOKEN = "s3cret-t0ken"
OPEN_AFTER_ONE = {"kit": {"circuit_breaker": {"failure_threshold": 1}}}


async def test_mutating_routes_are_off_without_a_configured_token(kit: Kit, serve: Serve) -> None:
    kit("kit")
    client = await serve({})
    resp = await client.post(
        "/_backworks/plugins/kit/reset", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert resp.status == 403
    error = await error_of(resp)
    assert error["code"] == "admin_disabled"
    assert error["message"] == NOT_CONFIGURED == "admin.token is not configured"
    assert error["request_id"] == resp.headers["X-Request-Id"]


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer wrong",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        f"Basic {TOKEN}",
        f"{TOKEN}",
        "Bearer s3cret-t0kén",
    ],
)
async def test_a_missing_or_wrong_token_is_401(
    kit: Kit, serve: Serve, authorization: str | None
) -> None:
    kit("kit")
    client = await serve({"admin": {"token": TOKEN}, "plugins": OPEN_AFTER_ONE})
    await client.get("/plugins/kit/fail")  # opens the circuit
    headers = {} if authorization is None else {"Authorization": authorization}
    resp = await client.post("/_backworks/plugins/kit/reset", headers=headers)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await error_of(resp))["code"] == "unauthorized"
    plugins = await (await client.get("/_backworks/plugins")).json()
    assert plugins["plugins"][0]["circuit"] == "open", "a refused request changes nothing"


async def test_reset_closes_an_open_circuit(kit: Kit, serve: Serve) -> None:
    kit("kit")
    client = await serve({"admin": {"token": TOKEN}, "plugins": OPEN_AFTER_ONE})
    assert (await client.get("/plugins/kit/fail")).status == 502
    assert (await client.get("/plugins/kit/status?code=200")).status == 503
    resp = await client.post(
        "/_backworks/plugins/kit/reset", headers={"Authorization": f"bearer  {TOKEN}"}
    )
    assert resp.status == 200
    assert await resp.json() == {"plugin": "kit", "circuit": "closed", "was": "open"}
    assert (await client.get("/plugins/kit/status?code=200")).status == 200


async def test_reset_of_an_unknown_plugin_is_404(serve: Serve) -> None:
    client = await serve({"admin": {"token": TOKEN}})
    resp = await client.post(
        "/_backworks/plugins/ghost/reset", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert resp.status == 404
    assert (await error_of(resp))["plugin"] == "ghost"


async def test_the_token_is_checked_before_the_plugin_name(serve: Serve) -> None:
    """A caller without the token learns nothing, not even which plugins exist."""
    client = await serve({"admin": {"token": TOKEN}})
    assert (await client.post("/_backworks/plugins/ghost/reset")).status == 401


async def test_admin_port_serves_the_admin_routes_and_only_them(kit: Kit, serve: Serve) -> None:
    kit("kit")
    port = free_port()
    client = await serve(
        {
            "dashboard": {"enabled": True, "host": "127.0.0.1", "port": port},
            "admin": {"token": TOKEN},
        },
        admin_listener=True,
    )
    assert (await client.get("/plugins/kit/status?code=200")).status == 200
    admin = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{admin}/_backworks/health") as resp:
            assert resp.status == 200
        async with session.get(f"{admin}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
            assert 'backworks_plugin_calls_total{outcome="ok",plugin="kit"} 1.0' in text
        async with session.get(f"{admin}/_backworks/") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/html"
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        async with session.get(f"{admin}/_backworks/api/state", headers=bearer) as resp:
            state = await resp.json()
            assert [r["path"] for r in state["recent"]] == ["/plugins/kit/status"]
        async with session.get(f"{admin}/plugins/kit/status?code=200") as resp:
            assert resp.status == 404, "plugin endpoints stay on the main port"
            assert (await resp.json())["error"]["code"] == "not_found"
    assert (await client.get("/metrics")).status == 200, "the main port keeps /metrics"
    await client.close()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(f"{admin}/_backworks/health")


async def test_admin_port_is_not_opened_unless_asked(kit: Kit, serve: Serve) -> None:
    """Only `serve` asks for it: worker processes sharing a port must not all bind it."""
    port = free_port()
    await serve({"dashboard": {"enabled": True, "port": port}})
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(f"http://127.0.0.1:{port}/_backworks/health")


async def test_a_disabled_dashboard_leaves_metrics_and_json_on(serve: Serve) -> None:
    client = await serve({"dashboard": {"enabled": False}})
    page = await client.get("/_backworks/")
    assert page.status == 404
    assert "dashboard.enabled" in (await error_of(page))["message"]
    assert (await client.get("/_backworks/api/state")).status == 200
    assert (await client.get("/_backworks/plugins")).status == 200
    assert (await client.get("/metrics")).status == 200
