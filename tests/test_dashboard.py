"""The dashboard page and the state JSON it polls."""

from __future__ import annotations

import base64
import hashlib
import re

from backworks.http.traffic import RECENT_REQUESTS
from tests.serving import Kit, Serve

DASHBOARD = {"dashboard": {"enabled": True}}


async def test_page_is_self_contained(serve: Serve) -> None:
    """Nothing outside the machine: no URL, no CDN, no external script or style."""
    client = await serve(dict(DASHBOARD))
    resp = await client.get("/_backworks/")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    html = await resp.text()
    for external in ("http://", "https://", "//cdn", "src=", "@import", "url("):
        assert external not in html
    assert re.findall(r'href="([^"]*)"', html) == ["data:,"], "an empty icon: no request"
    assert "innerHTML" not in html, "data reaches the DOM as textContent only"


async def test_page_policy_allows_exactly_its_inline_script_and_style(serve: Serve) -> None:
    client = await serve(dict(DASHBOARD))
    resp = await client.get("/_backworks/")
    html = await resp.text()
    policy = resp.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy
    assert "connect-src 'self'" in policy
    assert "unsafe-inline" not in policy
    for tag in ("script", "style"):
        [body] = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.DOTALL)
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert f"{tag}-src 'sha256-{digest}'" in policy


async def test_slashless_address_redirects_to_the_page(serve: Serve) -> None:
    client = await serve(dict(DASHBOARD))
    resp = await client.get("/_backworks", allow_redirects=False)
    assert resp.status == 308
    assert resp.headers["Location"] == "_backworks/"
    assert (await client.get("/_backworks")).status == 200


async def test_state_lists_plugins_endpoints_and_recent_requests(kit: Kit, serve: Serve) -> None:
    for name in ("kit", "guard", "audit"):
        kit(name)
    client = await serve(
        {
            "name": "demo",
            "hooks": ["guard"],
            "version": "1.2.3",
            "endpoints": {
                "/ping": {"method": "GET", "response": {"status": 200, "body": "{}"}},
                "/echo/{id}": {
                    "methods": ["GET", "POST"],
                    "hooks": ["audit"],
                    "runtime": {"type": "plugin", "handler": "kit"},
                },
            },
            "plugins": {"kit": {}, "off": {"enabled": False}},
        }
    )
    await client.get("/echo/1", headers={"X-Request-Id": "first"})
    await client.get("/plugins/kit/fail", headers={"X-Request-Id": "second"})
    await client.get("/ping")
    state = await (await client.get("/_backworks/api/state")).json()

    assert state["server"]["name"] == "demo"
    assert state["server"]["status"] == "serving"
    assert state["admin"] == {"token_configured": False}

    plugins = {p["name"]: p for p in state["plugins"]}
    kit_row = plugins["kit"]
    assert (kit_row["state"], kit_row["version"], kit_row["abi"]) == ("ready", "0.1.0", "1.0")
    assert kit_row["circuit"] == "closed"
    assert kit_row["counters"]["calls"] == 2
    assert kit_row["error_rate"] == 0.5
    assert set(kit_row["counters"]["latency_ms"]) == {"p50", "p95", "p99"}
    assert kit_row["last_error"]["status"] == 502
    assert kit_row["last_error"]["request_id"] == "second"
    assert plugins["off"]["state"] == "disabled"
    assert plugins["off"]["error_rate"] is None

    endpoints = {e["pattern"]: e for e in state["endpoints"]}
    assert endpoints["/ping"] == {
        "pattern": "/ping",
        "methods": ["GET"],
        "kind": "static",
        "status": 200,
        "hooks": [],
    }
    assert endpoints["/echo/{id}"] == {
        "pattern": "/echo/{id}",
        "methods": ["GET", "POST"],
        "kind": "plugin",
        "handler": "kit",
        "hooks": ["guard", "audit"],
    }
    assert endpoints["/plugins/{plugin}"] == {
        "pattern": "/plugins/{plugin}",
        "methods": ["DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT"],
        "kind": "mounted",
        "hooks": ["guard"],
    }

    recent = state["recent"]
    assert [(r["method"], r["path"], r["status"]) for r in recent] == [
        ("GET", "/ping", 200),
        ("GET", "/plugins/kit/fail", 502),
        ("GET", "/echo/1", 200),
    ], "newest first; the state request itself is not listed"
    assert recent[2]["request_id"] == "first"
    assert recent[2]["plugin"] == "kit"
    assert recent[0]["plugin"] is None
    assert all(r["duration_ms"] >= 0 and r["time"] > 0 for r in recent)


async def test_state_says_a_token_is_configured_without_showing_it(serve: Serve) -> None:
    client = await serve({"admin": {"token": "do-not-leak-me"}})
    resp = await client.get("/_backworks/api/state")
    assert (await resp.json())["admin"] == {"token_configured": True}
    assert "do-not-leak-me" not in await resp.text()


async def test_recent_requests_keep_only_the_last_hundred(serve: Serve) -> None:
    client = await serve({})
    for i in range(RECENT_REQUESTS + 20):
        await client.get(f"/missing/{i}")
    recent = (await (await client.get("/_backworks/api/state")).json())["recent"]
    assert len(recent) == RECENT_REQUESTS == 100
    assert recent[0]["path"] == f"/missing/{RECENT_REQUESTS + 19}"
    assert recent[-1]["path"] == "/missing/20"
