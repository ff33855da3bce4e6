"""The parts of `make bench` that could break without a run noticing: its plugin, its wasm
module, its other apps' answers, its load generator's arithmetic and its report.

No figure is asserted: these machines are shared and noisy, and figures live in
`make bench`. What is pinned down is that each row measures what it says it does.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.serving import MakeClient, Serve

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import baseline_app
import cplugins
import extism_app
import granian_app
import load
import loadgen
import report
import variants
import wasm
from cpu import tree

ADA = {"hello": "Ada"}


async def test_the_work_plugin_spins_and_blocks_through_the_lane(
    plugins_dir: Path, serve: Serve
) -> None:
    cplugins.build_work_plugins(plugins_dir)
    route = {"method": "GET"}
    client = await serve({
        "plugins": {"spin": {"dispatch": "auto"}, "block": {"dispatch": "pool"}},
        "endpoints": {
            "/spin": {**route, "runtime": {"type": "plugin", "handler": "spin"}},
            "/block": {**route, "runtime": {"type": "plugin", "handler": "block"}},
        },
    })  # fmt: skip
    spun = await client.get("/spin", params={"us": "50"})
    assert spun.status == 200
    assert await spun.json() == {"spun_us": 50}
    blocked = await client.get("/block", params={"ms": "1"})
    assert blocked.status == 200
    assert await blocked.json() == {"blocked_ms": 1}
    state = await (await client.get("/_backworks/plugins")).json()
    dispatch = {row["name"]: row.get("dispatch") for row in state["plugins"]}
    assert dispatch == {"spin": "inline", "block": "pool"}


def test_the_wat_module_answers_the_hello_json_through_extism() -> None:
    import extism  # type: ignore[import-untyped]

    plugin = extism.Plugin(wasm.hello_wasm(), wasi=False)
    assert plugin.call("hello", b"Ada") == b'{"hello": "Ada"}'
    for name in ["", 'quote " and \\ backslash', "tab\tnewline\n\x01", "héllo", "x" * 70_000]:
        answer = plugin.call("hello", name.encode())
        assert json.loads(answer) == {"hello": name}


async def _answer(app: web.Application, client: MakeClient) -> tuple[int, Any]:
    http = await client(app)
    resp = await http.get("/hello", params={"name": "Ada"})
    return resp.status, await resp.json()


async def test_the_extism_and_baseline_apps_answer_hello_ada(aiohttp_client: MakeClient) -> None:
    assert await _answer(extism_app.make_app(), aiohttp_client) == (200, ADA)
    assert await _answer(baseline_app.make_app(), aiohttp_client) == (200, ADA)


class _Protocol:
    """What granian hands an RSGI app, as far as the bench's app uses it."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, list[tuple[str, str]], bytes]] = []

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.answers.append((status, headers, body))


class _Scope:
    def __init__(self, path: str, query_string: str) -> None:
        self.proto, self.path, self.query_string = "http", path, query_string


async def test_the_granian_app_answers_hello_ada() -> None:
    protocol = _Protocol()
    await granian_app.app(_Scope("/hello", "name=Ada"), protocol)  # type: ignore[arg-type]
    await granian_app.app(_Scope("/other", ""), protocol)  # type: ignore[arg-type]
    (status, _, body), (missing, _, _) = protocol.answers
    assert (status, json.loads(body), missing) == (200, ADA, 404)


def test_the_open_loop_schedule_is_fixed_in_advance() -> None:
    due = loadgen.schedule(rate=200, duration=0.5, start=10.0)
    assert len(due) == 100
    assert due[0] == 10.0
    assert all(abs((b - a) - 0.005) < 1e-9 for a, b in itertools.pairwise(due))


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert loadgen.percentile(values, 0.5) == 50
    assert loadgen.percentile(values, 0.99) == 99
    assert loadgen.percentile(values, 1.0) == 100
    assert loadgen.percentile([7.0], 0.99) == 7


async def test_open_loop_latency_counts_from_the_due_time_not_the_send(
    aiohttp_client: MakeClient,
) -> None:
    """One connection to a server taking 20 ms per answer, offered one request per 10 ms:
    the server falls behind, and the n-th answer cannot come before (n + 1) x 20 ms while
    it was due at n x 10 ms, so the latencies must grow with the queue (a closed loop
    would have waited, and measured 20 ms each)."""

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.02)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/slow", slow)
    client = await aiohttp_client(app)
    url = str(client.make_url("/slow"))
    result = await loadgen.open_loop(url, 100, 0.3, 0, connections=1, drain=10)
    assert result["completed"] == result["scheduled"] == 30
    assert result["errors"] == result["unfinished"] == 0
    # The 30th answer: due at 0.29 s, answered no sooner than 0.6 s.
    assert result["max_us"] >= 300_000


async def test_the_closed_loop_counts_answers_and_errors(aiohttp_client: MakeClient) -> None:
    async def teapot(request: web.Request) -> web.Response:
        return web.Response(status=418)

    app = web.Application()
    app.router.add_get("/teapot", teapot)
    client = await aiohttp_client(app)
    result = await loadgen.closed_loop(str(client.make_url("/teapot")), 0.2, 2)
    assert result["requests"] > 0
    assert result["errors"] == result["requests"]


def test_wrk_output_is_read_with_its_errors() -> None:
    out = """Running 5s test @ http://127.0.0.1:1/hello
  1 threads and 64 connections
  123456 requests in 5.00s, 17.67MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  24691.20
"""
    burst = load.parse_wrk(out)
    assert (burst.requests, burst.seconds, burst.errors) == (123456, 5.0, 7)
    assert burst.rate == 123456 / 5.0


def test_a_servers_process_tree_takes_in_its_childrens_children() -> None:
    """Worker processes (granian's, `isolation: process`) are counted in a row's CPU."""
    grandchild = "import sys; sys.stdin.read()"
    code = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {grandchild!r}])"
    with subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE) as child:
        try:
            deadline = time.monotonic() + 20
            while len(members := tree(os.getpid())) < 3:
                assert time.monotonic() < deadline, members
                time.sleep(0.05)
            assert child.pid in members
        finally:
            child.kill()


def test_targets_say_by_how_much_they_are_missed() -> None:
    def rounds(cpu_us: float, rps: float) -> list[dict[str, float]]:
        return [{"cpu_us": cpu_us, "rps": rps}] * 3

    results = {name: rounds(40.0, 25_000) for name in (variants.BASELINE, variants.GRANIAN)}
    results[variants.LANE_INLINE] = rounds(16.0, 40_000)  # 2.5x by CPU, 1.6x by req/s
    table, records = report.targets_table(results)
    inline = records[0]
    assert inline["target"] == "hello through the lane, inline"
    assert (round(inline["by_cpu"], 2), round(inline["by_rate"], 2)) == (2.5, 1.6)
    assert inline["verdict_cpu"] == "met (+0.50)"
    assert inline["verdict_rate"] == "**missed** by 0.40 (20% short)"
    assert "ahead of granian" in table
    assert len(records) == 2, "targets whose rows were not measured are left out"
