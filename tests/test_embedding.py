"""Backworks mounted in an aiohttp application of the test's own, under a prefix."""

from __future__ import annotations

from pathlib import Path

import yaml
from aiohttp import web

import backworks
from backworks.http.aio.state import HOST
from tests.serving import Kit, MakeClient


async def home(_: web.Request) -> web.Response:
    return web.json_response({"app": "mine"})


def parent_with_backworks(tmp_path: Path) -> tuple[web.Application, web.Application]:
    marker = tmp_path / "shutdown.txt"
    (tmp_path / "backworks.yaml").write_text(
        yaml.safe_dump(
            {
                "plugin_discovery": {"enabled": True, "directories": ["./plugins"]},
                "plugins": {"kit": {"config": {"marker": str(marker)}}},
                "endpoints": {
                    "/items/{id}": {
                        "method": "GET",
                        "runtime": {"type": "plugin", "handler": "kit"},
                    },
                    "/static": {"method": "GET", "response": {"status": 200, "body": "{}"}},
                },
            }
        )
    )
    parent = web.Application()
    parent.router.add_get("/", home)
    mounted = backworks.mount(parent, "/bw", backworks.load_config(tmp_path / "backworks.yaml"))
    return parent, mounted


async def test_a_mounted_backworks_answers_its_endpoints_under_the_prefix(
    kit: Kit, tmp_path: Path, aiohttp_client: MakeClient
) -> None:
    kit("kit")
    parent, _ = parent_with_backworks(tmp_path)
    client = await aiohttp_client(parent)

    assert await (await client.get("/")).json() == {"app": "mine"}, "the app's own route"
    resp = await client.get("/bw/items/42?x=1")
    assert resp.status == 200
    seen = await resp.json()
    assert (seen["path"], seen["endpoint"], seen["params"]) == (
        "/items/42",
        "/items/{id}",
        [["id", "42"]],
    ), "the plugin sees the path below the prefix"
    assert resp.headers["X-Request-Id"] == seen["request_id"]
    assert (await client.get("/bw/static")).status == 200
    assert (await client.get("/bw/plugins/kit/status?code=201")).status == 201
    missing = await client.get("/bw/nowhere")
    assert missing.status == 404
    assert (await missing.json())["error"]["request_id"] == missing.headers["X-Request-Id"]
    assert (await client.get("/items/42")).status == 404, "nothing outside the prefix"

    health = await client.get("/bw/_backworks/health")
    assert health.status == 200
    metrics = await (await client.get("/bw/metrics")).text()
    assert 'backworks_http_requests_total{method="GET",route="/items/{id}",status="200"} 1.0' in (
        metrics
    )


async def test_the_plugins_start_and_stop_with_the_parent_app(
    kit: Kit, tmp_path: Path, aiohttp_client: MakeClient
) -> None:
    kit("kit")
    parent, mounted = parent_with_backworks(tmp_path)
    host = mounted[HOST]
    assert host.runners == {}, "nothing loads before the parent starts"
    client = await aiohttp_client(parent)
    assert set(host.runners) == {"kit"}, "loaded before the first request"
    assert (await client.get("/bw/items/1")).status == 200
    await client.close()  # the parent's cleanup
    assert (tmp_path / "shutdown.txt").read_text().count("\n") == 1, "shutdown ran once"
