"""The dashboard page and the state JSON it polls."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import time
from typing import Any

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
            "admin": {"token": "t0ken"},
        }
    )
    await client.get("/echo/1", headers={"X-Request-Id": "first"})
    await client.get("/plugins/kit/fail", headers={"X-Request-Id": "second"})
    await client.get("/ping")
    admin = {"Authorization": "Bearer t0ken"}
    state = await (await client.get("/_backworks/api/state", headers=admin)).json()

    assert state["server"]["name"] == "demo"
    assert state["server"]["status"] == "serving"
    assert state["admin"] == {"token_configured": True}

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

    anonymous = await (await client.get("/_backworks/api/state")).json()
    assert anonymous["recent"] == [], "other clients' paths and request ids are not shown"
    assert anonymous["recent_counts"] == {"200": 2, "502": 1}
    hidden_kit = next(p for p in anonymous["plugins"] if p["name"] == "kit")
    assert hidden_kit["last_error"] == {
        "time": kit_row["last_error"]["time"],
        "status": 502,
    }
    assert "second" not in json.dumps(anonymous)


async def test_state_says_a_token_is_configured_without_showing_it(serve: Serve) -> None:
    client = await serve({"admin": {"token": "do-not-leak-me"}})
    resp = await client.get("/_backworks/api/state")
    assert (await resp.json())["admin"] == {"token_configured": True}
    assert "do-not-leak-me" not in await resp.text()


async def test_recent_requests_keep_only_the_last_hundred(serve: Serve) -> None:
    client = await serve({"admin": {"token": "t0ken"}})
    for i in range(RECENT_REQUESTS + 20):
        await client.get(f"/missing/{i}")
    admin = {"Authorization": "Bearer t0ken"}
    state = await (await client.get("/_backworks/api/state", headers=admin)).json()
    recent = state["recent"]
    assert len(recent) == RECENT_REQUESTS == 100
    assert recent[0]["path"] == f"/missing/{RECENT_REQUESTS + 19}"
    assert recent[-1]["path"] == "/missing/20"


async def test_series_has_a_point_per_second_with_rate_errors_latency_and_breaker(
    kit: Kit, serve: Serve
) -> None:
    kit("kit")
    client = await serve({"plugins": {"kit": {"circuit_breaker": {"failure_threshold": 2}}}})
    for _ in range(5):
        assert (await client.get("/plugins/kit/status?code=200")).status == 200
    for _ in range(2):
        await client.get("/plugins/kit/fail")
    assert (await client.get("/plugins/kit/echo")).status == 503  # rejected: breaker open

    async def charted() -> dict[str, Any] | None:
        body = await (await client.get("/_backworks/api/series")).json()
        chart = body["plugins"].get("kit")
        return chart if chart and sum(chart["rate"]) == 8 else None

    chart = None
    deadline = time.monotonic() + 10
    while chart is None:
        assert time.monotonic() < deadline, "the calls never showed in the series"
        await asyncio.sleep(0.2)
        chart = await charted()
    assert len(chart["t"]) == len(chart["rate"]) == len(chart["circuit"])
    assert chart["t"] == sorted(chart["t"])
    busy = [i for i, rate in enumerate(chart["rate"]) if rate]
    errors = sum(round(chart["error_rate"][i] * chart["rate"][i]) for i in busy)
    assert errors == 3, "two failures and one rejection"
    assert any(chart["p99"][i] is not None for i in busy)
    assert chart["circuit"][-1] == "open"
    # Asking from a later second on returns only what came after.
    later = await (await client.get(f"/_backworks/api/series?since={chart['t'][-1] + 1}")).json()
    assert all(t > chart["t"][-1] for t in later["plugins"].get("kit", {"t": []})["t"])


async def test_series_refuses_a_since_that_is_not_a_time(serve: Serve) -> None:
    client = await serve({})
    resp = await client.get("/_backworks/api/series?since=yesterday")
    assert resp.status == 400
    assert "since" in (await resp.json())["error"]["message"]
