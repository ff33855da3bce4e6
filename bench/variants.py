"""The rows of `make bench`: each variant's server, and what its figures are held to.

MAIN is issue 13's table: the baseline a user would write instead, what they might
pick instead of a native plugin, and Backworks' engines and dispatch modes, all on
`GET /hello?name=Ada` unless the name says otherwise. SECONDARY keeps the earlier
rows (two worker processes, the tracing rows), compared in pairs (PAIRS). OPEN_LOOP
is the work plugin under a fixed offered rate. TARGETS are the issue's targets as
ratios between two MAIN rows.
"""

from __future__ import annotations

from typing import Any

import attrs
from servers import HELLO_ADA, Variant

BASELINE = "baseline: aiohttp + uvloop + Python handler"
GRANIAN = "granian (RSGI) + Python handler"
LANE_INLINE = "lane: hello (C), inline (dispatch: auto)"
LANE_POOL = "lane: hello (C), thread pool (dispatch: pool)"
LANE_PROCESS = "lane: hello (C), isolation: process"
AIOHTTP_INLINE = "aiohttp engine: hello (C), inline"
LANE_STATIC = "lane: static endpoint"
LANE_WEATHER = "lane: weather (Rust), inline"
LANE_INLINE_PY = "lane: hello (C), inline, compiled step off"
LANE_WEATHER_PY = "lane: weather (Rust), inline, compiled step off"

_hello: dict[str, Any] = {"expect": HELLO_ADA, "measured": "hello"}
_weather: dict[str, Any] = {"target": "/weather/london", "measured": "weather"}

MAIN = [
    Variant(BASELINE, "baseline", expect=HELLO_ADA),
    Variant(GRANIAN, "granian", expect=HELLO_ADA),
    Variant("Extism (wasm) hello, called from an aiohttp handler", "extism", expect=HELLO_ADA),
    Variant(LANE_INLINE, "backworks", plugins={"hello": {"dispatch": "auto"}}, **_hello),
    Variant(LANE_POOL, "backworks", plugins={"hello": {"dispatch": "pool"}}, **_hello),
    Variant(LANE_PROCESS, "backworks", plugins={"hello": {"isolation": "process"}}, **_hello),
    Variant(AIOHTTP_INLINE, "backworks", engine="aiohttp",
            plugins={"hello": {"dispatch": "auto"}}, **_hello),
    Variant(LANE_STATIC, "backworks", target="/static"),
    Variant(LANE_WEATHER, "backworks", plugins={"weather": {"dispatch": "auto"}}, **_weather),
    Variant(LANE_INLINE_PY, "backworks", compiled_step=False,
            plugins={"hello": {"dispatch": "auto"}}, **_hello),
    Variant(LANE_WEATHER_PY, "backworks", compiled_step=False,
            plugins={"weather": {"dispatch": "auto"}}, **_weather),
]  # fmt: skip

SECONDARY = [
    Variant("lane: hello (C), inline, 2 processes (--workers 2, one core)", "backworks",
            workers=2, plugins={"hello": {"dispatch": "auto"}}, **_hello),
    Variant("lane: weather (Rust), inline, 2 processes (--workers 2, one core)", "backworks",
            workers=2, plugins={"weather": {"dispatch": "auto"}}, **_weather),
    Variant("lane: weather (Rust), thread pool", "backworks",
            plugins={"weather": {"dispatch": "pool"}}, **_weather),
    Variant("lane: weather (Rust), isolation: process", "backworks",
            plugins={"weather": {"isolation": "process"}}, **_weather),
    Variant("lane: hello (C), inline, otel extra absent", "backworks", otel="absent",
            plugins={"hello": {"dispatch": "auto"}}, **_hello),
    Variant("lane: hello (C), inline, traced (otel, console exporter)", "backworks",
            otel="console", plugins={"hello": {"dispatch": "auto"}}, **_hello),
]  # fmt: skip

# (what, the row, the row it is compared with): ratios of throughput from CPU and req/s.
PAIRS = [
    ("hello (C): 2 processes over 1, on one core", SECONDARY[0].name, LANE_INLINE),
    ("weather (Rust): 2 processes over 1, on one core", SECONDARY[1].name, LANE_WEATHER),
    ("tracing code: otel absent over installed but off", SECONDARY[4].name, LANE_INLINE),
    ("traced over untraced", SECONDARY[5].name, LANE_INLINE),
    ("hello (C) inline over the static endpoint", LANE_INLINE, LANE_STATIC),
    ("hello (C) inline: compiled step on over off", LANE_INLINE, LANE_INLINE_PY),
    ("weather (Rust) inline: compiled step on over off", LANE_WEATHER, LANE_WEATHER_PY),
]


@attrs.frozen
class Target:
    """A target (issues 13, 19): a row's throughput over a reference row's, at least `goal`."""

    what: str
    row: str
    reference: str
    goal: float
    strictly: bool = False  # `ahead of`: the ratio must exceed the goal


TARGETS = [
    Target("hello through the lane, inline", LANE_INLINE, BASELINE, 2.0),
    Target("hello through the lane, thread pool", LANE_POOL, BASELINE, 1.8),
    Target("hello through the lane, isolation: process", LANE_PROCESS, BASELINE, 1.2),
    Target("hello through the aiohttp engine (the fallback)", AIOHTTP_INLINE, BASELINE, 0.7),
    Target("the lane (inline) ahead of granian + Python handler", LANE_INLINE, GRANIAN, 1.0,
           strictly=True),
    Target("weather (Rust) through the lane", LANE_WEATHER, BASELINE, 1.0),
]  # fmt: skip


@attrs.frozen
class OpenLoopRow:
    """A work-plugin row: its server and the offered rate it is held at."""

    variant: Variant
    rate: float


def _work(what: str, target: str, plugin: str, rate: float, **settings: str) -> OpenLoopRow:
    how = ", ".join(f"{k}: {v}" for k, v in settings.items())
    variant = Variant(f"{what}, {how}", "backworks", target=target,
                      plugins={plugin: settings}, measured=plugin)  # fmt: skip
    return OpenLoopRow(variant, rate)


OPEN_LOOP = [
    _work("5 µs CPU", "/spin?us=5", "spin", 2000, dispatch="auto"),
    _work("5 µs CPU", "/spin?us=5", "spin", 2000, dispatch="pool"),
    _work("50 µs CPU", "/spin?us=50", "spin", 2000, dispatch="auto"),
    _work("50 µs CPU", "/spin?us=50", "spin", 2000, dispatch="pool"),
    _work("1 ms CPU", "/spin?us=1000", "spin", 500, dispatch="auto"),
    _work("1 ms CPU", "/spin?us=1000", "spin", 500, dispatch="pool"),
    _work("blocks 10 ms", "/block?ms=10", "block", 200, dispatch="pool"),
    _work("blocks 10 ms", "/block?ms=10", "block", 200, isolation="process"),
]
