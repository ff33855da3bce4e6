"""OpenTelemetry traces, when the `otel` extra is installed and configured; nothing otherwise.

`TRACER` is None unless `activate` found a tracer provider: then every request is a
server span that continues the incoming W3C `traceparent`, and every hook and plugin
call a child span (plugin, version, dispatch, outcome, duration, worker pid) whose own
`traceparent` the plugin receives in its request headers, so its spans join the trace.

The callers check `tracing.TRACER is None` before anything else: without the extra, or
with it but unconfigured, a request pays one module attribute read per hook. Only this
module imports opentelemetry, and only inside `activate`.

Configured means: a tracer provider set for the process (by `opentelemetry-instrument`
or by code embedding Backworks), or the standard `OTEL_TRACES_EXPORTER` variable
(`console`, or `otlp` with the `opentelemetry-exporter-otlp` package) naming an
exporter, with `OTEL_SERVICE_NAME` (default `backworks`).

The console exporter writes one JSON object per span and line, to stdout or to the
file `BACKWORKS_SPANS_FILE` names: never to stderr, which is the log's stream
(logs.py), so neither stream mixes the two.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import structlog

from backworks.errors import (
    CircuitOpenError,
    PluginCrashedError,
    PluginSaturatedError,
    PluginTimeoutError,
)

log = structlog.get_logger("backworks.tracing")

TRACER: Any = None  # an opentelemetry Tracer while tracing is on
_api: Any = None  # the opentelemetry modules, imported by `activate`


def activate(provider: Any = None) -> bool:
    """Turns tracing on with `provider`, else the process's configured one; False if none.

    Call it in the process that serves (after a fork: a worker sets up its own).
    """
    global TRACER, _api
    try:
        from opentelemetry import context, propagate, trace
    except ImportError:
        return False
    if provider is None:
        provider = trace.get_tracer_provider()
        if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
            provider = _provider_from_environment()
            if provider is None:
                return False
    _api = _Api(trace, context, propagate)
    TRACER = provider.get_tracer("backworks")
    log.info("tracing_on", provider=type(provider).__name__)
    return True


def deactivate() -> None:
    """Turns tracing off (the spans already started still end)."""
    global TRACER
    TRACER = None


class _Api(NamedTuple):
    trace: Any
    context: Any
    propagate: Any


def _provider_from_environment() -> Any:
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter_name in ("", "none"):
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    exporter: Any
    if exporter_name == "console":
        exporter = ConsoleSpanExporter(out=_spans_stream(), formatter=_one_line)
    elif exporter_name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            log.warning(
                "tracing_off",
                reason="OTEL_TRACES_EXPORTER=otlp needs the opentelemetry-exporter-otlp package",
            )
            return None
        exporter = OTLPSpanExporter()
    else:
        log.warning("tracing_off", reason=f"unknown OTEL_TRACES_EXPORTER {exporter_name!r}")
        return None
    service = os.environ.get("OTEL_SERVICE_NAME", "backworks")
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _spans_stream() -> Any:
    path = os.environ.get("BACKWORKS_SPANS_FILE")
    if not path:
        return sys.stdout
    # Line-buffered and appended to: the workers of `--workers N` share the file, and
    # one write per line keeps their spans whole.
    return Path(path).open("a", buffering=1, encoding="utf-8")  # open for the process


def _one_line(span: Any) -> str:
    return str(span.to_json(indent=None)) + "\n"


# -- the request span (the HTTP path) ---------------------------------------------------


def request_started(
    method: str,
    path: str,
    headers: Mapping[str, str],
    *,
    client_address: str | None = None,
    scheme: str = "http",
) -> tuple[Any, ...]:
    """Starts a request's server span, continuing its `traceparent`; makes it current.

    It carries OpenTelemetry's HTTP server attributes: method, scheme, path, the Host
    header's name and port, `client_address` (the peer, or whom a trusted proxy names),
    the user agent; the route and status come with `request_finished`.
    """
    api = _api
    parent = api.propagate.extract(headers)
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "url.scheme": scheme,
        "url.path": path,
        "process.pid": os.getpid(),
    }
    host = headers.get("host")
    if host:
        name, _, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
        if name and port.isdigit():
            attributes["server.address"], attributes["server.port"] = name, int(port)
        else:
            attributes["server.address"] = host
    if client_address:
        attributes["client.address"] = client_address
    agent = headers.get("user-agent")
    if agent:
        attributes["user_agent.original"] = agent
    span = TRACER.start_span(
        method,  # named by its route once it is known, never by its raw path
        context=parent,
        kind=api.trace.SpanKind.SERVER,
        attributes=attributes,
    )
    token = api.context.attach(api.trace.set_span_in_context(span, parent))
    return span, token, method


def ids(started: tuple[Any, ...]) -> tuple[str, str]:
    """The (trace id, span id) of `request_started`'s span, as hex, for the access log."""
    context = started[0].get_span_context()
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def request_finished(
    started: tuple[Any, ...], status: int, request_id: str, route: str | None
) -> None:
    """Ends the span of `request_started` with the answer's status."""
    span, token, method = started
    span.set_attribute("http.response.status_code", status)
    span.set_attribute("backworks.request_id", request_id)
    if route:
        span.set_attribute("http.route", route)
        span.update_name(f"{method} {route}")
    if status >= 500:
        span.set_status(_api.trace.Status(_api.trace.StatusCode.ERROR))
    span.end()
    _api.context.detach(token)


# -- a span per hook and plugin call (the runner) ----------------------------------------


async def plugin_call(
    runner: Any,
    hook: str,
    call: Callable[..., Awaitable[Any]],
    start: Any,
    req: Any,
    *rest: Any,
) -> Any:
    """Runs the runner's `call(start, hook, (req, *rest))` in a child span of the request's.

    The plugin gets the span's `traceparent` in `req`'s headers.
    """
    api = _api
    info = runner.info
    with TRACER.start_as_current_span(
        f"plugin {runner.name} {hook}",
        kind=api.trace.SpanKind.INTERNAL,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        carrier: dict[str, str] = {}
        api.propagate.inject(carrier)
        # The plugin sees this call's context, not the client's: its spans nest here.
        kept = tuple((n, v) for n, v in req.headers if n not in carrier)
        req = req._replace(headers=kept + tuple(carrier.items()))
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await call(start, hook, (req, *rest))
        except BaseException as e:
            outcome = _outcome(e)
            span.set_status(api.trace.Status(api.trace.StatusCode.ERROR, outcome))
            raise
        finally:
            span.set_attributes(
                {
                    "backworks.plugin": runner.name,
                    "backworks.plugin.version": info.version,
                    "backworks.hook": hook,
                    "backworks.dispatch": runner.dispatch,
                    "backworks.outcome": outcome,
                    "backworks.duration_ms": round((time.perf_counter() - started) * 1000, 3),
                    "process.pid": os.getpid(),
                }
            )


def _outcome(error: BaseException) -> str:
    if isinstance(error, PluginTimeoutError):
        return "timed_out"
    if isinstance(error, CircuitOpenError | PluginSaturatedError):
        return "rejected"
    if isinstance(error, PluginCrashedError):
        return "crashed"
    if isinstance(error, asyncio.CancelledError):
        return "cancelled"
    return "failed"
