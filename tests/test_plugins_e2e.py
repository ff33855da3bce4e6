"""End to end: real plugins of every kind, built as their authors build them, copied into
a plugins folder and served by the real app over loopback.

- the Rust weather example and the seed-style Rust plugins (built once a session, in
  release mode, into the shared cargo target: tests/rust_build.py);
- a C plugin of the legacy ABI 0 (tests/plugins/legacy.c);
- a Rust and a C plugin made by `backworks new plugin`, built with cargo and make.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import structlog

from backworks.cli.main import main
from backworks.http.aio.state import HOST
from tests.cbuild import EXT
from tests.conftest import BuildPlugin
from tests.rust_build import built_library, cargo_checked
from tests.serving import Client, Serve, error_of

LEGACY = (Path(__file__).parent / "plugins" / "legacy.c").read_text()
NOW = "2025-07-04T12:00:00Z"


def install(library: Path, plugins_dir: Path) -> Path:
    """Copies a built library into the served folder, as its user would."""
    target = plugins_dir / library.name
    shutil.copyfile(library, target)
    return target


ADMIN_TOKEN = "e2e-token"


def route(handler: str, *methods: str) -> dict[str, Any]:
    return {"methods": list(methods or ["GET"]), "runtime": {"type": "plugin", "handler": handler}}


async def plugin_rows(client: Client) -> dict[str, dict[str, Any]]:
    body = await (await client.get("/_backworks/plugins")).json()
    return {row["name"]: row for row in body["plugins"]}


def new_plugin(folder: Path, name: str, lang: str) -> Path:
    """Runs `backworks new plugin` as a user would, in its own process."""
    command = [sys.executable, "-m", "backworks", "new", "plugin", name, "--lang", lang]
    subprocess.run([*command, "--dir", str(folder)], check=True, capture_output=True)
    return folder / name


# ---------------------------------------------------------------------------
# The weather example


@pytest.fixture
async def weather(weather_plugin: Path, plugins_dir: Path, serve: Serve) -> Client:
    install(weather_plugin, plugins_dir)
    return await serve(
        {
            "plugins": {"weather": {"config": {"api_key": "test-key", "now": NOW}}},
            "endpoints": {"/weather/{city}": route("weather"), "/weather": route("weather")},
        }
    )


async def test_weather_answers_by_path_and_by_query_alike(weather: Client) -> None:
    by_path = await weather.get("/weather/london")
    assert by_path.status == 200
    assert by_path.headers["Content-Type"] == "application/json"
    assert by_path.headers["Cache-Control"] == "public, max-age=300"
    report = await by_path.json()
    assert (report["city"], report["country"], report["units"]) == ("London", "GB", "metric")
    assert report["observed_at"] == NOW
    assert [day["date"] for day in report["forecast"]] == ["2025-07-04", "2025-07-05", "2025-07-06"]
    by_query = await weather.get("/weather", params={"city": "london"})
    assert by_query.status == 200
    assert await by_query.json() == report


async def test_weather_converts_units_on_request(weather: Client) -> None:
    metric = await (await weather.get("/weather/cairo")).json()
    imperial = await (await weather.get("/weather/cairo?units=imperial")).json()
    assert imperial["units"] == "imperial"
    assert imperial["unit_labels"] == {"temperature": "°F", "wind_speed": "mph"}
    celsius, fahrenheit = metric["current"]["temperature"], imperial["current"]["temperature"]
    assert fahrenheit == pytest.approx(celsius * 9 / 5 + 32, abs=0.2)


async def test_weather_unknown_city_is_a_json_404(weather: Client) -> None:
    resp = await weather.get("/weather/atlantis")
    assert resp.status == 404
    assert resp.headers["Content-Type"] == "application/json"
    error = await resp.json()
    assert error["error"] == 'unknown city "atlantis"'
    assert "london" in error["known_cities"]


async def test_weather_bad_units_is_a_json_400(weather: Client) -> None:
    resp = await weather.get("/weather/london?units=kelvin")
    assert resp.status == 400
    assert await resp.json() == {"error": 'units must be "metric" or "imperial" (got "kelvin")'}


# ---------------------------------------------------------------------------
# Seed-style Rust plugins


async def test_the_seeds_my_plugin_answers_at_its_mount_point(
    test_plugins: dict[str, Path], plugins_dir: Path, serve: Serve
) -> None:
    install(test_plugins["seed-plugin"], plugins_dir)
    client = await serve({})
    for method, path in (("GET", "/plugins/my-plugin"), ("POST", "/plugins/my-plugin/anything")):
        resp = await client.request(method, path, data=b"ignored")
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert await resp.text() == "Plugin response"
    row = (await plugin_rows(client))["my-plugin"]
    assert (row["state"], row["abi"], row["version"]) == ("ready", "1.0", "1.0.0")


@pytest.fixture
async def seed_weather(test_plugins: dict[str, Path], plugins_dir: Path, serve: Serve) -> Client:
    """The seed's weather plugin. The SDK's default `handle` passes the matched route
    pattern to `process_endpoint_data`, which answers ("/weather", "GET") only: so
    `/weather` is routed as is, and `/weather/{day}` shows what a pattern it does not
    know gets."""
    install(test_plugins["seed-weather"], plugins_dir)
    return await serve(
        {
            "plugins": {"seed-weather": {"config": {"api_key": "abc123"}}},
            "admin": {"token": ADMIN_TOKEN},
            "endpoints": {
                "/weather": route("seed-weather", "GET", "POST"),
                "/weather/{day}": route("seed-weather"),
            },
        }
    )


async def test_seed_weather_answers_json_for_get_weather(seed_weather: Client) -> None:
    resp = await seed_weather.get("/weather")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert await resp.json() == {"temperature": 25, "humidity": 60}


async def test_seed_weather_answers_404_for_what_it_does_not_handle(
    seed_weather: Client,
) -> None:
    for method, path, endpoint in (
        ("POST", "/weather", "/weather"),
        ("GET", "/weather/today", "/weather/{day}"),
        ("GET", "/plugins/seed-weather", "/plugins/{plugin}"),
    ):
        resp = await seed_weather.request(method, path)
        assert resp.status == 404, path
        assert await resp.json() == {"error": f"seed-weather does not handle {method} {endpoint}"}


async def test_seed_weather_reads_its_api_key_at_initialize(seed_weather: Client) -> None:
    row = (await plugin_rows(seed_weather))["seed-weather"]
    assert row["state"] == "ready"
    resp = await seed_weather.post(
        "/_backworks/plugins/seed-weather/health",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    report = (await resp.json())["health"]
    assert report["details"]["details"] == {"api_key_length": 6}


async def test_seed_weather_without_an_api_key_is_unavailable_with_its_reason(
    test_plugins: dict[str, Path], plugins_dir: Path, serve: Serve
) -> None:
    install(test_plugins["seed-weather"], plugins_dir)
    client = await serve({"endpoints": {"/weather": route("seed-weather")}})
    resp = await client.get("/weather")
    assert resp.status == 503
    assert (await error_of(resp))["message"] == "the plugin is not available"
    assert "api_key is required" in (client.app[HOST].plugins["seed-weather"].error or "")


# ---------------------------------------------------------------------------
# A plugin of the original design (legacy ABI 0)


@pytest.fixture
def legacy_library(build_plugin: BuildPlugin, plugins_dir: Path) -> Path:
    return build_plugin(LEGACY, name="legacy", folder=plugins_dir)


@pytest.fixture
async def legacy(legacy_library: Path, serve: Serve) -> Client:
    return await serve(
        {
            "plugins": {"legacy-echo": {"config": {"api_key": "k1"}}},
            "endpoints": {
                "/legacy/echo": route("legacy-echo", "POST"),
                "/legacy/config": route("legacy-echo"),
                "/legacy/slow": route("legacy-echo"),
                "/legacy/overlaps": route("legacy-echo"),
            },
        }
    )


async def test_legacy_plugin_gets_the_route_method_and_body_and_answers_json(
    legacy: Client,
) -> None:
    resp = await legacy.post("/legacy/echo", data=b"payload")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert await resp.json() == {"endpoint": "/legacy/echo", "method": "POST", "data_len": 7}
    config = await (await legacy.get("/legacy/config")).json()
    assert config == {"config": {"api_key": "k1"}}


async def test_legacy_plugin_not_handling_a_request_is_a_json_404(legacy: Client) -> None:
    resp = await legacy.get("/plugins/legacy-echo")
    assert resp.status == 404
    assert await resp.json() == {"error": "legacy-echo does not handle GET /plugins/{plugin}"}


async def test_legacy_plugin_is_listed_as_abi_0_and_never_called_concurrently(
    legacy: Client,
) -> None:
    row = (await plugin_rows(legacy))["legacy-echo"]
    assert (row["state"], row["abi"], row["version"], row["flags"]) == (
        "ready",
        "0 (legacy)",
        "0.3.0",
        [],
    )
    answers = await asyncio.gather(*(legacy.get("/legacy/slow") for _ in range(6)))
    assert [a.status for a in answers] == [200] * 6
    assert await (await legacy.get("/legacy/overlaps")).json() == {"overlaps": 0}


async def test_legacy_plugin_is_shut_down_once_with_the_server(
    legacy_library: Path, serve: Serve, tmp_path: Path
) -> None:
    marker = tmp_path / "shutdowns"
    client = await serve({"plugins": {"legacy-echo": {"config": {"marker": str(marker)}}}})
    assert (await client.get("/plugins/legacy-echo")).status == 404
    assert not marker.exists()
    await client.close()
    assert marker.read_text() == "shutdown\n"


def test_plugins_list_shows_a_legacy_library_as_abi_0(
    legacy_library: Path,
    plugins_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BACKWORKS_CACHE_DIR", str(tmp_path / "cache"))
    try:
        code = main(["plugins", "list", "--dir", str(plugins_dir), "--json"])
    finally:
        structlog.reset_defaults()  # main() configures logging for the whole process
    assert code == 0
    assert json.loads(capsys.readouterr().out) == [
        {
            "path": str(legacy_library),
            "ok": True,
            "name": "legacy-echo",
            "version": "0.3.0",
            "description": "A plugin written for the original design",
            "abi": "0 (legacy)",
            "flags": [],
            "error": None,
        }
    ]


# ---------------------------------------------------------------------------
# Plugins made by `backworks new plugin`


@pytest.fixture(scope="session")
def scaffolded_rust(cargo_target: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`backworks new plugin greeter --lang rust`, built with cargo: the library."""
    project = new_plugin(tmp_path_factory.mktemp("new-rust"), "greeter", "rust")
    cargo_checked(
        ["build", "--release", "--manifest-path", str(project / "Cargo.toml")],
        target_dir=cargo_target,
        what="building the scaffolded Rust plugin",
    )
    return built_library(cargo_target, "greeter_plugin")


@pytest.fixture(scope="session")
def scaffolded_c(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`backworks new plugin greeter-c --lang c`, built with make: the library."""
    project = new_plugin(tmp_path_factory.mktemp("new-c"), "greeter-c", "c")
    subprocess.run(["make", "-C", str(project)], check=True, capture_output=True)
    return project / f"libgreeter-c.{EXT}"


@pytest.mark.parametrize(
    ("library", "name"), [("scaffolded_rust", "greeter"), ("scaffolded_c", "greeter-c")]
)
async def test_a_scaffolded_plugin_builds_and_serves(
    request: pytest.FixtureRequest, library: str, name: str, plugins_dir: Path, serve: Serve
) -> None:
    install(request.getfixturevalue(library), plugins_dir)
    client = await serve({"endpoints": {"/hello/{name}": route(name)}})
    resp = await client.get("/hello/Ada")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert await resp.json() == {"plugin": name, "message": "hello, Ada!"}
    mounted = await client.get(f"/plugins/{name}", params={"name": "Bob Lee"})
    assert await mounted.json() == {"plugin": name, "message": "hello, Bob Lee!"}
    assert (await plugin_rows(client))[name]["state"] == "ready"


async def test_the_scaffolded_rust_plugin_reads_its_config(
    scaffolded_rust: Path, plugins_dir: Path, serve: Serve
) -> None:
    install(scaffolded_rust, plugins_dir)
    client = await serve({"plugins": {"greeter": {"config": {"greeting": "hi"}}}})
    resp = await client.get("/plugins/greeter?name=Ada")
    assert await resp.json() == {"plugin": "greeter", "message": "hi, Ada!"}
