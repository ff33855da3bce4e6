"""Health checks on a schedule: the public routes read the last result, never run plugins.

A real C plugin whose `health` sleeps as long as its config says and counts its calls,
served by the real app: polling the unauthenticated routes calls no plugin code and
stalls no call, the schedule runs with its own timeout and never queues in front of
calls, and an operator can run a check now and read the plugin's own words.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from backworks.errors import PluginSaturatedError
from backworks.http.aio.state import HOST
from backworks.runtime.runner import PluginRunner
from tests.conftest import BuildPlugin
from tests.serving import Client, Serve, eventually

HEALTHKIT = r"""
#define _POSIX_C_SOURCE 200809L /* nanosleep */
#include <backworks/sdk.h>
#include <time.h>

/* health sleeps the config's "health_ms" and reports its "health_status" with a
 * body only operators may read. Each call and check appends a letter to `order`:
 * H a health check, S /sleep?ms=N (which sleeps), B /mark. /count and /order read. */
typedef struct { long health_ms, health_status; } hk_state;
static volatile int health_calls;
static char order[4096];
static size_t order_len;

static void note(char c) { if (order_len < sizeof order - 1) order[order_len++] = c; }

static void sleep_ms(long ms) {
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

static long config_long(const char *config, const char *key, long fallback) {
    const char *at = strstr(config, key);
    return at ? atol(at + strlen(key)) : fallback;
}

static int32_t hk_init(const bw_host *host, const char *config, size_t len, void **state,
                       bw_response *error) {
    hk_state *st = (hk_state *)calloc(1, sizeof *st);
    (void)host; (void)len;
    if (!st) return bw_fail(error, "out of memory");
    st->health_ms = config_long(config, "\"health_ms\": ", 0);
    st->health_status = config_long(config, "\"health_status\": ", 200);
    *state = st;
    return BW_OK;
}

static int32_t hk_health(void *state, bw_response *report) {
    hk_state *st = (hk_state *)state;
    __sync_add_and_fetch(&health_calls, 1);
    note('H');
    sleep_ms(st->health_ms);
    return bw_respond_json(report, (int32_t)st->health_status,
                           "{\"secret\": \"s3cr3t-health-words\"}");
}

static int32_t hk_handle(void *state, const bw_request *req, bw_response *resp) {
    char json[4200], buf[32];
    (void)state;
    if (bw_str_eq(req->path, "/plugins/hk/count")) {
        snprintf(json, sizeof json, "{\"health_calls\": %d}", health_calls);
        return bw_respond_json(resp, 200, json);
    }
    if (bw_str_eq(req->path, "/plugins/hk/order")) {
        order[order_len] = 0;
        snprintf(json, sizeof json, "{\"order\": \"%s\"}", order);
        return bw_respond_json(resp, 200, json);
    }
    if (bw_str_eq(req->path, "/plugins/hk/sleep")) {
        note('S');
        sleep_ms(bw_query_get(req, "ms", buf, sizeof buf) > 0 ? atol(buf) : 100);
    } else if (bw_str_eq(req->path, "/plugins/hk/mark")) {
        note('B');
    }
    return bw_respond_json(resp, 200, "{}");
}

static void hk_shutdown(void *state) { free(state); }

BW_DEFINE_PLUGIN(.name = "hk", .version = "1.0.0", .description = "health kit",
                 .init = hk_init, .handle = hk_handle, .health = hk_health,
                 .shutdown = hk_shutdown)
"""

TOKEN = "health-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LONG = 600_000  # an interval no test outlives: the first check, at start, is the only one


@pytest.fixture
def healthkit(build_plugin: BuildPlugin, plugins_dir: Path) -> Path:
    return build_plugin(HEALTHKIT, name="hk", folder=plugins_dir)


async def serve_hk(serve: Serve, *, health: dict[str, Any], **settings: Any) -> Client:
    """Serves the health kit; `health` is its config (health_ms, health_status)."""
    plugin = {"config": health, "dispatch": "pool", **settings}
    return await serve({"plugins": {"hk": plugin}, "admin": {"token": TOKEN}})


async def health_calls(client: Client) -> int:
    resp = await client.get("/plugins/hk/count")
    assert resp.status == 200
    return int((await resp.json())["health_calls"])


async def public_report(client: Client) -> dict[str, Any]:
    rows = (await (await client.get("/_backworks/plugins")).json())["plugins"]
    report: dict[str, Any] = next(r for r in rows if r["name"] == "hk")["health"]
    return report


async def first_report(client: Client) -> dict[str, Any]:
    async def done() -> dict[str, Any]:
        report = await public_report(client)
        return report if report["state"] != "pending" else {}

    result: dict[str, Any] = await eventually(done)
    return result


def runner_of(client: Client) -> PluginRunner:
    return client.app[HOST].runners["hk"]


@pytest.mark.parametrize("isolation", ["in-process", "process"])
async def test_polling_the_public_routes_runs_no_plugin_code_and_stalls_no_call(
    healthkit: Path, serve: Serve
) -> None:
    """A 1.5 s health check polled by anyone used to hold every call for 1.5 s."""
    client = await serve_hk(
        serve, health={"health_ms": 1500}, health_interval_ms=LONG, queue_timeout_ms=300
    )
    assert (await first_report(client))["state"] == "healthy"
    assert await health_calls(client) == 1

    async def poll() -> None:
        for _ in range(10):
            for route in ("/_backworks/plugins", "/_backworks/api/state"):
                assert (await client.get(route)).status == 200
            await asyncio.sleep(0.02)

    async def call() -> list[int]:
        statuses = []
        for _ in range(20):
            statuses.append((await client.get("/plugins/hk/mark")).status)
        return statuses

    _, statuses = await asyncio.gather(poll(), call())
    assert statuses == [200] * 20, "no call waited behind a health check"
    assert await health_calls(client) == 1, "no poll ran the plugin's health"


async def test_the_schedule_checks_again_and_again(healthkit: Path, serve: Serve) -> None:
    client = await serve_hk(serve, health={}, health_interval_ms=50)
    await eventually(lambda: _at_least(client, 4))
    report = await public_report(client)
    assert (report["status"], report["state"], report["trigger"]) == (200, "healthy", "schedule")


async def _at_least(client: Client, checks: int) -> bool:
    return await health_calls(client) >= checks


async def test_the_public_routes_show_status_and_time_never_the_plugins_words(
    healthkit: Path, serve: Serve
) -> None:
    client = await serve_hk(serve, health={"health_status": 503}, health_interval_ms=LONG)
    report = await first_report(client)
    assert (report["status"], report["state"]) == (503, "unhealthy")
    assert 0 < report["at"] <= time.time()
    assert set(report) == {"status", "state", "at", "duration_ms", "trigger"}
    for route in ("/_backworks/plugins", "/_backworks/api/state"):
        text = await (await client.get(route)).text()
        assert "s3cr3t" not in text, route


async def test_the_admin_route_checks_now_and_shows_the_plugins_words(
    healthkit: Path, serve: Serve
) -> None:
    client = await serve_hk(serve, health={"health_status": 429}, health_interval_ms=LONG)
    await first_report(client)
    refused = await client.post("/_backworks/plugins/hk/health")
    assert refused.status == 401
    assert await health_calls(client) == 1

    resp = await client.post("/_backworks/plugins/hk/health", headers=AUTH)
    assert resp.status == 200
    body = await resp.json()
    assert body["plugin"] == "hk"
    report = body["health"]
    assert (report["status"], report["state"], report["trigger"]) == (429, "degraded", "admin")
    assert report["details"] == {"secret": "s3cr3t-health-words"}
    assert report["error"] is None
    assert await health_calls(client) == 2
    assert (await public_report(client))["trigger"] == "admin", "it is the last result now"

    unknown = await client.post("/_backworks/plugins/nope/health", headers=AUTH)
    assert unknown.status == 404


async def test_a_slow_health_check_times_out_without_holding_the_route(
    healthkit: Path, serve: Serve
) -> None:
    """The plugin's health takes 3 s; the check gives it 0.2 s, and says so."""
    client = await serve_hk(
        serve, health={"health_ms": 3000}, health_interval_ms=0, health_timeout_ms=200
    )
    started = time.monotonic()
    resp = await client.post("/_backworks/plugins/hk/health", headers=AUTH)
    elapsed = time.monotonic() - started
    report = (await resp.json())["health"]
    assert (report["status"], report["state"]) == (503, "timed_out")
    assert report["error"] == "health check did not return within 200 ms"
    assert elapsed < 2.5, "the route answered when the check's own timeout ran out"
    assert (await public_report(client))["state"] == "timed_out"


async def test_a_scheduled_slow_check_is_recorded_as_timed_out(
    healthkit: Path, serve: Serve
) -> None:
    client = await serve_hk(
        serve, health={"health_ms": 3000}, health_interval_ms=LONG, health_timeout_ms=200
    )
    report = await first_report(client)
    assert (report["state"], report["trigger"]) == ("timed_out", "schedule")
    assert report["duration_ms"] < 2500, "recorded when its timeout ran out, not when it returned"


async def test_a_scheduled_check_never_queues_in_front_of_calls(
    healthkit: Path, serve: Serve
) -> None:
    """While a call runs, the schedule's check neither runs nor waits in the queue: a
    call that arrives meanwhile is served first, and the check runs once all is idle."""
    client = await serve_hk(serve, health={}, health_interval_ms=100, queue_timeout_ms=10_000)
    runner = runner_of(client)
    await eventually(lambda: _at_least(client, 1))
    slow = asyncio.ensure_future(client.get("/plugins/hk/sleep?ms=1500"))
    await eventually(lambda: runner.gate.active == 1)
    with pytest.raises(PluginSaturatedError, match="busy"):
        await runner.health(5.0, wait=False)
    queued = asyncio.ensure_future(client.get("/plugins/hk/mark"))
    await eventually(lambda: len(runner.gate._waiters) == 1)  # it waits for the slow call
    assert (await slow).status == 200
    assert (await queued).status == 200
    before = await health_calls(client)
    await eventually(lambda: _at_least(client, before + 1))
    order = (await (await client.get("/plugins/hk/order")).json())["order"]
    after_slow = order[order.rindex("S") :]
    assert after_slow.index("B") < after_slow.index("H"), order
