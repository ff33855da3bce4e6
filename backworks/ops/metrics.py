"""GET /metrics: plugin and endpoint metrics in the Prometheus text format.

Nothing here runs per request. A custom collector reads, at scrape time, the counters
that already exist: each runner's PluginStats and breaker, its backend's workers, and
the Traffic the request middleware records. Each app gets its own CollectorRegistry,
never prometheus_client's global one, so several apps (tests, the admin listener)
never see each other's series.

Scrapes run on the event-loop thread, the only thread that writes those counters, so
a scrape reads a consistent state without a lock.

Beside our own series, prometheus_client's process and platform collectors report
`process_*` (CPU, resident memory, open fds, start time) and `python_*` (version, GC)
series, and `backworks_build_info` says which Backworks and ABI answered.

Under `--workers N` each worker also writes what this collector reads into its
prometheus_client multiprocess files, and /metrics reads all of them (ops/cluster.py):
one scrape, any worker, the whole service. The `process_*` and `python_*` series are
one per worker there, told apart by a `pid` label.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from importlib import metadata

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from backworks.abi import ABI_MAJOR, ABI_MINOR
from backworks.http.traffic import Traffic
from backworks.lifecycle.host import Host
from backworks.plugins.loading import PluginState
from backworks.runtime.breaker import CircuitState

OUTCOMES = ("ok", "failed", "timed_out", "crashed", "rejected")


def new_registry(host: Host, traffic: Traffic) -> CollectorRegistry:
    """A registry of its own for one app, reading `host` and `traffic` at scrape time,
    with this process's `process_*` and `python_*` series."""
    registry = runtime_registry()
    registry.register(BackworksCollector(host, traffic))
    return registry


def runtime_registry() -> CollectorRegistry:
    """prometheus_client's own collectors of this process: `process_*` and `python_*`.

    A registry of their own (never the global one), so a worker can also write them
    into its multiprocess files (ops/cluster.py), where the global one is not read.
    """
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def backworks_version() -> str:
    """The installed distribution's version ("unknown" when run from a bare checkout)."""
    try:
        return metadata.version("backworks")
    except metadata.PackageNotFoundError:
        return "unknown"


def add_metrics_route(
    app: web.Application, registry: CollectorRegistry, before: Callable[[], None] | None = None
) -> None:
    """Serves `registry` at GET /metrics in the Prometheus text format.

    `before` runs ahead of each scrape (a worker writes its own files first, so the
    service's figures include this worker's latest).
    """
    handler = make_aiohttp_handler(registry)
    if before is None:
        app.router.add_get("/metrics", handler)
        return

    async def scrape(request: web.Request) -> web.StreamResponse:
        before()
        return await handler(request)

    app.router.add_get("/metrics", scrape)


class BackworksCollector(Collector):
    """Turns the host's counters into Prometheus metric families at scrape time."""

    def __init__(self, host: Host, traffic: Traffic) -> None:
        self.host = host
        self.traffic = traffic

    def describe(self) -> Iterable[Metric]:
        return ()  # the series depend on the plugins loaded: nothing to check at register

    def collect(self) -> Iterator[Metric]:
        build = GaugeMetricFamily(
            "backworks_build_info",
            "The Backworks that answers (always 1): its version and the plugin ABI it hosts.",
            labels=["version", "abi"],
        )
        build.add_metric([backworks_version(), f"{ABI_MAJOR}.{ABI_MINOR}"], 1)
        yield build
        yield from self._plugins()
        yield from self._endpoints()

    def _plugins(self) -> Iterator[Metric]:
        p = "backworks_plugin_"
        info = GaugeMetricFamily(
            f"{p}info",
            "A loaded or configured plugin (always 1), with its version and ABI.",
            labels=["plugin", "version", "abi"],
        )
        ready = GaugeMetricFamily(
            f"{p}ready",
            "1 while the plugin is ready to take calls (in every worker), else 0.",
            labels=["plugin"],
        )
        calls = CounterMetricFamily(
            f"{p}calls",
            "Calls by outcome; the outcomes are disjoint (failed does not include crashed; "
            "rejected calls never reached the plugin: open circuit or no free slot).",
            labels=["plugin", "outcome"],
        )
        latency = HistogramMetricFamily(
            f"{p}call_duration_seconds",
            "Duration of the plugin's successful calls.",
            labels=["plugin"],
        )
        in_flight = GaugeMetricFamily(
            f"{p}in_flight",
            "Calls running in the plugin now, including ones whose caller gave up.",
            labels=["plugin"],
        )
        circuit = GaugeMetricFamily(
            f"{p}circuit_state",
            "1 for the circuit breaker's current state, 0 for the others (under --workers N: "
            "how many workers' breakers are in the state).",
            labels=["plugin", "state"],
        )
        opened = CounterMetricFamily(
            f"{p}circuit_opened", "Times the circuit breaker opened.", labels=["plugin"]
        )
        restarts = CounterMetricFamily(
            f"{p}worker_restarts",
            "Worker processes restarted (always 0 for a plugin running in-process).",
            labels=["plugin"],
        )
        host = self.host
        for name, plugin in sorted(host.plugins.items()):
            version = plugin.info.version if plugin.info else ""
            abi = plugin.info.abi if plugin.info else ""
            info.add_metric([name, version, abi], 1)
            runner = host.runners.get(name)
            is_ready = runner is not None and plugin.state is PluginState.READY
            ready.add_metric([name], 1 if is_ready else 0)
            if runner is None:
                continue
            s = runner.stats
            counts = (s.ok, s.failed - s.crashed, s.timed_out, s.crashed, s.rejected)
            for outcome, count in zip(OUTCOMES, counts, strict=True):
                calls.add_metric([name, outcome], count)
            latency.add_metric([name], s.histogram.cumulative(), s.histogram.sum)
            in_flight.add_metric([name], s.in_flight)
            now = runner.breaker.state
            for state in CircuitState:
                circuit.add_metric([name, state.value], 1 if state is now else 0)
            opened.add_metric([name], runner.breaker.times_opened)
            workers = runner.backend.snapshot().get("workers") or ()
            restarts.add_metric([name], sum(int(w.get("restarts") or 0) for w in workers))
        yield from (info, ready, calls, latency, in_flight, circuit, opened, restarts)

    def _endpoints(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "backworks_http_requests",
            "Requests answered, by method, route pattern (not raw path) and status.",
            labels=["method", "route", "status"],
        )
        for (method, route, status), count in sorted(self.traffic.requests.items()):
            requests.add_metric([method, route, str(status)], count)
        latency = HistogramMetricFamily(
            "backworks_http_request_duration_seconds",
            "Time from a request's arrival to its answer, by method and route pattern.",
            labels=["method", "route"],
        )
        for (method, route), histogram in sorted(self.traffic.latency.items()):
            latency.add_metric([method, route], histogram.cumulative(), histogram.sum)
        yield requests
        yield latency
