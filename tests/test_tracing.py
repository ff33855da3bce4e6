"""OpenTelemetry traces with the `otel` extra: a span per request, hook and plugin call.

The real SDK with its in-memory exporter, real C plugins, the real app over loopback.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from structlog.testing import capture_logs

from backworks import tracing
from tests.serving import Kit, Serve

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture(params=["lane", "aiohttp"])
def engine(request: pytest.FixtureRequest) -> str:
    """Both HTTP engines trace a request the same way."""
    return str(request.param)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    assert tracing.activate(provider)
    yield exporter
    tracing.deactivate()
    provider.shutdown()


def by_name(finished: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in finished}


async def test_a_request_is_a_span_continuing_traceparent_with_a_child_per_hook_and_call(
    kit: Kit, serve: Serve, spans: InMemorySpanExporter
) -> None:
    kit("auth", thread_safe=True)
    kit("orders")
    client = await serve(
        {
            "hooks": ["auth"],
            "endpoints": {
                "/orders/{id}": {
                    "method": "GET",
                    "runtime": {"type": "plugin", "handler": "orders"},
                }
            },
        }
    )
    resp = await client.get("/orders/7", headers={"traceparent": TRACEPARENT})
    assert resp.status == 200
    echoed = dict((await resp.json())["headers"])

    found = by_name(spans.get_finished_spans())
    assert set(found) == {
        "GET /orders/{id}",
        "plugin auth on_request",
        "plugin orders handle",
        "plugin auth on_response",
    }
    server = found["GET /orders/{id}"]
    assert server.context is not None
    assert format(server.context.trace_id, "032x") == TRACE_ID, "the client's trace goes on"
    assert server.parent is not None
    assert format(server.parent.span_id, "016x") == PARENT_ID
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["http.route"] == "/orders/{id}"
    call = found["plugin orders handle"]
    assert call.parent is not None
    assert call.parent.span_id == server.context.span_id
    assert call.attributes is not None
    assert dict(call.attributes) == {
        "backworks.plugin": "orders",
        "backworks.plugin.version": "0.1.0",
        "backworks.hook": "handle",
        "backworks.dispatch": "pool",
        "backworks.outcome": "ok",
        "backworks.duration_ms": call.attributes["backworks.duration_ms"],
        "process.pid": os.getpid(),
    }
    assert float(call.attributes["backworks.duration_ms"]) > 0  # type: ignore[arg-type]
    # The plugin is handed the traceparent of its own call's span: its spans nest there.
    assert call.context is not None
    assert echoed["traceparent"] == f"00-{TRACE_ID}-{call.context.span_id:016x}-01"
    for name in ("plugin auth on_request", "plugin auth on_response"):
        assert found[name].parent is not None
        assert found[name].parent.span_id == server.context.span_id  # type: ignore[union-attr]


async def test_failed_timed_out_and_rejected_calls_are_error_spans_with_their_outcome(
    kit: Kit, serve: Serve, spans: InMemorySpanExporter
) -> None:
    kit("kit")
    client = await serve(
        {"plugins": {"kit": {"timeout_ms": 200, "circuit_breaker": {"failure_threshold": 2}}}}
    )
    assert (await client.get("/plugins/kit/fail")).status == 502
    assert (await client.get("/plugins/kit/wait?ms=2000")).status == 504
    assert (await client.get("/plugins/kit/echo")).status == 503  # the breaker is open
    calls = [s for s in spans.get_finished_spans() if s.name == "plugin kit handle"]
    assert [s.attributes["backworks.outcome"] for s in calls if s.attributes] == [
        "failed",
        "timed_out",
        "rejected",
    ]
    assert all(not s.status.is_ok for s in calls)
    servers = [s for s in spans.get_finished_spans() if s.name.startswith("GET ")]
    assert [s.attributes["http.response.status_code"] for s in servers if s.attributes] == [
        502,
        504,
        503,
    ]


async def test_without_a_configured_provider_nothing_is_traced(
    kit: Kit, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    assert not tracing.activate(), "the SDK is installed but nobody configured it"
    assert tracing.TRACER is None
    kit("kit")
    client = await serve({})
    resp = await client.get("/plugins/kit/echo", headers={"traceparent": TRACEPARENT})
    echoed = dict((await resp.json())["headers"])
    assert echoed["traceparent"] == TRACEPARENT, "handed on untouched, as any header"


async def test_the_request_span_has_the_http_semantic_convention_attributes(
    kit: Kit, serve: Serve, spans: InMemorySpanExporter
) -> None:
    kit("kit")
    client = await serve({"server": {"trusted_proxies": ["127.0.0.1"]}})
    resp = await client.get(
        "/plugins/kit/status?code=201",
        headers={"User-Agent": "probe/1.0", "X-Forwarded-For": "203.0.113.9"},
    )
    assert resp.status == 201
    (server,) = [s for s in spans.get_finished_spans() if s.kind.name == "SERVER"]
    assert server.attributes is not None
    attributes = dict(server.attributes)
    expected = {
        "http.request.method": "GET",
        "http.response.status_code": 201,
        "http.route": "/plugins/{plugin}/{tail:.*}",
        "url.scheme": "http",
        "url.path": "/plugins/kit/status",
        "server.address": "127.0.0.1",
        "server.port": client.port,
        "client.address": "203.0.113.9",
        "user_agent.original": "probe/1.0",
    }
    assert expected.items() <= attributes.items(), attributes


async def test_the_access_log_carries_the_trace_and_span_ids(
    kit: Kit, serve: Serve, spans: InMemorySpanExporter
) -> None:
    kit("kit")
    client = await serve({})
    with capture_logs() as logs:
        resp = await client.get(
            "/plugins/kit/status?code=200", headers={"traceparent": TRACEPARENT}
        )
    assert resp.status == 200
    (line,) = [e for e in logs if e["event"] == "request"]
    (server,) = [s for s in spans.get_finished_spans() if s.kind.name == "SERVER"]
    assert server.context is not None
    assert line["trace_id"] == TRACE_ID
    assert line["span_id"] == f"{server.context.span_id:016x}"
