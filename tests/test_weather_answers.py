"""The weather example's answers, pinned byte for byte.

The plugin's speed work (issue 19) rewrites how it builds its answers (a JSON writer
instead of a `Value` tree, borrowed request fields); what it answers must not move by a
byte. tests/data/weather_answers.json holds the answers of the plugin as it was before
that work (status, content type, headers and body of every request below); this test
asks the plugin built from this checkout the same questions through the host's loader
and compares.

Regenerate the file only for a deliberate change of the answers:

    .venv/bin/python tests/test_weather_answers.py plugins/libweather_plugin.so
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backworks.abi import CancelFlag, NativeInstance, NativeLibrary, Request, open_library

GOLDEN = Path(__file__).parent / "data" / "weather_answers.json"

# Instances: name -> config. Summer and winter clocks, both unit systems, a default city.
CONFIGS: dict[str, dict[str, str]] = {
    "summer": {"api_key": "k", "now": "2025-07-04T12:00:00Z"},
    "winter-night": {
        "api_key": "k",
        "now": "2026-01-17T23:59:59Z",
        "units": "imperial",
        "default_city": "moscow",
    },
}
CITIES = [
    "auckland", "beijing", "berlin", "buenos-aires", "cairo", "cape-town", "chicago", "dubai",
    "london", "los-angeles", "madrid", "mexico-city", "moscow", "mumbai", "nairobi", "new-york",
    "oslo", "paris", "reykjavik", "rome", "sao-paulo", "singapore", "sydney", "tokyo", "toronto",
]  # fmt: skip


def _by_path(city: str, query: str = "", method: str = "GET") -> Request:
    return Request(
        method,
        f"/weather/{city}",
        query=query,
        endpoint="/weather/{city}",
        params=(("city", city),),
        request_id="req-7",
    )


def _plain(query: str = "", method: str = "GET", endpoint: str = "/weather") -> Request:
    return Request(method, endpoint, query=query, endpoint=endpoint, request_id="req-8")


def questions() -> Iterator[tuple[str, str, Request]]:
    """(case id, instance, request): every route and error of the plugin."""
    for instance in CONFIGS:
        for city in CITIES:
            yield f"{instance} {city}", instance, _by_path(city)
    yield "imperial, 7 days", "summer", _by_path("paris", "units=imperial&days=7")
    yield "metric, 1 day", "winter-night", _by_path("reykjavik", "units=METRIC&days=1")
    yield "query city, spaces", "summer", _plain("city=new+york&days=2")
    yield "query city, percent", "summer", _plain("city=S%C3%A3o%20Paulo")
    yield "alias", "summer", _by_path("NYC")
    yield "default city", "winter-night", _plain()
    yield "HEAD", "summer", _by_path("rome", method="HEAD")
    yield "no city", "summer", _plain()
    yield "unknown city", "summer", _by_path("atlantis")
    yield "unknown city, quotes", "summer", _plain('city=a"b\\c')
    yield "bad units", "summer", _by_path("london", "units=kelvin")
    yield "bad days", "summer", _by_path("london", "days=99")
    yield "days not a number", "summer", _by_path("london", "days=x%22")
    yield "DELETE", "summer", _by_path("oslo", method="DELETE")
    yield "cities", "summer", _plain(endpoint="/weather/cities")


def answer(instance: NativeInstance, request: Request) -> dict[str, Any]:
    """The plugin's whole answer, as the golden file keeps it."""
    response = instance.handle(request, CancelFlag())
    return {
        "status": response.status,
        "content_type": response.content_type,
        "headers": [list(pair) for pair in response.headers],
        "body": response.body.decode("utf-8"),
    }


def answers(library: NativeLibrary) -> dict[str, dict[str, Any]]:
    instances = {
        name: library.instantiate(json.dumps(config).encode(), lambda _level, _message: None)
        for name, config in CONFIGS.items()
    }
    try:
        return {case: answer(instances[name], req) for case, name, req in questions()}
    finally:
        for instance in instances.values():
            instance.shutdown()


@pytest.fixture(scope="module")
def current(weather_plugin: Path) -> dict[str, dict[str, Any]]:
    return answers(open_library(weather_plugin))


@pytest.mark.parametrize("case", [case for case, _, _ in questions()])
def test_the_weather_plugin_answers_as_it_always_did(
    case: str, current: dict[str, dict[str, Any]]
) -> None:
    pinned = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert current[case] == pinned[case]


def test_the_pinned_answers_cover_every_route_and_error() -> None:
    pinned = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert {a["status"] for a in pinned.values()} == {200, 400, 404, 405}
    assert pinned["DELETE"]["headers"] == [["allow", "GET, HEAD"]]
    assert pinned["summer paris"]["headers"] == [["cache-control", "public, max-age=300"]]


if __name__ == "__main__":
    library = open_library(Path(sys.argv[1]))
    GOLDEN.parent.mkdir(exist_ok=True)
    text = json.dumps(answers(library), indent=1, ensure_ascii=False)
    GOLDEN.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {GOLDEN}")
