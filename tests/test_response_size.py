"""`max_response_mb`: a plugin's answer over its limit is refused before it is copied.

A real C plugin answers as many bytes as asked for; the real server answers 502
`plugin_failed` with the fixed message, logs why, and counts a failure of the plugin,
in-process and in worker processes (where the worker refuses it, before it is framed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from backworks.http.aio.state import HOST
from tests.conftest import BuildPlugin
from tests.serving import Client, Serve, error_of

BIG = r"""
#include <backworks/sdk.h>

/* /answer?bytes=N answers N zero bytes from a block kept between calls (no copy). */
static char *block;
static size_t block_size;

static int32_t big_handle(void *state, const bw_request *req, bw_response *resp) {
    char buf[32];
    size_t n = bw_query_get(req, "bytes", buf, sizeof buf) > 0 ? (size_t)atol(buf) : 0;
    (void)state;
    if (n > block_size) {
        free(block);
        block = calloc(n, 1);
        block_size = block ? n : 0;
        if (!block) return bw_fail(resp, "out of memory");
    }
    return bw_respond(resp, 200, "application/octet-stream", NULL, 0, block, n);
}

BW_DEFINE_PLUGIN(.name = "big", .version = "1.0.0", .description = "answers N bytes",
                 .init = bw_init_stateless, .handle = big_handle)
"""

MiB = 1 << 20
both_isolations = pytest.mark.parametrize("isolation", ["in-process", "process"])


@pytest.fixture
def big(build_plugin: BuildPlugin, plugins_dir: Path) -> Path:
    return build_plugin(BIG, name="big", folder=plugins_dir)


async def serve_big(serve: Serve, **settings: Any) -> Client:
    # dispatch: pool, so the answer goes through the pool threads (and their release).
    return await serve({"plugins": {"big": {"dispatch": "pool", **settings}}})


@both_isolations
async def test_an_answer_over_max_response_mb_is_a_502_counted_as_a_plugin_failure(
    big: Path, serve: Serve
) -> None:
    client = await serve_big(serve, max_response_mb=1)
    exact = await client.get(f"/plugins/big/answer?bytes={MiB}")
    assert exact.status == 200
    assert await exact.read() == bytes(MiB)

    with capture_logs() as logs:
        over = await client.get(f"/plugins/big/answer?bytes={MiB + 1}")
    assert over.status == 502
    error = await error_of(over)
    assert (error["code"], error["plugin"]) == ("plugin_failed", "big")
    assert str(MiB + 1) not in error["message"], "the details are for the log"
    (failed,) = [e for e in logs if e["event"] == "plugin_failed"]
    assert failed["error"] == (
        f"answered with a body of {MiB + 1} bytes, more than its limit of {MiB} bytes "
        "(max_response_mb); the answer was refused"
    )
    counters = client.app[HOST].runners["big"].stats.to_json()
    assert (counters["ok"], counters["failed"]) == (1, 1)
    assert (await client.get("/plugins/big/answer?bytes=10")).status == 200, "it serves on"


@both_isolations
async def test_the_default_limit_is_64_mib(big: Path, serve: Serve) -> None:
    client = await serve_big(serve)
    with capture_logs() as logs:
        resp = await client.get(f"/plugins/big/answer?bytes={64 * MiB + 1}")
    assert resp.status == 502
    (failed,) = [e for e in logs if e["event"] == "plugin_failed"]
    assert f"more than its limit of {64 * MiB} bytes" in failed["error"]
