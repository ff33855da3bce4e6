from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import pytest

from backworks.config import (
    AdminConfig,
    CircuitBreakerConfig,
    Config,
    DashboardConfig,
    DiscoveryConfig,
    EndpointConfig,
    LoggingConfig,
    PluginConfig,
    ProcessLimits,
    ServerConfig,
    StaticResponse,
    default_config,
    find_config,
    load_config,
    parse_config,
)
from backworks.errors import ConfigError

FULL_EXAMPLE = """
plugin_discovery: {enabled: true, directories: ["./plugins"], recursive: false, auto_mount: true, watch: false}
plugins:
  weather:
    enabled: true
    plugin_type: external
    path: ./plugins/libweather_plugin.so
    sha256: "ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789"
    allow_insecure_permissions: false
    config: {api_key: "${WEATHER_KEY}", units: metric}
    timeout_ms: 2000
    start_timeout_ms: 15000
    max_concurrency: 8
    queue_timeout_ms: 1000
    critical: false
    circuit_breaker: {failure_threshold: 5, recovery_timeout_ms: 30000}
    isolation: process
    workers: 1
    memory_limit_mb: 512
    cpu_limit_ms: 1000
    max_calls_per_worker: 10000
    retry_on_crash: true
    dispatch: auto
    max_response_mb: 32
    health_interval_ms: 10000
    health_timeout_ms: 500
hooks: [auth]
endpoints:
  "/weather/{city}":
    method: "GET"
    description: "Weather for a city"
    hooks: [audit]
    runtime: {type: plugin, handler: weather}
  "/health":
    method: "GET"
    response: {status: 200, headers: {x-a: b}, content_type: "application/json", body: '{"status": "healthy", "timestamp": "{{now}}"}'}
server: {host: "127.0.0.1", port: 3000, max_body_bytes: 1048576, shutdown_timeout_ms: 10000}
global_headers: {x-powered-by: backworks}
logging: {level: info, format: auto}
admin: {token: "${ADMIN_TOKEN:-}"}
dashboard: {enabled: true, host: null, port: null}
name: "my api"
description: "the example"
version: "1.0"
"""  # noqa: E501

# The YAML of the original design document (seeds/004), as it was written there.
SEED_EXAMPLE = """
# Plugin discovery
plugin_discovery:
  enabled: true
  directories:
    - "./plugins"
    - "./external_plugins"

# Explicit plugin configuration
plugins:
  my-plugin:
    enabled: true
    plugin_type: "external"
    path: "./plugins/libmy_plugin.dylib"
    config:
      api_key: "your_config_here"

endpoints:
  "/api/custom":
    method: "GET"
    runtime:
      type: "plugin"
      handler: "my-plugin"
"""


def load(tmp_path: Path, text: str, env: Mapping[str, str] | None = None) -> Config:
    path = tmp_path / "backworks.yaml"
    path.write_text(textwrap.dedent(text))
    return load_config(path, env={} if env is None else env)


def problems(tmp_path: Path, text: str, env: Mapping[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, env)
    return caught.value.problems


def test_the_full_example_parses_into_the_expected_objects(tmp_path: Path) -> None:
    config = load(tmp_path, FULL_EXAMPLE, env={"WEATHER_KEY": "k-123"})

    assert config == Config(
        discovery=DiscoveryConfig(directories=(tmp_path / "plugins",)),
        plugins=MappingProxyType(
            {
                "weather": PluginConfig(
                    name="weather",
                    path=tmp_path / "plugins" / "libweather_plugin.so",
                    sha256="abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789",
                    config_json=b'{"api_key": "k-123", "units": "metric"}',
                    timeout_ms=2000,
                    start_timeout_ms=15_000,
                    max_concurrency=8,
                    circuit_breaker=CircuitBreakerConfig(5, 30_000),
                    isolation="process",
                    workers=1,
                    memory_limit_mb=512,
                    cpu_limit_ms=1000,
                    max_response_mb=32,
                    health_interval_ms=10_000,
                    health_timeout_ms=500,
                    max_calls_per_worker=10_000,
                    retry_on_crash=True,
                )
            }
        ),
        hooks=("auth",),
        endpoints=(
            EndpointConfig(
                path="/weather/{city}",
                methods=("GET",),
                description="Weather for a city",
                hooks=("audit",),
                handler="weather",
            ),
            EndpointConfig(
                path="/health",
                response=StaticResponse(
                    status=200,
                    body='{"status": "healthy", "timestamp": "{{now}}"}',
                    content_type="application/json",
                    headers=MappingProxyType({"x-a": "b"}),
                ),
            ),
        ),
        server=ServerConfig(host="127.0.0.1", port=3000),
        global_headers=MappingProxyType({"x-powered-by": "backworks"}),
        logging=LoggingConfig(level="info", format="auto"),
        admin=AdminConfig(token=None),
        dashboard=DashboardConfig(enabled=True),
        name="my api",
        description="the example",
        version="1.0",
    )


def test_the_original_designs_yaml_parses_as_written(tmp_path: Path) -> None:
    config = load(tmp_path, SEED_EXAMPLE)

    assert config.discovery.directories == (tmp_path / "plugins", tmp_path / "external_plugins")
    plugin = config.plugins["my-plugin"]
    assert plugin.path == tmp_path / "plugins" / "libmy_plugin.dylib"
    assert json.loads(plugin.config_json) == {"api_key": "your_config_here"}
    (endpoint,) = config.endpoints
    assert (endpoint.path, endpoint.methods, endpoint.handler) == (
        "/api/custom",
        ("GET",),
        "my-plugin",
    )


def test_an_empty_file_is_the_default_config(tmp_path: Path) -> None:
    assert load(tmp_path, "") == default_config(tmp_path)
    assert load(tmp_path, "# only a comment\n") == default_config(tmp_path)


def test_the_default_config_discovers_the_plugins_folder_beside_the_file(tmp_path: Path) -> None:
    config = default_config(tmp_path)

    assert config.discovery == DiscoveryConfig(directories=(tmp_path / "plugins",))
    assert config.plugins == {}
    assert config.endpoints == ()
    assert config.server == ServerConfig()


def test_a_plugin_with_no_settings_gets_every_default(tmp_path: Path) -> None:
    config = load(tmp_path, "plugins:\n  weather:\n")

    assert config.plugins["weather"] == PluginConfig(name="weather")
    assert config.plugins["weather"].timeout_ms == 10_000
    assert config.plugins["weather"].max_concurrency is None
    assert config.plugins["weather"].queue_timeout_ms == 1000


def test_plugins_and_endpoints_cannot_be_changed_after_parsing(tmp_path: Path) -> None:
    config = load(tmp_path, SEED_EXAMPLE)

    with pytest.raises(TypeError):
        config.plugins["other"] = PluginConfig(name="other")  # type: ignore[index]
    assert isinstance(config.endpoints, tuple)


def test_endpoints_keep_the_order_of_the_file(tmp_path: Path) -> None:
    paths = ["/z", "/a", "/m/{id}", "/b"]
    text = "endpoints:\n" + "".join(f'  "{p}": {{response: {{body: ""}}}}\n' for p in paths)

    assert [e.path for e in load(tmp_path, text).endpoints] == paths


# -- interpolation --------------------------------------------------------------------


def test_a_set_variable_is_substituted_in_string_values(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        'server: {host: "${HOST}"}\nglobal_headers: {x-env: "pre-${STAGE}-post"}',
        env={"HOST": "0.0.0.0", "STAGE": "prod"},
    )

    assert config.server.host == "0.0.0.0"
    assert config.global_headers == {"x-env": "pre-prod-post"}


def test_a_default_is_used_when_the_variable_is_unset_or_empty(tmp_path: Path) -> None:
    text = 'server: {host: "${HOST:-localhost}"}\nname: "${NAME:-fallback}"'

    config = load(tmp_path, text, env={"NAME": ""})

    assert config.server.host == "localhost"
    assert config.name == "fallback"


def test_a_missing_variable_without_a_default_names_the_key_and_the_variable(
    tmp_path: Path,
) -> None:
    text = 'plugins:\n  weather:\n    config: {api_key: "${WEATHER_KEY}"}'

    assert problems(tmp_path, text) == [
        "plugins.weather.config.api_key: environment variable 'WEATHER_KEY' is not set "
        "(write ${WEATHER_KEY:-default} to give a default)"
    ]


def test_a_doubled_dollar_escapes_a_literal_reference(tmp_path: Path) -> None:
    config = load(tmp_path, 'name: "cost: $${PRICE} and ${X}"', env={"X": "x"})

    assert config.name == "cost: ${PRICE} and x"


def test_a_malformed_reference_is_a_problem(tmp_path: Path) -> None:
    (problem,) = problems(tmp_path, 'name: "${not closed"')

    assert problem.startswith("name: malformed reference in '${not closed'")


def test_keys_are_not_interpolated(tmp_path: Path) -> None:
    config = load(tmp_path, 'plugins: {p: {config: {"${A}": "${A}"}}}', env={"A": "a"})

    assert json.loads(config.plugins["p"].config_json) == {"${A}": "a"}


def test_a_whole_value_reference_may_fill_a_number_or_a_flag(tmp_path: Path) -> None:
    text = "server: {port: '${PORT:-8080}'}\ndashboard: {enabled: '${DASH}'}"

    config = load(tmp_path, text, env={"DASH": "true"})

    assert config.server.port == 8080
    assert config.dashboard.enabled is True


def test_an_admin_token_from_an_unset_variable_turns_admin_off(tmp_path: Path) -> None:
    text = 'admin: {token: "${ADMIN_TOKEN:-}"}'

    value = "from-the-environment"
    assert load(tmp_path, text).admin.token is None
    assert load(tmp_path, text, env={"ADMIN_TOKEN": value}).admin.token == value
    assert value not in repr(load(tmp_path, text, env={"ADMIN_TOKEN": value}))


# -- paths ----------------------------------------------------------------------------


def test_relative_paths_are_resolved_against_the_config_files_folder(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    text = """
    plugin_discovery: {directories: [plugins, ../shared, /opt/plugins]}
    plugins:
      a: {path: lib/liba.so}
      b: {path: /usr/lib/libb.so}
    """

    config = load(folder, text)

    assert config.discovery.directories == (
        folder / "plugins",
        tmp_path / "shared",
        Path("/opt/plugins"),
    )
    assert config.plugins["a"].path == folder / "lib" / "liba.so"
    assert config.plugins["b"].path == Path("/usr/lib/libb.so")
    assert all(d.is_absolute() for d in config.discovery.directories)


def test_parse_config_resolves_against_the_given_base_dir(tmp_path: Path) -> None:
    data = {"plugins": {"a": {"path": "liba.so"}}}

    config = parse_config(data, source="test", base_dir=tmp_path, env={})

    assert config.plugins["a"].path == tmp_path / "liba.so"


# -- problems -------------------------------------------------------------------------


def test_every_problem_is_listed_at_once_with_its_key_path(tmp_path: Path) -> None:
    text = """
    plugins:
      weather:
        timeout_ms: -3
        critical: "yes"
        max_concurrency: 0
        sha256: abc
        isolation: thread
        plugin_type: builtin
        config: {when: 2024-01-01}
      Bad_Name: {}
    hooks: [auth, 3]
    endpoints:
      /a:
        method: FETCH
        runtime: {type: javascript, handler: a}
    server: {port: 70000}
    logging: {level: verbose}
    version: 1.0
    """

    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)

    assert caught.value.source == str(tmp_path / "backworks.yaml")
    assert caught.value.problems == [
        "plugins.weather.plugin_type: must be 'external' or 'native', a compiled library "
        "(got 'builtin')",
        "plugins.weather.sha256: must be 64 hexadecimal digits (got 'abc')",
        "plugins.weather.isolation: must be one of 'in-process', 'process' (got 'thread')",
        "plugins.weather.config.when: must be JSON data (got a date); quote it",
        "plugins.weather.timeout_ms: must be a positive integer (got -3)",
        "plugins.weather.max_concurrency: must be a positive integer or null (got 0)",
        "plugins.weather.critical: must be true or false (got 'yes')",
        "plugins.Bad_Name: must be a plugin name: lower-case letters, digits, '_' and '-', "
        "at most 64 (got 'Bad_Name')",
        "hooks[1]: must be a string (got 3)",
        """endpoints["/a"].method: must be one of GET, HEAD, POST, PUT, PATCH, DELETE, """
        "OPTIONS (got 'FETCH')",
        """endpoints["/a"].runtime.type: must be 'plugin' (got 'javascript'); the other """
        "runtimes of the original design are not supported",
        "server.port: must be an integer from 0 to 65535 (got 70000)",
        "logging.level: must be one of 'debug', 'info', 'warning', 'error' (got 'verbose')",
        "version: must be a string or null (got 1.0; quote it)",
    ]


def test_an_unknown_key_is_a_problem_with_a_did_you_mean_hint(tmp_path: Path) -> None:
    text = "plugins:\n  weather: {timeout: 5}\nendpoint: {}\nserver: {colour: red}"

    assert problems(tmp_path, text) == [
        "plugins.weather.timeout: unknown key (did you mean 'timeout_ms'?)",
        "server.colour: unknown key (expected one of 'host', 'port', 'engine', 'max_body_bytes', "
        "'header_timeout_ms', 'body_timeout_ms', 'keepalive_timeout_ms', 'shutdown_timeout_ms', "
        "'inline_calls', 'compiled_step', 'drain_delay_ms', 'trusted_proxies',"
        " 'stall_timeout_ms')",
        "endpoint: unknown key (did you mean 'endpoints'?)",
    ]


@pytest.mark.parametrize(
    ("yaml_value", "expected"),
    [
        ("true", "must be a positive integer (got true)"),
        ("'2000'", "must be a positive integer (got '2000')"),
        ("1.5", "must be a positive integer (got 1.5)"),
        ("null", "must be a positive integer (got null)"),
    ],
)
def test_types_are_strict_for_integers(tmp_path: Path, yaml_value: str, expected: str) -> None:
    text = f"plugins:\n  weather: {{timeout_ms: {yaml_value}}}"

    assert problems(tmp_path, text) == [f"plugins.weather.timeout_ms: {expected}"]


def test_a_number_is_not_a_flag_and_a_flag_is_not_a_string(tmp_path: Path) -> None:
    text = "plugins:\n  weather: {enabled: 1}\nserver: {host: true}"

    assert problems(tmp_path, text) == [
        "plugins.weather.enabled: must be true or false (got 1)",
        "server.host: must be a string (got true; quote it)",
    ]


def test_the_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    assert problems(tmp_path, "- a\n- b\n") == ["top level: must be a mapping (got a list)"]


def test_duplicate_yaml_keys_are_reported_with_their_lines(tmp_path: Path) -> None:
    text = """\
    plugins:
      weather: {timeout_ms: 1}
      weather: {timeout_ms: 2}
    endpoints:
      /a: {response: {body: x, body: y}}
    """

    assert problems(tmp_path, text) == [
        "plugins.weather: duplicate key on line 3 (first on line 2); "
        "YAML would silently keep only the last",
        """endpoints["/a"].response.body: duplicate key on line 5 (first on line 5); """
        "YAML would silently keep only the last",
    ]


def test_a_yaml_syntax_error_names_the_file_and_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, "server:\n  host: [a, b\n  port: 3\n")

    assert caught.value.source == str(tmp_path / "backworks.yaml")
    (problem,) = caught.value.problems
    assert problem.startswith("line 3, column 7: invalid YAML:")
    assert str(tmp_path / "backworks.yaml") in str(caught.value)


def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path / "missing.yaml")


# -- bounds: size, aliases, depth -----------------------------------------------------


def alias_bomb(levels: int) -> str:
    """A "billion laughs": each level is nine aliases of the one below (9**levels)."""
    lines = ["lol0: &lol0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"lol{i}: &lol{i} [{', '.join([f'*lol{i - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


def refusal(tmp_path: Path, text: str) -> str:
    """The one problem a refused file gives; the error names the file."""
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    assert caught.value.source == str(tmp_path / "backworks.yaml")
    (problem,) = caught.value.problems
    return problem


def test_an_alias_bomb_is_refused_while_it_is_read(tmp_path: Path) -> None:
    assert refusal(tmp_path, alias_bomb(20)) == (
        "line 6, column 7: holds more than 250000 values once its aliases are expanded "
        "(an alias counts as all it stands for); a config this large is refused"
    )


def test_a_merge_key_bomb_is_refused_too(tmp_path: Path) -> None:
    """`<<:` copies the merged mappings' keys into each level: the same multiplication."""
    lines = ["m0: &m0 {a: 1, b: 2}"]
    for i in range(1, 20):
        lines.append(f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 9)}]}}")
    assert "holds more than 250000 values" in refusal(tmp_path, "\n".join(lines))


def test_aliases_within_the_bounds_still_work(tmp_path: Path) -> None:
    text = """\
    plugins:
      a: &shared {timeout_ms: 1234, critical: true}
      b: *shared
      c: {<<: *shared, timeout_ms: 99}
    """
    plugins = load(tmp_path, text).plugins
    assert (plugins["b"].timeout_ms, plugins["b"].critical) == (1234, True)
    assert (plugins["c"].timeout_ms, plugins["c"].critical) == (99, True)


@pytest.mark.parametrize(
    "text",
    [
        "plugins:\n  a: &loop {config: {again: *loop}}\n",
        "hooks: &loop [x, *loop]\n",
    ],
)
def test_an_alias_inside_the_node_it_names_is_refused_not_a_recursion_error(
    tmp_path: Path, text: str
) -> None:
    problem = refusal(tmp_path, text)
    assert problem.endswith(
        "the alias *loop stands for a node that contains it; a config cannot be recursive"
    )


@pytest.mark.parametrize(
    "text",
    [
        "endpoints: " + "[" * 20_000 + "]" * 20_000,
        "endpoints:\n" + "".join(" " * i + "a:\n" for i in range(1, 500)),
    ],
)
def test_deep_nesting_is_refused_not_a_recursion_error(tmp_path: Path, text: str) -> None:
    assert refusal(tmp_path, text).endswith("nested more than 64 levels deep")


def test_nesting_deep_only_through_aliases_is_refused(tmp_path: Path) -> None:
    deep = "[" * 40 + "x" + "]" * 40
    text = f"a: &a {deep}\nb: {'[' * 30}*a{']' * 30}\n"
    assert refusal(tmp_path, text).endswith(
        "nested more than 64 levels deep once its aliases are expanded"
    )


def test_a_file_over_one_mib_is_refused_unread(tmp_path: Path) -> None:
    text = "description: " + "x" * (1 << 20) + "\n"
    assert refusal(tmp_path, text) == (
        "the file is larger than 1048576 bytes (1 MiB), the most a config may be"
    )


# -- plugins --------------------------------------------------------------------------


def test_the_plugin_config_mapping_becomes_json_text(tmp_path: Path) -> None:
    text = """
    plugins:
      weather:
        config: {units: metric, retries: 3, ratio: 0.5, cache: true, nested: {list: [1, ~]}, é: ü}
    """

    config_json = load(tmp_path, text).plugins["weather"].config_json

    assert json.loads(config_json.decode("utf-8")) == {
        "units": "metric",
        "retries": 3,
        "ratio": 0.5,
        "cache": True,
        "nested": {"list": [1, None]},
        "é": "ü",
    }


def test_plugin_config_values_that_json_cannot_carry_are_problems(tmp_path: Path) -> None:
    text = """
    plugins:
      weather:
        config: {ratio: .nan, list: [1, 2024-01-01], 7: seven, on: true}
      other:
        config: [not, a, mapping]
    """

    assert problems(tmp_path, text) == [
        "plugins.weather.config.ratio: must be a finite number in JSON (got nan)",
        "plugins.weather.config.list[1]: must be JSON data (got a date); quote it",
        "plugins.weather.config: keys must be strings in JSON (got 7; quote it)",
        # YAML 1.1 reads an unquoted `on` as true.
        "plugins.weather.config: keys must be strings in JSON (got true; quote it)",
        "plugins.other.config: must be a mapping (got a list)",
    ]


def test_native_is_accepted_as_a_plugin_type(tmp_path: Path) -> None:
    config = load(tmp_path, "plugins:\n  a: {plugin_type: native}")

    assert config.plugins["a"] == PluginConfig(name="a")


def test_workers_only_apply_to_process_isolation(tmp_path: Path) -> None:
    assert problems(tmp_path, "plugins:\n  a: {workers: 2}") == [
        "plugins.a.workers: only applies with isolation: process"
    ]
    assert (
        load(tmp_path, "plugins:\n  a: {workers: 2, isolation: process}").plugins["a"].workers == 2
    )


def test_max_response_mb_is_a_positive_integer_a_worker_frame_can_carry(tmp_path: Path) -> None:
    assert load(tmp_path, "plugins:\n  w: {}").plugins["w"].max_response_bytes == 64 << 20
    assert problems(tmp_path, "plugins:\n  w: {max_response_mb: 0}") == [
        "plugins.w.max_response_mb: must be an integer from 1 to 1000 (got 0)"
    ]
    assert problems(tmp_path, "plugins:\n  w: {max_response_mb: 1024}") == [
        "plugins.w.max_response_mb: must be an integer from 1 to 1000 (got 1024)"
    ]


def test_health_checks_run_every_30_s_by_default_and_0_turns_the_schedule_off(
    tmp_path: Path,
) -> None:
    default = load(tmp_path, "plugins:\n  w: {}").plugins["w"]
    assert (default.health_interval_ms, default.health_timeout_ms) == (30_000, 2_000)
    off = load(tmp_path, "plugins:\n  w: {health_interval_ms: 0}").plugins["w"]
    assert off.health_interval_ms == 0
    assert problems(tmp_path, "plugins:\n  w: {health_interval_ms: -1, health_timeout_ms: 0}") == [
        "plugins.w.health_interval_ms: must be a non-negative integer (got -1)",
        "plugins.w.health_timeout_ms: must be a positive integer (got 0)",
    ]


def test_worker_renewal_and_crash_retries_only_apply_to_process_isolation(
    tmp_path: Path,
) -> None:
    assert problems(
        tmp_path, "plugins:\n  a: {max_calls_per_worker: 5, retry_on_crash: false}"
    ) == [
        "plugins.a.max_calls_per_worker: only applies with isolation: process",
        "plugins.a.retry_on_crash: only applies with isolation: process",
    ]
    text = "plugins:\n  a: {isolation: process, max_calls_per_worker: 5, retry_on_crash: true}"
    limits = load(tmp_path, text).plugins["a"].process_limits
    assert (limits.max_calls_per_worker, limits.retry_on_crash) == (5, True)


def test_start_timeout_is_a_budget_of_its_own(tmp_path: Path) -> None:
    plugin = load(tmp_path, "plugins:\n  a: {timeout_ms: 200}").plugins["a"]
    assert (plugin.timeout_ms, plugin.start_timeout_ms) == (200, 10_000)
    assert problems(
        tmp_path,
        "plugins:\n  a: {start_timeout_ms: 0, max_calls_per_worker: -1, isolation: process}",
    ) == [
        "plugins.a.max_calls_per_worker: must be a positive integer or null (got -1)",
        "plugins.a.start_timeout_ms: must be a positive integer (got 0)",
    ]


def test_process_limits_are_valid_by_construction() -> None:
    with pytest.raises(ValueError, match="max_calls_per_worker"):
        ProcessLimits(max_calls_per_worker=0)


def test_a_queue_timeout_of_zero_means_do_not_wait(tmp_path: Path) -> None:
    assert load(tmp_path, "plugins:\n  a: {queue_timeout_ms: 0}").plugins["a"].queue_timeout_ms == 0


def test_endpoints_and_hooks_may_name_plugins_that_are_not_configured(tmp_path: Path) -> None:
    text = (
        "hooks: [auth]\nendpoints:\n  /x: {hooks: [audit], runtime: {type: plugin, handler: found}}"
    )

    config = load(tmp_path, text)

    assert config.hooks == ("auth",)
    assert config.endpoints[0].handler == "found"
    assert config.plugins == {}


# -- endpoints ------------------------------------------------------------------------


def test_an_endpoint_needs_exactly_one_of_runtime_and_response(tmp_path: Path) -> None:
    text = """
    endpoints:
      /both: {runtime: {type: plugin, handler: a}, response: {body: x}}
      /neither: {method: GET}
    """

    assert problems(tmp_path, text) == [
        """endpoints["/both"]: needs exactly one of 'runtime' (a plugin) and 'response' """
        "(a fixed answer) (got both)",
        """endpoints["/neither"]: needs exactly one of 'runtime' (a plugin) and 'response' """
        "(a fixed answer) (got neither)",
    ]


def test_a_runtime_needs_a_type_and_a_valid_handler(tmp_path: Path) -> None:
    text = """
    endpoints:
      /a: {runtime: {handler: Not-Valid}}
      /b: {runtime: {type: plugin}}
    """

    assert problems(tmp_path, text) == [
        """endpoints["/a"].runtime.type: is required; set it to 'plugin\'""",
        """endpoints["/a"].runtime.handler: must be a plugin name: lower-case letters, """
        "digits, '_' and '-', at most 64 (got 'Not-Valid')",
        """endpoints["/b"].runtime.handler: is required: the name of the plugin that answers""",
    ]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("weather/{city}", "the path must start with '/'"),
        ("/a/{city", "the path has an unmatched '{' or '}'"),
        ("/a/city}", "the path has an unmatched '{' or '}'"),
        (
            "/a/{}",
            "path parameter {} must be a name: letters, digits and '_', not starting with a digit",
        ),
        (
            "/a/{1x}",
            "path parameter {1x} must be a name: letters, digits and '_', not "
            "starting with a digit",
        ),
        ("/a/{id}/b/{id}", "path parameter {id} appears twice"),
        ("/a?x=1", "the path must not contain whitespace, '?' or '#'"),
    ],
)
def test_bad_endpoint_paths_are_problems(tmp_path: Path, path: str, expected: str) -> None:
    text = f"endpoints:\n  '{path}': {{response: {{body: x}}}}"

    assert problems(tmp_path, text) == [f'endpoints["{path}"]: {expected}']


def test_methods_are_upper_cased_deduplicated_and_default_to_get(tmp_path: Path) -> None:
    text = """
    endpoints:
      /one: {method: post, response: {}}
      /many: {methods: [get, HEAD, Get], response: {}}
      /default: {response: {}}
    """

    assert [e.methods for e in load(tmp_path, text).endpoints] == [
        ("POST",),
        ("GET", "HEAD"),
        ("GET",),
    ]


def test_method_and_methods_together_or_an_empty_list_are_problems(tmp_path: Path) -> None:
    text = """
    endpoints:
      /a: {method: GET, methods: [POST], response: {}}
      /b: {methods: [], response: {}}
    """

    assert problems(tmp_path, text) == [
        """endpoints["/a"].methods: give either 'method' or 'methods', not both""",
        """endpoints["/b"].methods: must list at least one method""",
    ]


def test_a_static_response_body_may_be_written_as_yaml(tmp_path: Path) -> None:
    text = "endpoints:\n  /h: {response: {status: 201, body: {status: ok, n: [1]}}}"

    response = load(tmp_path, text).endpoints[0].response

    assert response == StaticResponse(status=201, body='{"status": "ok", "n": [1]}')


def test_hooks_on_a_static_response_are_a_problem(tmp_path: Path) -> None:
    text = "endpoints:\n  /h: {hooks: [auth], response: {body: x}}"

    assert problems(tmp_path, text) == [
        """endpoints["/h"].hooks: only apply to endpoints with a runtime, not to a fixed """
        "response"
    ]


def test_header_names_and_values_are_checked(tmp_path: Path) -> None:
    text = 'global_headers: {"bad name": x, x-ok: "a\\r\\nb", x-n: 5}'

    assert problems(tmp_path, text) == [
        "global_headers[\"bad name\"]: 'bad name' is not a valid header name",
        "global_headers.x-ok: a header value must not contain line breaks",
        "global_headers.x-n: must be a string (got 5; quote it)",
    ]


# -- find_config ----------------------------------------------------------------------


def test_find_config_prefers_the_explicit_path(tmp_path: Path) -> None:
    (tmp_path / "backworks.yaml").write_text("")

    assert find_config(Path("other.yaml"), tmp_path) == tmp_path / "other.yaml"
    assert find_config(Path("/etc/bw.yaml"), tmp_path) == Path("/etc/bw.yaml")


def test_find_config_falls_back_to_backworks_yaml_in_the_folder(tmp_path: Path) -> None:
    assert find_config(None, tmp_path) is None

    (tmp_path / "backworks.yaml").write_text("")

    assert find_config(None, tmp_path) == tmp_path / "backworks.yaml"
