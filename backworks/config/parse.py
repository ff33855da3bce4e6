"""Parsing `backworks.yaml` into the frozen classes of model.py.

This is the only module that sees the YAML; everything else receives a `Config`. A bad
file raises one ConfigError that lists every problem with its key path. The file
shape follows the original design (`plugin_discovery`, `plugins` with `plugin_type`
and `path`, `endpoints` with `runtime`), so configs written for it load unchanged.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from backworks.config.model import (
    ENGINES,
    LOG_FORMATS,
    LOG_LEVELS,
    AdminConfig,
    CircuitBreakerConfig,
    Config,
    DashboardConfig,
    DiscoveryConfig,
    EndpointConfig,
    LoggingConfig,
    PluginConfig,
    ServerConfig,
    StaticResponse,
)
from backworks.config.reader import (
    MAX_CONFIG_BYTES,
    MISSING,
    Reader,
    interpolate,
    load_yaml,
    show,
)
from backworks.errors import ConfigError
from backworks.names import DISPATCHES, HTTP_METHODS, ISOLATIONS, is_plugin_name

CONFIG_FILE = "backworks.yaml"

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_PATH_PARAM = re.compile(r"\{([^{}]*)\}")
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Both spellings of the original design name a compiled library; that is all we load.
_PLUGIN_TYPES = ("external", "native")


# -- public API -------------------------------------------------------------------


def find_config(explicit: Path | None, cwd: Path) -> Path | None:
    """The file to load: `explicit` (relative to `cwd`), else ./backworks.yaml, else None."""
    if explicit is not None:
        return cwd / explicit
    default = cwd / CONFIG_FILE
    return default if default.is_file() else None


def load_config(path: Path, env: Mapping[str, str] | None = None) -> Config:
    """Reads and parses `path`; raises ConfigError listing every problem found."""
    source = str(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)  # never more than the bound into memory
    except OSError as e:
        raise ConfigError(source, [f"cannot read the file: {e.strerror or e}"]) from e
    if len(raw) > MAX_CONFIG_BYTES:
        msg = f"the file is larger than {MAX_CONFIG_BYTES} bytes (1 MiB), the most a config may be"
        raise ConfigError(source, [msg])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(source, [f"not UTF-8 text (byte {e.start})"]) from e
    data, problems = load_yaml(text)
    config = _parse(data, path.parent, os.environ if env is None else env, problems)
    if problems:
        raise ConfigError(source, problems)
    return config


def parse_config(
    data: object, *, source: str, base_dir: Path, env: Mapping[str, str] | None = None
) -> Config:
    """Parses already-loaded YAML data; relative paths are taken from `base_dir`."""
    problems: list[str] = []
    config = _parse(data, base_dir, os.environ if env is None else env, problems)
    if problems:
        raise ConfigError(source, problems)
    return config


def default_config(base_dir: Path) -> Config:
    """What an empty file means: discover ./plugins (under `base_dir`), all defaults."""
    return _parse(None, base_dir, {}, [])


# -- sections ---------------------------------------------------------------------


def _parse(data: object, base_dir: Path, env: Mapping[str, str], problems: list[str]) -> Config:
    top = Reader(interpolate(data, "", env, problems), "", problems)
    base_dir = base_dir.absolute()
    plugins = {name: _plugin(name, sec, base_dir) for name, sec in top.entries("plugins")}
    config = Config(
        discovery=_discovery(top.section("plugin_discovery"), base_dir),
        plugins=MappingProxyType(plugins),
        hooks=top.strings("hooks", _plugin_name_problem),
        endpoints=tuple(_endpoint(path, sec) for path, sec in top.entries("endpoints")),
        server=_server(top.section("server")),
        global_headers=MappingProxyType(top.string_map("global_headers", _header_problem)),
        logging=_logging(top.section("logging")),
        admin=_admin(top.section("admin")),
        dashboard=_dashboard(top.section("dashboard")),
        name=top.optional_text("name"),
        description=top.optional_text("description"),
        version=top.optional_text("version"),
    )
    return top.done(config)


def _discovery(sec: Reader, base_dir: Path) -> DiscoveryConfig:
    d = DiscoveryConfig()  # the class holds the defaults
    directories = sec.strings("directories", _nonempty) if sec.has("directories") else ("plugins",)
    return sec.done(
        DiscoveryConfig(
            enabled=sec.flag("enabled", d.enabled),
            directories=tuple(_resolve(base_dir, d) for d in directories),
            recursive=sec.flag("recursive", d.recursive),
            auto_mount=sec.flag("auto_mount", d.auto_mount),
            watch=sec.flag("watch", d.watch),
        )
    )


def _plugin(name: str, sec: Reader, base_dir: Path) -> PluginConfig:
    if problem := _plugin_name_problem(name):
        sec.problem(None, problem)
    plugin_type = sec.text("plugin_type", "external")
    if plugin_type not in _PLUGIN_TYPES:
        # The original design also had "builtin" plugins compiled into the server.
        msg = f"must be 'external' or 'native', a compiled library (got {show(plugin_type)})"
        sec.problem("plugin_type", msg)
    path = sec.optional_text("path")
    if path == "":
        sec.problem("path", "must not be empty (leave it out to find the plugin by name)")
    sha256 = sec.optional_text("sha256")
    if sha256 is not None and not _SHA256.fullmatch(sha256):
        sec.problem("sha256", f"must be 64 hexadecimal digits (got {show(sha256)})")
    d = PluginConfig(name)
    isolation = sec.choice("isolation", d.isolation, ISOLATIONS)
    workers = sec.optional_integer("workers")
    max_calls = sec.optional_integer("max_calls_per_worker")
    retry_on_crash = sec.flag("retry_on_crash", d.retry_on_crash)
    if isolation != "process":
        for key, given in (
            ("workers", workers is not None),
            ("max_calls_per_worker", max_calls is not None),
            ("retry_on_crash", sec.has("retry_on_crash")),
            ("standby", sec.has("standby")),
        ):
            if given:
                sec.problem(key, "only applies with isolation: process")
    return sec.done(
        PluginConfig(
            name=name,
            enabled=sec.flag("enabled", d.enabled),
            path=_resolve(base_dir, path) if path else None,
            sha256=sha256.lower() if sha256 else None,
            allow_insecure_permissions=sec.flag(
                "allow_insecure_permissions", d.allow_insecure_permissions
            ),
            config_json=_plugin_json(sec),
            timeout_ms=sec.integer("timeout_ms", d.timeout_ms),
            start_timeout_ms=sec.integer("start_timeout_ms", d.start_timeout_ms),
            max_concurrency=sec.optional_integer("max_concurrency"),
            queue_timeout_ms=sec.integer("queue_timeout_ms", d.queue_timeout_ms, low=0),
            critical=sec.flag("critical", d.critical),
            circuit_breaker=_breaker(sec.section("circuit_breaker")),
            isolation=isolation,
            workers=workers,
            memory_limit_mb=sec.optional_integer("memory_limit_mb"),
            cpu_limit_ms=sec.optional_integer("cpu_limit_ms"),
            max_calls_per_worker=max_calls,
            retry_on_crash=retry_on_crash,
            standby=sec.flag("standby", d.standby),
            dispatch=sec.choice("dispatch", d.dispatch, DISPATCHES),
            # A frame between a worker process and the host holds at most 1 GiB.
            max_response_mb=sec.integer("max_response_mb", d.max_response_mb, high=1000),
            health_interval_ms=sec.integer("health_interval_ms", d.health_interval_ms, low=0),
            health_timeout_ms=sec.integer("health_timeout_ms", d.health_timeout_ms),
        )
    )


def _plugin_json(sec: Reader) -> bytes:
    raw = sec.value("config")
    if raw is None or raw is MISSING:
        return b"{}"
    if not isinstance(raw, dict):
        sec.problem("config", f"must be a mapping (got {show(raw)})")
        return b"{}"
    return (sec.json_text("config", raw) or "{}").encode()


def _breaker(sec: Reader) -> CircuitBreakerConfig:
    d = CircuitBreakerConfig()
    return sec.done(
        CircuitBreakerConfig(
            failure_threshold=sec.integer("failure_threshold", d.failure_threshold),
            recovery_timeout_ms=sec.integer("recovery_timeout_ms", d.recovery_timeout_ms),
        )
    )


def _endpoint(path: str, sec: Reader) -> EndpointConfig:
    for problem in _route_problems(path):
        sec.problem(None, problem)
    runtime, response = sec.has("runtime"), sec.has("response")
    if runtime == response:
        sec.problem(
            None,
            "needs exactly one of 'runtime' (a plugin) and 'response' (a "
            f"fixed answer) (got {'both' if runtime else 'neither'})",
        )
    hooks = sec.strings("hooks", _plugin_name_problem)
    if hooks and response and not runtime:
        sec.problem("hooks", "only apply to endpoints with a runtime, not to a fixed response")
    return sec.done(
        EndpointConfig(
            path=path,
            methods=_methods(sec),
            description=sec.optional_text("description"),
            hooks=hooks,
            handler=_runtime(sec.section("runtime")) if runtime else None,
            response=_response(sec.section("response")) if response else None,
        )
    )


def _route_problems(path: str) -> list[str]:
    problems = []
    if not path.startswith("/"):
        problems.append("the path must start with '/'")
    if re.search(r"[\s?#]", path):
        problems.append("the path must not contain whitespace, '?' or '#'")
    if "{" in _PATH_PARAM.sub("", path) or "}" in _PATH_PARAM.sub("", path):
        problems.append("the path has an unmatched '{' or '}'")
    seen: set[str] = set()
    for param in _PATH_PARAM.findall(path):
        if not _PARAM_NAME.fullmatch(param):
            problems.append(
                f"path parameter {{{param}}} must be a name: letters, digits and "
                "'_', not starting with a digit"
            )
        elif param in seen:
            problems.append(f"path parameter {{{param}}} appears twice")
        seen.add(param)
    return problems


def _methods(sec: Reader) -> tuple[str, ...]:
    if sec.has("method") and sec.has("methods"):
        sec.problem("methods", "give either 'method' or 'methods', not both")
    single = sec.optional_text("method")
    methods = sec.strings("methods", _method_problem)
    if sec.value("methods") == []:
        sec.problem("methods", "must list at least one method")
    if single is not None and (problem := _method_problem(single)):
        sec.problem("method", problem)
        single = None
    chosen = methods or ((single,) if single else EndpointConfig("/").methods)
    return tuple(dict.fromkeys(m.upper() for m in chosen))


def _method_problem(method: str) -> str | None:
    if method.upper() in HTTP_METHODS:
        return None
    return f"must be one of {', '.join(HTTP_METHODS)} (got {show(method)})"


def _runtime(sec: Reader) -> str | None:
    kind = sec.value("type")
    if kind is MISSING:
        sec.problem("type", "is required; set it to 'plugin'")
    elif kind != "plugin":
        sec.problem(
            "type",
            f"must be 'plugin' (got {show(kind)}); the other runtimes of "
            "the original design are not supported",
        )
    handler = sec.value("handler")
    if handler is MISSING:
        problem: str | None = "is required: the name of the plugin that answers"
    else:
        problem = _plugin_name_problem(handler)
    if problem:
        sec.problem("handler", problem)
    return sec.done(handler if isinstance(handler, str) and not problem else None)


def _response(sec: Reader) -> StaticResponse:
    d = StaticResponse()
    body = sec.value("body")
    if body is MISSING or body is None:
        body = ""
    elif isinstance(body, dict | list):  # written as YAML, served as JSON
        body = sec.json_text("body", body) or ""
    elif not isinstance(body, str):
        sec.problem("body", f"must be a string, a mapping or a list (got {show(body)})")
        body = ""
    return sec.done(
        StaticResponse(
            status=sec.integer("status", d.status, low=100, high=599),
            body=body,
            content_type=sec.text("content_type", d.content_type),
            headers=MappingProxyType(sec.string_map("headers", _header_problem)),
        )
    )


def _server(sec: Reader) -> ServerConfig:
    d = ServerConfig()
    return sec.done(
        ServerConfig(
            host=sec.text("host", d.host),
            port=sec.integer("port", d.port, low=0, high=65535),
            engine=sec.choice("engine", d.engine, ENGINES),
            max_body_bytes=sec.integer("max_body_bytes", d.max_body_bytes),
            header_timeout_ms=sec.integer("header_timeout_ms", d.header_timeout_ms),
            body_timeout_ms=sec.integer("body_timeout_ms", d.body_timeout_ms),
            keepalive_timeout_ms=sec.integer("keepalive_timeout_ms", d.keepalive_timeout_ms),
            shutdown_timeout_ms=sec.integer("shutdown_timeout_ms", d.shutdown_timeout_ms, low=0),
            inline_calls=sec.flag("inline_calls", d.inline_calls),
            compiled_step=sec.flag("compiled_step", d.compiled_step),
            drain_delay_ms=sec.integer("drain_delay_ms", d.drain_delay_ms, low=0),
            trusted_proxies=sec.strings("trusted_proxies", _network_problem),
            stall_timeout_ms=sec.integer("stall_timeout_ms", d.stall_timeout_ms, low=0),
        )
    )


def _network_problem(value: str) -> str | None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return f"must be an IP address or network such as 10.0.0.0/8 (got {show(value)})"
    return None


def _logging(sec: Reader) -> LoggingConfig:
    d = LoggingConfig()
    return sec.done(
        LoggingConfig(
            level=sec.choice("level", d.level, LOG_LEVELS),
            format=sec.choice("format", d.format, LOG_FORMATS),
        )
    )


def _admin(sec: Reader) -> AdminConfig:
    # `token: ${ADMIN_TOKEN:-}` with the variable unset means "admin routes off".
    return sec.done(AdminConfig(token=sec.optional_text("token") or None))


def _dashboard(sec: Reader) -> DashboardConfig:
    d = DashboardConfig()
    return sec.done(
        DashboardConfig(
            enabled=sec.flag("enabled", d.enabled),
            host=sec.optional_text("host"),
            port=sec.optional_integer("port", low=0, high=65535),
        )
    )


# -- small checks -----------------------------------------------------------------


def _resolve(base_dir: Path, path: str) -> Path:
    # Normalised, not resolve()d: the file need not exist yet, and symlinks are
    # followed (and checked) by the loader when it opens the library.
    return Path(os.path.normpath(base_dir / Path(path).expanduser()))


def _nonempty(value: str) -> str | None:
    return None if value else "must not be empty"


def _plugin_name_problem(name: object) -> str | None:
    if is_plugin_name(name):
        return None
    return (
        f"must be a plugin name: lower-case letters, digits, '_' and '-', at most 64 "
        f"(got {show(name)})"
    )


def _header_problem(name: str, value: str) -> str | None:
    if not _HEADER_NAME.fullmatch(name):
        return f"{name!r} is not a valid header name"
    if "\r" in value or "\n" in value:
        return "a header value must not contain line breaks"
    return None
