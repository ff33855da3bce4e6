"""The configuration as the rest of Backworks sees it: frozen attrs classes.

`parse.py` builds these from `backworks.yaml`; nothing outside the config package
sees YAML or raw dicts. Defaults live on the classes themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Literal, get_args

import attrs

from backworks.names import Dispatch, Isolation

Engine = Literal["lane", "aiohttp"]
ENGINES: tuple[Engine, ...] = get_args(Engine)
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["auto", "console", "json"]
LOG_LEVELS: tuple[LogLevel, ...] = get_args(LogLevel)
LOG_FORMATS: tuple[LogFormat, ...] = get_args(LogFormat)

_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


@attrs.frozen
class DiscoveryConfig:
    """`plugin_discovery`: which folders are searched for plugin libraries, and how."""

    enabled: bool = True
    directories: tuple[Path, ...] = ()
    recursive: bool = False
    auto_mount: bool = True
    watch: bool = False


@attrs.frozen
class CircuitBreakerConfig:
    """`plugins.NAME.circuit_breaker`: when to stop calling a failing plugin, how long."""

    failure_threshold: int = 5
    recovery_timeout_ms: int = 30_000


_positive = attrs.validators.ge(1)
_optional_positive = attrs.validators.optional(_positive)


@attrs.frozen
class ProcessLimits:
    """What `isolation: process` gives a plugin: its workers, their limits and renewal.

    `max_calls_per_worker`: a worker is replaced (gracefully) after answering that
    many calls; None: never. `retry_on_crash`: calls lost with a crashed worker are
    retried even when they are not GET/HEAD (the plugin says its calls are safe to
    repeat). `standby`: one more worker is started and initialised but takes no calls:
    when a worker dies it takes the dead one's place at once (no respawn to wait for),
    and it runs the suspect of a crash alone, away from innocent calls. Off here (the
    isolation layer's neutral default); the config turns it on unless told not to.

    Valid by construction (the validators raise ValueError), so the isolation layer
    never checks them again; the config parser reports bad values with key paths.
    """

    workers: int = attrs.field(default=1, validator=_positive)
    memory_limit_mb: int | None = attrs.field(default=None, validator=_optional_positive)
    cpu_limit_ms: int | None = attrs.field(default=None, validator=_optional_positive)
    max_calls_per_worker: int | None = attrs.field(default=None, validator=_optional_positive)
    retry_on_crash: bool = False
    standby: bool = False


@attrs.frozen
class PluginConfig:
    """One plugin's settings. `path` None means "find it by name through discovery";
    `max_concurrency` None means "decide from the plugin's thread-safety flag"."""

    name: str
    enabled: bool = True
    path: Path | None = None
    sha256: str | None = None
    allow_insecure_permissions: bool = False
    # The plugin's `config` mapping as the JSON text `init` receives; it often holds
    # credentials, so it stays out of reprs (and so out of logs).
    config_json: bytes = attrs.field(default=b"{}", repr=False)
    timeout_ms: int = 10_000
    # Loading and `init` (in a worker: spawn, descriptor and init) have their own
    # budget: a busy machine may need far longer to start a plugin than to call it.
    start_timeout_ms: int = 10_000
    max_concurrency: int | None = None
    queue_timeout_ms: int = 1_000
    critical: bool = False
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()
    isolation: Isolation = "in-process"
    workers: int | None = None
    memory_limit_mb: int | None = None
    cpu_limit_ms: int | None = None
    max_calls_per_worker: int | None = None
    retry_on_crash: bool = False
    # A warm standby worker (isolation: process): one idle process per plugin.
    standby: bool = True
    dispatch: Dispatch = "auto"
    # The largest answer body the plugin may give; a larger one is refused (502).
    max_response_mb: int = 64
    # Health checks run on this schedule (0: only when an operator asks), each with
    # its own timeout; the public routes show the last result.
    health_interval_ms: int = 30_000
    health_timeout_ms: int = 2_000

    @property
    def max_response_bytes(self) -> int:
        return self.max_response_mb << 20

    @property
    def process_limits(self) -> ProcessLimits:
        """The `isolation: process` settings as one value (`workers` None means 1)."""
        return ProcessLimits(
            self.workers or 1,
            self.memory_limit_mb,
            self.cpu_limit_ms,
            self.max_calls_per_worker,
            self.retry_on_crash,
            self.standby,
        )


@attrs.frozen
class StaticResponse:
    """An endpoint's fixed `response`, served without calling any plugin."""

    status: int = 200
    body: str = ""
    content_type: str = "application/json"
    headers: Mapping[str, str] = _NO_HEADERS


@attrs.frozen
class EndpointConfig:
    """A route. Exactly one of `handler` (a plugin's name) and `response` is set."""

    path: str
    methods: tuple[str, ...] = ("GET",)
    description: str | None = None
    hooks: tuple[str, ...] = ()
    handler: str | None = None
    response: StaticResponse | None = None


@attrs.frozen
class ServerConfig:
    """`server`: where and how to listen, what a client may send, how long to drain.

    `engine`: `lane` (the plugin lane, http/lane.py; the default) or `aiohttp` (every
    request through aiohttp). The read timeouts bound how long a client may take to
    send a request's head and its body, and how long a kept-alive connection may idle.
    `inline_calls: false` runs every plugin's calls off the event loop, whatever its
    flags and `dispatch` say (the inline path is for plugins one trusts).
    `compiled_step: false` (or BACKWORKS_COMPILED_STEP=0 in the environment) makes
    inline calls without the compiled step (abi/step.py), on the pure-Python path.
    `drain_delay_ms`: after SIGTERM the server keeps serving this long while its health
    route answers 503, so a load balancer routes around it before it stops accepting;
    then calls in flight get up to `shutdown_timeout_ms`.
    `trusted_proxies`: see `http/forwarded.py`.
    `stall_timeout_ms`: a process whose event loop is held this long (an inline call
    that never returns) logs the culprit and exits with status 70 (server/stall.py);
    0 turns the bound off (a stop signal still ends a held process).
    """

    host: str = "127.0.0.1"
    port: int = 3000
    engine: Engine = "lane"
    max_body_bytes: int = 1_048_576
    header_timeout_ms: int = 10_000
    body_timeout_ms: int = 30_000
    keepalive_timeout_ms: int = 75_000
    shutdown_timeout_ms: int = 10_000
    inline_calls: bool = True  # false: no plugin is ever called on the event loop
    compiled_step: bool = True  # false: inline calls take the pure-Python path
    drain_delay_ms: int = 0
    # The proxies (addresses or CIDR networks) whose X-Forwarded-For is believed: the
    # access log's and the span's client address. From anyone else it is ignored.
    trusted_proxies: tuple[str, ...] = ()
    stall_timeout_ms: int = 3_000


@attrs.frozen
class LoggingConfig:
    """`logging`: the level, and JSON or console lines (`auto`: console on a TTY)."""

    level: LogLevel = "info"
    format: LogFormat = "auto"


@attrs.frozen
class AdminConfig:
    """`token` None turns the mutating admin routes off."""

    token: str | None = attrs.field(default=None, repr=False)


@attrs.frozen
class DashboardConfig:
    """`host`/`port` None serve the dashboard on the main server."""

    enabled: bool = False
    host: str | None = None
    port: int | None = None


@attrs.frozen
class Config:
    """A whole `backworks.yaml`: plugins, endpoints, hooks, server and operations."""

    discovery: DiscoveryConfig = DiscoveryConfig()
    plugins: Mapping[str, PluginConfig] = MappingProxyType({})
    hooks: tuple[str, ...] = ()
    endpoints: tuple[EndpointConfig, ...] = ()
    server: ServerConfig = ServerConfig()
    global_headers: Mapping[str, str] = _NO_HEADERS
    logging: LoggingConfig = LoggingConfig()
    admin: AdminConfig = AdminConfig()
    dashboard: DashboardConfig = DashboardConfig()
    name: str | None = None
    description: str | None = None
    version: str | None = None
