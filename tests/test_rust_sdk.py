"""The Rust SDK (sdk-rust/) and its weather example, built with cargo and driven through
the same binding the host uses (`backworks.abi`).

Cargo builds are the slow part, so they happen once per session in session fixtures,
all into one shared target folder (`cargo_target`, `weather_plugin` and `test_plugins`
come from tests/rust_build.py, which the end-to-end tests share): the SDK's own
`cargo test`, the weather plugin, and the small plugins of tests/plugins/rust/ written
in the seed's style.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import pytest

from backworks.abi import (
    ABI_VERSION,
    CONSTANTS,
    LOG_DEBUG,
    LOG_INFO,
    CancelFlag,
    NativeInstance,
    NativeLibrary,
    Request,
    Response,
    ffi,
    open_library,
)
from backworks.errors import PluginCallError, PluginCancelledError, PluginInitError
from tests.cbuild import INCLUDE
from tests.rust_build import SDK_WORKSPACE, WEATHER_CRATE, cargo, cargo_checked

NOW = "2025-07-04T12:00:00Z"
WEATHER_CONFIG = {"api_key": "test-key", "now": NOW}

Logs = list[tuple[int, str]]


# ---------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def sdk_cargo_test(cargo_target: Path) -> subprocess.CompletedProcess[str]:
    """`cargo test` of the whole SDK workspace (it also builds the abi_layout example)."""
    return cargo(
        ["test", "--workspace", "--manifest-path", str(SDK_WORKSPACE / "Cargo.toml")],
        target_dir=cargo_target,
    )


@pytest.fixture(scope="session")
def weather_library(weather_plugin: Path) -> NativeLibrary:
    return open_library(weather_plugin)


class Instantiate(Protocol):
    """The `instantiate` fixture: an instance of `library` given `config` as JSON (no
    config text when None), and the list its log lines land in."""

    def __call__(
        self, library: NativeLibrary, config: Any = None
    ) -> tuple[NativeInstance, Logs]: ...


@pytest.fixture
def instantiate() -> Iterator[Instantiate]:
    """`instantiate(library, config)` -> (instance, logs); shut down after the test."""
    instances: list[NativeInstance] = []

    def make(library: NativeLibrary, config: Any = None) -> tuple[NativeInstance, Logs]:
        logs: Logs = []
        text = b"" if config is None else json.dumps(config).encode()
        instance = library.instantiate(text, lambda level, message: logs.append((level, message)))
        instances.append(instance)
        return instance, logs

    yield make
    for instance in instances:
        instance.shutdown()


def get(
    instance: NativeInstance,
    path: str,
    *,
    query: str = "",
    endpoint: str = "",
    params: tuple[tuple[str, str], ...] = (),
    headers: tuple[tuple[str, str], ...] = (),
    method: str = "GET",
) -> Response:
    request = Request(
        method=method,
        path=path,
        query=query,
        endpoint=endpoint,
        params=params,
        headers=headers,
        request_id="req-1",
    )
    return instance.handle(request, CancelFlag())


def weather(instance: NativeInstance, city: str, query: str = "") -> Response:
    """`GET /weather/{city}` as the host routes it: the city arrives as a path parameter."""
    return get(
        instance,
        f"/weather/{city}",
        query=query,
        endpoint="/weather/{city}",
        params=(("city", city),),
    )


def body(response: Response) -> Any:
    return json.loads(response.body)


# ---------------------------------------------------------------------------
# The SDK's own tests and the ABI mirror


def test_sdk_cargo_tests_pass_offline(sdk_cargo_test: subprocess.CompletedProcess[str]) -> None:
    output = sdk_cargo_test.stdout + sdk_cargo_test.stderr
    assert sdk_cargo_test.returncode == 0, output[-6000:]
    # The suites that pin JSON round trips, panics at the boundary and the layout ran.
    for suite in ("tests/boundary.rs", "tests/layout.rs", "tests/async_trait.rs", "Doc-tests"):
        assert suite in output


def _c_layout_program() -> str:
    """A C program printing every struct's size and offsets and every constant, as the
    header declares them (struct and field names come from the header via cffi)."""
    typedefs, _, _ = ffi.list_types()
    structs = sorted(t for t in typedefs if ffi.typeof(t).kind == "struct")
    lines = []
    for name in structs:
        lines.append(f'printf("sizeof {name} %zu\\n", sizeof({name}));')
        for field, _ in ffi.typeof(name).fields:
            lines.append(f'printf("offsetof {name} {field} %zu\\n", offsetof({name}, {field}));')
    for const in [*CONSTANTS, "BW_ABI_VERSION"]:
        lines.append(f'printf("const {const} %llu\\n", (unsigned long long)({const}));')
    statements = "\n    ".join(lines)
    return (
        "#include <stddef.h>\n#include <stdio.h>\n#include <backworks/plugin.h>\n\n"
        f"int main(void) {{\n    {statements}\n    return 0;\n}}\n"
    )


def test_rust_abi_mirror_matches_the_c_header(
    sdk_cargo_test: subprocess.CompletedProcess[str], cargo_target: Path, tmp_path: Path
) -> None:
    """Every size, offset and constant the Rust mirror has equals what a C compiler makes
    of plugin.h, and neither side has a struct, field or constant the other lacks."""
    assert sdk_cargo_test.returncode == 0
    source, exe = tmp_path / "layout.c", tmp_path / "layout"
    source.write_text(_c_layout_program())
    cc = os.environ.get("CC", "cc")
    flags = ["-std=c99", "-Wall", "-Werror", f"-I{INCLUDE}"]
    subprocess.run([cc, *flags, "-o", exe, source], check=True)
    printed = subprocess.run([exe], check=True, capture_output=True, text=True).stdout
    c_lines = sorted(printed.splitlines())

    manifest = str(SDK_WORKSPACE / "Cargo.toml")
    rust_out = cargo_checked(
        ["run", "--quiet", "--manifest-path", manifest, "--example", "abi_layout"],
        target_dir=cargo_target,
        what="running the abi_layout example",
    )
    rust_lines = sorted(rust_out.splitlines())

    assert len(c_lines) > 60
    assert rust_lines == c_lines


# ---------------------------------------------------------------------------
# The weather example


def test_weather_descriptor_names_the_plugin_and_declares_thread_safety(
    weather_library: NativeLibrary,
) -> None:
    info = weather_library.info
    assert (info.name, info.version, info.abi) == ("weather", "1.0.0", "1.0")
    assert info.flag_names == ["thread_safe", "nonblocking"]
    assert info.has_health
    assert not info.has_on_request
    assert not info.has_on_response
    assert "forecast" in info.description


def test_weather_plugin_declines_a_host_of_another_major_version(
    weather_library: NativeLibrary,
) -> None:
    lib = ctypes.CDLL(weather_library.path)
    entry = lib.backworks_plugin_entry
    entry.restype = ctypes.c_void_p
    entry.argtypes = [ctypes.c_uint32]
    assert entry(2 << 16) is None
    assert entry(ABI_VERSION) is not None
    assert entry(ABI_VERSION + 5) is not None  # a later minor of the same major


def test_weather_reports_current_conditions_and_a_three_day_forecast(
    weather_library: NativeLibrary, instantiate: Instantiate
) -> None:
    instance, _ = instantiate(weather_library, WEATHER_CONFIG)
    response = weather(instance, "london")
    assert response.status == 200
    assert response.content_type == ""  # application/json
    assert ("cache-control", "public, max-age=300") in response.headers
    report = body(response)
    assert (report["city"], report["country"], report["units"]) == ("London", "GB", "metric")
    assert report["observed_at"] == NOW
    assert report["unit_labels"] == {"temperature": "°C", "wind_speed": "km/h"}
    current = report["current"]
    assert set(current) == {
        "temperature",
        "feels_like",
        "condition",
        "humidity",
        "precipitation_chance",
        "wind_speed",
        "wind_direction",
    }
    assert -30 < current["temperature"] < 45
    assert 0 <= current["humidity"] <= 100
    assert isinstance(current["condition"], str)
    forecast = report["forecast"]
    assert [day["date"] for day in forecast] == ["2025-07-04", "2025-07-05", "2025-07-06"]
    for day in forecast:
        assert day["high"] >= day["low"]
        assert 0 <= day["precipitation_chance"] <= 100


def test_weather_is_deterministic_for_a_pinned_clock(
    weather_library: NativeLibrary, instantiate: Instantiate
) -> None:
    first, _ = instantiate(weather_library, WEATHER_CONFIG)
    second, _ = instantiate(weather_library, WEATHER_CONFIG)
    assert weather(first, "tokyo").body == weather(second, "tokyo").body
    assert weather(first, "tokyo").body != weather(first, "oslo").body


def test_weather_takes_the_city_from_the_query_or_the_default_city(
    weather_library: NativeLibrary, instantiate: Instantiate
) -> None:
    instance, _ = instantiate(weather_library, {**WEATHER_CONFIG, "default_city": "paris"})
    by_path = weather(instance, "paris").body
    assert get(instance, "/weather", query="city=Paris").body == by_path
    assert get(instance, "/weather").body == by_path
    assert body(get(instance, "/weather", query="city=new+york"))["city"] == "New York"


def test_weather_converts_to_imperial_units(
    weather_library: NativeLibrary, instantiate: Instantiate
) -> None:
    instance, _ = instantiate(weather_library, WEATHER_CONFIG)
    metric = body(weather(instance, "cairo"))
    imperial = body(weather(instance, "cairo", query="units=imperial"))
    assert imperial["units"] == "imperial"
    assert imperial["unit_labels"] == {"temperature": "°F", "wind_speed": "mph"}
    # Both sides are rounded to 0.1 independently.
    c, f = metric["current"]["temperature"], imperial["current"]["temperature"]
    assert f == pytest.approx(c * 9 / 5 + 32, abs=0.2)
    kmh, mph = metric["current"]["wind_speed"], imperial["current"]["wind_speed"]
    assert mph == pytest.approx(kmh / 1.609344, abs=0.1)
    for m, i in zip(metric["forecast"], imperial["forecast"], strict=True):
        assert i["high"] == pytest.approx(m["high"] * 9 / 5 + 32, abs=0.2)

    configured, _ = instantiate(weather_library, {**WEATHER_CONFIG, "units": "imperial"})
    assert body(weather(configured, "cairo")) == imperial


def test_weather_unknown_city_is_a_json_404(
    weather_library: NativeLibrary, instantiate: Instantiate
) -> None:
    instance, _ = instantiate(weather_library, WEATHER_CONFIG)
    response = weather(instance, "atlantis")
    assert response.status == 404
    error = body(response)
    assert error["error"] == 'unknown city "atlantis"'
    assert "london" in error["known_cities"]


def test_weather_bad_units_is_a_json_400(
    weather_library: NativeLibrary, instantiate: Instantiate
) -> None:
    instance, _ = instantiate(weather_library, WEATHER_CONFIG)
    response = weather(instance, "london", query="units=kelvin")
    assert response.status == 400
    assert body(response) == {"error": 'units must be "metric" or "imperial" (got "kelvin")'}
    assert weather(instance, "london", query="days=99").status == 400


def test_weather_refuses_to_start_without_an_api_key(weather_library: NativeLibrary) -> None:
    with pytest.raises(PluginInitError) as caught:
        weather_library.instantiate(json.dumps({"units": "metric"}).encode(), lambda _l, _m: None)
    assert caught.value.plugin == "weather"
    assert "api_key is required" in caught.value.message


def test_weather_refuses_an_invalid_config_value_at_init(weather_library: NativeLibrary) -> None:
    config = {"api_key": "k", "units": "kelvin"}
    with pytest.raises(PluginInitError, match='units must be "metric" or "imperial"'):
        weather_library.instantiate(json.dumps(config).encode(), lambda _l, _m: None)


def test_weather_health_report_counts_requests(
    weather_library: NativeLibrary, instantiate: Instantiate
) -> None:
    instance, _ = instantiate(weather_library, WEATHER_CONFIG)
    weather(instance, "oslo")
    weather(instance, "atlantis")
    report = instance.health()
    assert report is not None
    assert report.status == 200
    health = body(report)
    assert health["status"] == "healthy"
    assert health["details"]["requests_served"] == 1
    assert health["details"]["unknown_city_requests"] == 1
    assert health["details"]["cities"] >= 20
    assert "test-key" not in report.body.decode()


def test_weather_logs_arrive_in_the_hosts_log_sink(
    weather_library: NativeLibrary, instantiate: Instantiate
) -> None:
    instance, logs = instantiate(weather_library, {**WEATHER_CONFIG, "colour": "blue"})
    assert any(level == LOG_INFO and "weather plugin ready" in m for level, m in logs)
    assert any("ignoring unknown config key" in m and "colour" in m for _, m in logs)
    weather(instance, "rome")
    assert (LOG_DEBUG, "weather for rome in metric units, 3 days (request req-1)") in logs
    instance.shutdown()
    assert (LOG_INFO, "weather plugin stopping after 1 requests") in logs


def test_weather_serves_concurrent_requests_on_one_instance(
    weather_library: NativeLibrary, instantiate: Instantiate
) -> None:
    instance, _ = instantiate(weather_library, WEATHER_CONFIG)
    cities = ["london", "sydney", "mumbai", "toronto"] * 25
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda city: weather(instance, city), cities))
    assert all(a.status == 200 for a in answers)
    for city in set(cities):
        assert len({a.body for a, c in zip(answers, cities, strict=True) if c == city}) == 1


def test_weather_example_unit_tests_pass(cargo_target: Path) -> None:
    manifest = str(WEATHER_CRATE / "Cargo.toml")
    result = cargo(["test", "--manifest-path", manifest], target_dir=cargo_target)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]


# ---------------------------------------------------------------------------
# Seed-style plugins


def test_seed_plugin_written_as_in_the_seed_builds_and_answers(
    test_plugins: dict[str, Path], instantiate: Instantiate
) -> None:
    library = open_library(test_plugins["seed-plugin"])
    assert (library.info.name, library.info.version) == ("my-plugin", "1.0.0")
    assert library.info.description == "My awesome plugin"
    assert library.info.thread_safe  # Send + Sync by the trait's bounds
    instance, _ = instantiate(library)
    response = get(instance, "/api/custom", method="POST")
    assert response.status == 200
    assert response.body == b"Plugin response"
    assert response.content_type == "text/plain; charset=utf-8"


def test_seed_weather_plugin_reads_its_config_and_answers_json(
    test_plugins: dict[str, Path], instantiate: Instantiate
) -> None:
    library = open_library(test_plugins["seed-weather"])
    instance, logs = instantiate(library, {"api_key": "abc123"})
    assert (LOG_INFO, "seed weather plugin initialised") in logs

    response = get(instance, "/weather/today", endpoint="/weather")
    assert (response.status, response.content_type) == (200, "")
    assert body(response) == {"temperature": 25, "humidity": 60}

    health = instance.health()
    assert health is not None
    assert body(health)["details"] == {"api_key_length": 6}


def test_seed_weather_plugin_answers_404_for_what_it_does_not_handle(
    test_plugins: dict[str, Path], instantiate: Instantiate
) -> None:
    instance, _ = instantiate(open_library(test_plugins["seed-weather"]), {"api_key": "k"})
    for method, path in (("GET", "/elsewhere"), ("POST", "/weather")):
        response = get(instance, path, method=method)
        assert response.status == 404
        assert body(response) == {"error": f"seed-weather does not handle {method} {path}"}


def test_seed_weather_plugin_without_api_key_fails_init_with_its_reason(
    test_plugins: dict[str, Path],
) -> None:
    library = open_library(test_plugins["seed-weather"])
    with pytest.raises(PluginInitError) as caught:
        library.instantiate(b"{}", lambda _l, _m: None)
    assert caught.value.message == "invalid configuration: api_key is required"


# ---------------------------------------------------------------------------
# The boundary's failure paths


def test_panic_in_handle_is_a_call_error_with_the_panic_message(
    test_plugins: dict[str, Path], instantiate: Instantiate
) -> None:
    instance, _ = instantiate(open_library(test_plugins["probe"]))
    with pytest.raises(PluginCallError) as caught:
        get(instance, "/panic")
    expected = "handle returned 1: handle panicked: the weather station caught fire"
    assert caught.value.message == expected
    # The panic was caught at the boundary: the process and the instance carry on.
    assert get(instance, "/ok").body == b"still standing"


def test_panic_in_initialize_is_an_init_error_with_the_panic_message(
    test_plugins: dict[str, Path],
) -> None:
    library = open_library(test_plugins["probe"])
    with pytest.raises(PluginInitError) as caught:
        library.instantiate(b'{"panic": true}', lambda _l, _m: None)
    assert caught.value.message == "initialize panicked: refusing to start: asked to panic"


def test_cancellation_is_seen_by_a_running_handler(
    test_plugins: dict[str, Path], instantiate: Instantiate
) -> None:
    instance, _ = instantiate(open_library(test_plugins["probe"]))
    cancel = CancelFlag()
    outcome: list[BaseException | Response] = []

    def call() -> None:
        try:
            outcome.append(instance.handle(Request(method="GET", path="/wait-for-cancel"), cancel))
        except BaseException as e:  # handed to the main thread to assert on
            outcome.append(e)

    worker = threading.Thread(target=call)
    started = time.monotonic()
    worker.start()
    time.sleep(0.05)
    cancel.set()
    worker.join(timeout=5)
    assert not worker.is_alive()
    assert isinstance(outcome[0], PluginCancelledError)
    assert time.monotonic() - started < 5


def test_hooks_can_answer_early_or_amend_the_response(
    test_plugins: dict[str, Path], instantiate: Instantiate
) -> None:
    library = open_library(test_plugins["probe"])
    assert (library.info.has_on_request, library.info.has_on_response) == (True, True)
    instance, _ = instantiate(library)
    anonymous = Request(method="GET", path="/ok")
    denied = instance.on_request(anonymous, CancelFlag())
    assert denied is not None
    assert (denied.status, body(denied)) == (401, {"error": "missing credentials"})
    assert ("www-authenticate", "Bearer") in denied.headers
    signed = Request(method="GET", path="/ok", headers=(("authorization", "Bearer t"),))
    assert instance.on_request(signed, CancelFlag()) is None
    amended = instance.on_response(signed, Response(status=201, body=b"{}"), CancelFlag())
    assert amended is not None
    assert (amended.status, amended.body) == (201, b"{}")
    assert amended.headers == (("x-checked-by", "probe"),)
