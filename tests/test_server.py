"""End to end: real C plugins compiled into tmp_path, served by the real app over loopback."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from backworks.http.aio.state import HOST
from tests.cbuild import EXT
from tests.serving import Client, Kit, Serve, error_of, eventually


@pytest.fixture(params=["in-process", "process"])
def isolation(request: pytest.FixtureRequest) -> str:
    """Every behaviour below holds in both isolation modes."""
    return str(request.param)


@pytest.fixture(params=["lane", "aiohttp"])
def engine(request: pytest.FixtureRequest) -> str:
    """...and with both HTTP engines."""
    return str(request.param)


async def test_every_request_field_reaches_the_plugin(kit: Kit, serve: Serve) -> None:
    kit("kit")
    client = await serve(
        {
            "endpoints": {
                "/items/{id}/echo": {
                    "method": "POST",
                    "runtime": {"type": "plugin", "handler": "kit"},
                }
            },
            "plugins": {"kit": {"timeout_ms": 1234}},
        }
    )
    resp = await client.post(
        "/items/a%20b/echo?x=1&y=a%26b",
        data=b"payload",
        headers={"X-Custom": "Value", "X-Request-Id": "req-42"},
    )
    assert resp.status == 200
    echo = await resp.json()
    assert echo["method"] == "POST"
    assert echo["path"] == "/items/a b/echo"
    assert echo["query"] == "x=1&y=a%26b"
    assert echo["endpoint"] == "/items/{id}/echo"
    assert echo["params"] == [["id", "a b"]]
    assert ["x-custom", "Value"] in echo["headers"]
    assert echo["body_len"] == 7
    assert echo["request_id"] == "req-42"
    assert echo["timeout_ms"] == 1234
    assert echo["cancel_flag"] is True
    assert resp.headers["X-Request-Id"] == "req-42"


async def test_binary_body_round_trips(kit: Kit, serve: Serve) -> None:
    kit("kit")
    client = await serve(
        {
            "endpoints": {
                "/binary": {"method": "POST", "runtime": {"type": "plugin", "handler": "kit"}}
            }
        }
    )
    payload = bytes(range(256)) * 4
    resp = await client.post("/binary", data=payload)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/octet-stream"
    assert await resp.read() == payload


async def test_plugin_status_headers_and_content_type_are_copied(kit: Kit, serve: Serve) -> None:
    kit("kit")
    client = await serve({"global_headers": {"x-powered-by": "backworks"}})
    resp = await client.get("/plugins/kit/headers")
    assert resp.status == 201
    assert resp.headers["x-kit"] == "kit"
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert resp.headers["x-powered-by"] == "backworks"
    assert await resp.text() == "made"


async def test_dropped_in_library_is_served_without_yaml(kit: Kit, serve: Serve) -> None:
    kit("kit")
    client = await serve({})
    resp = await client.get("/plugins/kit")
    assert resp.status == 200
    assert (await resp.json())["endpoint"] == "/plugins/{plugin}"


async def test_static_endpoint_fills_in_now_and_request_id(serve: Serve) -> None:
    client = await serve(
        {
            "endpoints": {
                "/health": {
                    "method": "GET",
                    "response": {
                        "status": 200,
                        "headers": {"x-a": "b"},
                        "body": '{"timestamp": "{{now}}", "id": "{{request_id}}"}',
                    },
                }
            }
        }
    )
    resp = await client.get("/health")
    assert resp.status == 200
    assert resp.headers["x-a"] == "b"
    body = await resp.json()
    assert body["timestamp"].endswith("Z")
    assert body["id"] == resp.headers["X-Request-Id"]


@pytest.mark.parametrize(
    ("path", "method", "status", "code"),
    [
        ("/nowhere", "GET", 404, "not_found"),
        ("/health", "DELETE", 405, "method_not_allowed"),
        ("/plugins/kit/fail", "GET", 502, "plugin_failed"),
        ("/plugins/ghost", "GET", 404, "not_found"),
    ],
)
async def test_errors_use_the_envelope(
    kit: Kit, serve: Serve, path: str, method: str, status: int, code: str
) -> None:
    kit("kit")
    client = await serve(
        {"endpoints": {"/health": {"method": "GET", "response": {"status": 200, "body": "{}"}}}}
    )
    resp = await client.request(method, path)
    assert resp.status == status
    error = await error_of(resp)
    assert error["code"] == code
    assert error["request_id"] == resp.headers["X-Request-Id"]


async def test_plugin_failure_message_goes_to_the_log_not_the_client(
    kit: Kit, serve: Serve
) -> None:
    kit("kit")
    client = await serve({})
    with capture_logs() as logs:
        resp = await client.get("/plugins/kit/fail")
    error = await error_of(resp)
    assert "deliberate" not in error["message"]
    assert error["plugin"] == "kit"
    failures = [e for e in logs if e["event"] == "plugin_failed"]
    assert failures[0]["error"].endswith("deliberate failure from kit")
    assert failures[0]["request_id"] == error["request_id"]


async def test_body_over_max_body_bytes_is_refused(kit: Kit, serve: Serve) -> None:
    kit("kit")
    client = await serve({"server": {"max_body_bytes": 100}})
    resp = await client.post("/plugins/kit/binary", data=b"x" * 101)
    assert resp.status == 413
    assert (await error_of(resp))["code"] == "payload_too_large"


async def test_cooperative_hang_is_cancelled_at_its_timeout(kit: Kit, serve: Serve) -> None:
    kit("kit")
    client = await serve({"plugins": {"kit": {"timeout_ms": 200}}})
    loop = asyncio.get_running_loop()
    started = loop.time()
    resp = await client.get("/plugins/kit/wait?ms=5000")
    assert resp.status == 504
    assert (await error_of(resp))["code"] == "plugin_timeout"
    assert loop.time() - started < 4, "answered at its timeout, not after the 5 s wait"
    # The plugin saw the flag and returned, so its only slot is free again soon.
    deadline = loop.time() + 30
    while (await (await client.get("/_backworks/plugins")).json())["plugins"][0]["counters"][
        "in_flight"
    ]:
        assert loop.time() < deadline, "the cancelled call never returned"
        await asyncio.sleep(0.02)
    assert (await client.get("/plugins/kit/status?code=204")).status == 204


async def test_plugin_ignoring_cancellation_delays_neither_answer_nor_others(
    kit: Kit, serve: Serve, isolation: str
) -> None:
    kit("stubborn")
    kit("other")
    client = await serve({"plugins": {"stubborn": {"timeout_ms": 200, "queue_timeout_ms": 100}}})
    # A thread cannot be stopped: in-process the call runs its course (kept short, so the
    # test's end does not wait long for it); a worker is killed long before 60 s.
    sleep_ms = 1500 if isolation == "in-process" else 60_000
    hung = await client.get(f"/plugins/stubborn/sleep?ms={sleep_ms}")
    assert hung.status == 504
    after = await client.get("/plugins/stubborn/status?code=200")
    if isolation == "in-process":
        # A thread cannot be stopped: its one slot stays held by the call ...
        assert after.status == 503
        assert (await error_of(after))["code"] == "plugin_saturated"
    else:
        # ... while a worker is killed and replaced: the work really stopped, and the
        # plugin answers again well before the abandoned call would have returned.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while after.status != 200 and loop.time() < deadline:
            await asyncio.sleep(0.05)
            after = await client.get("/plugins/stubborn/status?code=200")
        assert after.status == 200
    # Another plugin answers at once either way.
    assert (await client.get("/plugins/other/status?code=200")).status == 200


async def test_non_thread_safe_plugin_never_sees_two_calls_at_once(kit: Kit, serve: Serve) -> None:
    kit("single")
    kit("multi", thread_safe=True)
    client = await serve({"plugins": {"single": {"max_concurrency": 8}}})
    await asyncio.gather(*(client.get("/plugins/single/overlap?ms=10") for _ in range(12)))
    # Long enough that the pool grows threads for them even on a busy machine.
    await asyncio.gather(*(client.get("/plugins/multi/overlap?ms=500") for _ in range(6)))
    single = await (await client.get("/plugins/single/max-overlap")).json()
    multi = await (await client.get("/plugins/multi/max-overlap")).json()
    assert single["max_overlap"] == 1
    assert multi["max_overlap"] > 1


async def _half_open(client: Client) -> None:
    """Waits (the recovery timeout) until the breaker lets a probe through."""
    deadline = asyncio.get_running_loop().time() + 30
    while (await (await client.get("/_backworks/plugins")).json())["plugins"][0][
        "circuit"
    ] != "half_open":
        assert asyncio.get_running_loop().time() < deadline, "the breaker never half-opened"
        await asyncio.sleep(0.05)


async def test_breaker_opens_half_opens_and_closes(kit: Kit, serve: Serve) -> None:
    kit("kit")
    # The recovery timeout is the time between a failed probe and the next request
    # (which must be refused): seconds, so a busy machine does not let it run out.
    client = await serve(
        {
            "plugins": {
                "kit": {"circuit_breaker": {"failure_threshold": 2, "recovery_timeout_ms": 2000}}
            }
        }
    )
    assert (await client.get("/plugins/kit/status?code=500")).status == 500, "deliberate 5xx"
    for _ in range(2):
        assert (await client.get("/plugins/kit/fail")).status == 502
    refused = await client.get("/plugins/kit/status?code=200")
    assert refused.status == 503
    assert (await error_of(refused))["code"] == "circuit_open"
    await _half_open(client)
    assert (await client.get("/plugins/kit/fail")).status == 502, "the probe fails"
    assert (await client.get("/plugins/kit/status?code=200")).status == 503, "open again"
    await _half_open(client)
    assert (await client.get("/plugins/kit/status?code=200")).status == 200, "the probe succeeds"
    plugins = await (await client.get("/_backworks/plugins")).json()
    assert plugins["plugins"][0]["circuit"] == "closed"


async def test_hooks_run_in_order_around_the_handler(kit: Kit, serve: Serve) -> None:
    for name in ("auth", "audit", "kit"):
        kit(name)
    client = await serve(
        {
            "hooks": ["auth"],
            "endpoints": {
                "/echo": {
                    "method": "GET",
                    "hooks": ["audit"],
                    "runtime": {"type": "plugin", "handler": "kit"},
                }
            },
        }
    )
    resp = await client.get("/echo")
    assert resp.status == 200
    assert resp.headers["x-hooked-by-auth"] == "yes"
    assert resp.headers["x-hooked-by-audit"] == "yes"
    denied = await client.get("/echo", headers={"x-deny": "1"})
    assert denied.status == 401
    assert "x-hooked-by-audit" not in denied.headers, "a hook that answers stops the chain"


async def test_failing_hook_fails_open_unless_critical(kit: Kit, serve: Serve) -> None:
    kit("lenient")
    kit("strict")
    kit("kit")
    endpoints = {
        "/open": {
            "method": "GET",
            "hooks": ["lenient"],
            "runtime": {"type": "plugin", "handler": "kit"},
        },
        "/closed": {
            "method": "GET",
            "hooks": ["strict"],
            "runtime": {"type": "plugin", "handler": "kit"},
        },
    }
    client = await serve({"endpoints": endpoints, "plugins": {"strict": {"critical": True}}})
    with capture_logs() as logs:
        assert (await client.get("/open", headers={"x-hook-fail": "1"})).status == 200
    assert any(e["event"] == "hook_skipped" for e in logs)
    closed = await client.get("/closed", headers={"x-hook-fail": "1"})
    assert closed.status == 503
    assert (await error_of(closed))["plugin"] == "strict"


async def test_admin_lists_plugins_with_state_counters_and_health(
    kit: Kit, serve: Serve, tmp_path: Path
) -> None:
    kit("kit")
    client = await serve(
        {"plugins": {"kit": {}, "off": {"enabled": False}}, "admin": {"token": "t0ken"}}
    )
    await client.get("/plugins/kit/status?code=200")
    operator = {"Authorization": "Bearer t0ken"}
    body = await (await client.get("/_backworks/plugins", headers=operator)).json()
    by_name = {p["name"]: p for p in body["plugins"]}
    kit_row = by_name["kit"]
    assert kit_row["state"] == "ready"
    assert kit_row["abi"] == "1.0"
    assert kit_row["circuit"] == "closed"
    assert kit_row["counters"]["calls"] == 1
    assert kit_row["counters"]["ok"] == 1
    assert set(kit_row["health"]) == {"status", "state", "at", "duration_ms", "trigger"}
    assert kit_row["path"] == str(tmp_path / "plugins" / f"libkit.{EXT}")
    assert by_name["off"]["state"] == "disabled"
    anonymous = await (await client.get("/_backworks/plugins")).json()
    assert str(tmp_path) not in str(anonymous), "files are the operator's business"

    async def checked() -> dict[str, Any]:
        rows = (await (await client.get("/_backworks/plugins")).json())["plugins"]
        health: dict[str, Any] = next(r for r in rows if r["name"] == "kit")["health"]
        return health if health["state"] != "pending" else {}

    report = await eventually(checked)  # the first scheduled check runs at start
    assert (report["status"], report["state"], report["trigger"]) == (200, "healthy", "schedule")
    assert "details" not in report, "the plugin's own words are for the admin route"
    health = await client.get("/_backworks/health")
    assert health.status == 200


async def test_failed_init_answers_503_and_only_an_operator_sees_the_reason(
    kit: Kit, serve: Serve
) -> None:
    kit("kit")
    with capture_logs() as logs:
        client = await serve(
            {"plugins": {"kit": {"config": {"fail_init": True}}}, "admin": {"token": "s3cret"}}
        )
    resp = await client.get("/plugins/kit")
    assert resp.status == 503
    error = await error_of(resp)
    assert error == {
        "code": "plugin_unavailable",
        "message": "the plugin is not available",
        "plugin": "kit",
        "request_id": resp.headers["X-Request-Id"],
    }
    anonymous = (await (await client.get("/_backworks/plugins")).json())["plugins"]
    assert anonymous[0]["state"] == "failed"
    assert "fail_init" not in str(anonymous), "the plugin's words stay with operators"
    operator = await client.get("/_backworks/plugins", headers={"Authorization": "Bearer s3cret"})
    assert "fail_init is set" in (await operator.json())["plugins"][0]["error"]
    [failed] = [e for e in logs if e["event"] == "plugin_failed_to_start"]
    assert "fail_init is set" in failed["error"]


async def test_plugin_logs_land_in_the_structured_log(kit: Kit, serve: Serve) -> None:
    kit("kit")
    client = await serve({})
    with capture_logs() as logs:
        await client.get("/plugins/kit/log")
    lines = [e for e in logs if e["event"] == "plugin_log"]
    expected = {"plugin": "kit", "message": "hello from kit", "log_level": "info"}
    assert expected.items() <= lines[0].items()
    assert lines[1]["log_level"] == "error"


async def test_access_log_has_one_line_per_request(kit: Kit, serve: Serve) -> None:
    kit("kit")
    client = await serve({})
    with capture_logs() as logs:
        resp = await client.get("/plugins/kit/status?code=202")
    lines = [e for e in logs if e["event"] == "request"]
    assert len(lines) == 1
    assert lines[0]["status"] == 202
    assert lines[0]["plugin"] == "kit"
    assert lines[0]["request_id"] == resp.headers["X-Request-Id"]
    assert lines[0]["duration_ms"] >= 0


async def test_a_world_writable_plugin_is_refused_unless_the_config_allows_it(
    kit: Kit, serve: Serve
) -> None:
    kit("loose").chmod(0o666)
    kit("strict").chmod(0o666)
    client = await serve({"plugins": {"loose": {"allow_insecure_permissions": True}}})
    assert (await client.get("/plugins/loose/status?code=200")).status == 200
    refused = await client.get("/plugins/strict/status?code=200")
    assert refused.status == 503
    assert (await error_of(refused))["message"] == "the plugin is not available"
    assert "writable by anyone" in (client.app[HOST].plugins["strict"].error or "")
