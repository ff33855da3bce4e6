from __future__ import annotations

import pytest

from backworks.lifecycle.routes import NoRoute, Route, RouteTable


def table() -> RouteTable[str]:
    return RouteTable(
        [
            Route("/health", frozenset({"GET"}), "health"),
            Route("/weather/{city}", frozenset({"GET"}), "weather"),
            Route("/weather/{city}", frozenset({"POST"}), "weather-post"),
            Route("/files/{tail:.*}", frozenset({"GET"}), "files"),
        ]
    )


def test_static_path_matches_without_params() -> None:
    match = table().match("GET", "/health")
    assert match.route.target == "health"
    assert match.params == ()


def test_param_matches_one_segment() -> None:
    assert table().match("GET", "/weather/london").params == (("city", "london"),)
    with pytest.raises(NoRoute):
        table().match("GET", "/weather/london/extra")


def test_method_picks_among_routes_of_one_pattern() -> None:
    assert table().match("POST", "/weather/paris").route.target == "weather-post"


def test_head_is_served_by_a_get_route() -> None:
    assert table().match("HEAD", "/health").route.target == "health"


def test_wrong_method_reports_the_allowed_ones() -> None:
    with pytest.raises(NoRoute) as e:
        table().match("DELETE", "/weather/rome")
    assert e.value.allowed == {"GET", "POST"}


def test_unknown_path_has_no_allowed_methods() -> None:
    with pytest.raises(NoRoute) as e:
        table().match("GET", "/nope")
    assert not e.value.allowed


def test_custom_regex_param_spans_segments() -> None:
    assert table().match("GET", "/files/a/b.txt").params == (("tail", "a/b.txt"),)
