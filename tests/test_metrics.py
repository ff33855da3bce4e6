"""GET /metrics: what a Prometheus scrape of a real server over real C plugins reads."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from backworks.abi import Request
from backworks.config import Config
from backworks.errors import PluginCrashedError
from backworks.http.traffic import UNMATCHED, Traffic
from backworks.isolation.backend import ProcessBackend
from backworks.isolation.probe import probe
from backworks.lifecycle.host import Host
from backworks.ops.metrics import new_registry
from backworks.plugins.loading import LoadedPlugin, PluginSpec, PluginState
from backworks.runtime.breaker import CircuitBreaker
from backworks.runtime.runner import PluginRunner
from tests.conftest import BuildPlugin
from tests.serving import Client, Kit, Serve

PLUGIN_ROUTE = "/plugins/{plugin}/{tail:.*}"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample as {(name, labels): value}."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, frozenset(labels.items())]


async def scrape(client: Client) -> Samples:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    return parse(await resp.text())


async def test_plugin_calls_are_counted_by_outcome(kit: Kit, serve: Serve) -> None:
    kit("kit")
    client = await serve(
        {"plugins": {"kit": {"timeout_ms": 200, "circuit_breaker": {"failure_threshold": 50}}}}
    )
    for _ in range(3):
        assert (await client.get("/plugins/kit/status?code=200")).status == 200
    for _ in range(2):
        assert (await client.get("/plugins/kit/fail")).status == 502
    assert (await client.get("/plugins/kit/wait?ms=5000")).status == 504
    samples = await scrape(client)
    calls = "backworks_plugin_calls_total"
    assert value(samples, calls, plugin="kit", outcome="ok") == 3
    assert value(samples, calls, plugin="kit", outcome="failed") == 2
    assert value(samples, calls, plugin="kit", outcome="timed_out") == 1
    assert value(samples, calls, plugin="kit", outcome="crashed") == 0
    assert value(samples, calls, plugin="kit", outcome="rejected") == 0
    assert value(samples, "backworks_plugin_worker_restarts_total", plugin="kit") == 0
    assert value(samples, "backworks_plugin_info", plugin="kit", version="0.1.0", abi="1.0") == 1
    assert value(samples, "backworks_plugin_ready", plugin="kit") == 1


async def test_plugin_latency_histogram_counts_successful_calls(kit: Kit, serve: Serve) -> None:
    kit("kit")
    client = await serve({})
    await client.get("/plugins/kit/sleep?ms=30")
    await client.get("/plugins/kit/status?code=200")
    await client.get("/plugins/kit/fail")
    samples = await scrape(client)
    name = "backworks_plugin_call_duration_seconds"
    assert value(samples, f"{name}_count", plugin="kit") == 2
    assert value(samples, f"{name}_bucket", plugin="kit", le="+Inf") == 2
    assert value(samples, f"{name}_bucket", plugin="kit", le="0.025") == 1, "only the fast one"
    assert 0.03 <= value(samples, f"{name}_sum", plugin="kit") < 1


async def test_breaker_state_is_a_gauge_per_state(kit: Kit, serve: Serve) -> None:
    kit("kit")
    client = await serve({"plugins": {"kit": {"circuit_breaker": {"failure_threshold": 1}}}})
    assert (await client.get("/plugins/kit/fail")).status == 502
    assert (await client.get("/plugins/kit/status?code=200")).status == 503
    samples = await scrape(client)
    state = "backworks_plugin_circuit_state"
    assert value(samples, state, plugin="kit", state="open") == 1
    assert value(samples, state, plugin="kit", state="closed") == 0
    assert value(samples, state, plugin="kit", state="half_open") == 0
    assert value(samples, "backworks_plugin_circuit_opened_total", plugin="kit") == 1
    assert value(samples, "backworks_plugin_calls_total", plugin="kit", outcome="rejected") == 1


async def test_in_flight_shows_a_call_still_running(kit: Kit, serve: Serve) -> None:
    kit("kit")
    client = await serve({})
    slow = asyncio.ensure_future(client.get("/plugins/kit/sleep?ms=2000"))
    for _ in range(100):
        samples = await scrape(client)
        if value(samples, "backworks_plugin_in_flight", plugin="kit") == 1:
            break
        await asyncio.sleep(0.01)
    else:
        msg = "the running call never showed as in flight"
        raise AssertionError(msg)
    assert (await slow).status == 200
    assert value(await scrape(client), "backworks_plugin_in_flight", plugin="kit") == 0


async def test_requests_are_counted_by_route_pattern_never_raw_path(kit: Kit, serve: Serve) -> None:
    kit("kit")
    client = await serve(
        {
            "endpoints": {
                "/hello/{name}": {"method": "GET", "response": {"status": 200, "body": "{}"}},
            }
        }
    )
    for name in ("ada", "bob", "cy"):
        assert (await client.get(f"/hello/{name}")).status == 200
    await client.get("/plugins/kit/status?code=201")
    await client.post("/plugins/kit/status?code=201")
    await client.get("/nowhere/secret-token-in-path")
    await client.request("PROPFIND", "/hello/x")
    samples = await scrape(client)
    requests = "backworks_http_requests_total"
    assert value(samples, requests, method="GET", route="/hello/{name}", status="200") == 3
    assert value(samples, requests, method="GET", route=PLUGIN_ROUTE, status="201") == 1
    assert value(samples, requests, method="POST", route=PLUGIN_ROUTE, status="201") == 1
    assert value(samples, requests, method="GET", route=UNMATCHED, status="404") == 1
    assert value(samples, requests, method="other", route=UNMATCHED, status="405") == 1
    duration = "backworks_http_request_duration_seconds_count"
    assert value(samples, duration, method="GET", route="/hello/{name}") == 3
    routes = {dict(labels).get("route") for _, labels in samples}
    assert not any(r and ("ada" in r or "secret" in r) for r in routes)


async def test_admin_routes_are_counted_by_their_own_pattern(kit: Kit, serve: Serve) -> None:
    kit("kit")
    client = await serve({})
    await client.get("/_backworks/health")
    await scrape(client)
    samples = await scrape(client)
    requests = "backworks_http_requests_total"
    assert value(samples, requests, method="GET", route="/_backworks/health", status="200") == 1
    assert value(samples, requests, method="GET", route="/metrics", status="200") == 1


async def test_each_app_has_its_own_registry(kit: Kit, serve: Serve) -> None:
    kit("kit")
    first = await serve({})
    second = await serve({})
    await first.get("/plugins/kit/status?code=200")
    assert value(await scrape(first), "backworks_plugin_calls_total", plugin="kit", outcome="ok")
    calls = value(await scrape(second), "backworks_plugin_calls_total", plugin="kit", outcome="ok")
    assert calls == 0


async def test_worker_restarts_come_from_the_process_backend(
    build_plugin: BuildPlugin, tmp_path: Path
) -> None:
    """A crashed worker is respawned; the scrape reads the restart from the backend."""
    source = (Path(__file__).parent / "plugins" / "crashkit.c").read_text()
    path = build_plugin(
        source, name="crashy", folder=tmp_path / "lib", extra_flags=('-DKIT_NAME="crashy"',)
    )
    path.chmod(0o755)
    path.parent.chmod(0o755)
    spec = PluginSpec(name="crashy", path=path)
    backend = ProcessBackend(await probe(spec), spec)
    await backend.start()
    runner = PluginRunner(
        backend,
        max_concurrency=1,
        timeout_ms=3000,
        queue_timeout_ms=3000,
        breaker=CircuitBreaker(100),
    )
    try:
        with pytest.raises(PluginCrashedError):
            await runner.handle(Request("POST", "/segv"))  # not sent again: one crash
        await runner.handle(Request("GET", "/pid"))  # waits for the respawn
        host = Host(Config())
        host.runners["crashy"] = runner
        host.plugins["crashy"] = LoadedPlugin("crashy", PluginState.READY, str(path), runner.info)
        samples = parse(generate_latest(new_registry(host, Traffic())).decode())
    finally:
        await runner.close(drain_timeout=1.0)
    assert value(samples, "backworks_plugin_worker_restarts_total", plugin="crashy") == 1
    calls = "backworks_plugin_calls_total"
    assert value(samples, calls, plugin="crashy", outcome="crashed") == 1
    assert value(samples, calls, plugin="crashy", outcome="failed") == 0, "disjoint outcomes"
    assert value(samples, calls, plugin="crashy", outcome="ok") == 1


async def test_process_python_and_build_series_sit_beside_the_plugins(
    kit: Kit, serve: Serve
) -> None:
    """What a Prometheus user expects of any Python service: CPU, memory, fds, GC, version."""
    kit("kit")
    client = await serve({})
    samples = await scrape(client)
    names = {name for name, _ in samples}
    for expected in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
        "python_gc_collections_total",
    ):
        assert expected in names, expected
    assert value(samples, "process_resident_memory_bytes") > 1_000_000
    assert value(samples, "process_open_fds") >= 3
    pythons = [labels for name, labels in samples if name == "python_info"]
    assert len(pythons) == 1
    assert dict(pythons[0])["implementation"] == "CPython"
    builds = [dict(labels) for name, labels in samples if name == "backworks_build_info"]
    assert len(builds) == 1
    assert builds[0]["abi"] == "1.0"
    assert builds[0]["version"][0].isdigit(), builds[0]


async def test_latency_buckets_start_at_ten_microseconds(kit: Kit, serve: Serve) -> None:
    """A fast plugin's calls spread over buckets below 0.5 ms, so its p50 can be read."""
    kit("kit")
    client = await serve({})
    assert (await client.get("/plugins/kit/status?code=200")).status == 200
    samples = await scrape(client)
    for name, labels in (
        ("backworks_plugin_call_duration_seconds_bucket", {"plugin": "kit"}),
        (
            "backworks_http_request_duration_seconds_bucket",
            {"method": "GET", "route": PLUGIN_ROUTE},
        ),
    ):
        bounds = sorted(
            float(dict(found)["le"])
            for n, found in samples
            if n == name and all(dict(found).get(k) == v for k, v in labels.items())
        )
        assert bounds[0] == 0.00001, name
        assert sum(b < 0.0005 for b in bounds) >= 5, f"{name}: {bounds}"
        assert value(samples, name, le="+Inf", **labels) == 1
