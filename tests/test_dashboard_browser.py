"""The dashboard in a real headless browser: it loads, shows the plugins, and follows traffic.

The browser is Debian's chromium (`scripts/install-browser` installs it), driven by
playwright's bundled driver; nothing is downloaded. Where no chromium could be
installed the test skips and says so. `BACKWORKS_UPDATE_SCREENSHOT=1` also writes
the screenshot to docs/dashboard.png (the README shows it).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright

from backworks.http.aio.state import RELOADER
from tests.serving import Client, Kit, Serve

CHROMIUM = Path(os.environ.get("BACKWORKS_BROWSER", "/usr/bin/chromium"))
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "dashboard.png"
TOKEN = "let-me-in"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(
            f"no browser at {CHROMIUM}: scripts/install-browser installs Debian's chromium "
            "(it needs root and apt-get), or set BACKWORKS_BROWSER to a chromium binary"
        )
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        await browser.close()


async def open_dashboard(browser: Browser, client: Client) -> tuple[Page, list[str]]:
    """The page at a laptop's size, and the errors it reports (script errors, CSP)."""
    # 1,280 px: the width of a common laptop, the narrowest the layout must fit whole.
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))

    def console(msg: ConsoleMessage) -> None:
        # Failed admin actions (a 401, a 404) are answers the page handles, not faults.
        if msg.type == "error" and "Failed to load resource" not in msg.text:
            problems.append(f"console: {msg.text}")

    page.on("console", console)
    await page.goto(str(client.make_url("/_backworks/")))
    return page, problems


def plugin(name: str) -> dict[str, str]:
    return {"type": "plugin", "handler": name}


async def updates(page: Page) -> int:
    return int(await page.evaluate("Number(document.body.dataset.updates || 0)"))


async def test_dashboard_shows_plugins_and_follows_requests(
    kit: Kit, serve: Serve, browser: Browser, tmp_path: Path
) -> None:
    for name in ("weather", "auth", "orders"):
        kit(name, thread_safe=name != "orders")
    kit("legacy")
    client = await serve(
        {
            "name": "demo-api",
            "version": "2.4.0",
            "dashboard": {"enabled": True},
            "admin": {"token": TOKEN},
            "hooks": ["auth"],
            "endpoints": {
                "/weather/{city}": {"method": "GET", "runtime": plugin("weather")},
                "/orders": {"methods": ["GET", "POST"], "runtime": plugin("orders")},
                "/orders/{id}": {"method": "GET", "runtime": plugin("orders")},
                "/health": {"method": "GET", "response": {"status": 200, "body": "{}"}},
            },
            "plugins": {
                "weather": {"timeout_ms": 300},
                "orders": {"circuit_breaker": {"failure_threshold": 2}},
                "legacy": {"config": {"fail_init": True}},
                "reports": {"enabled": False},
            },
        }
    )
    page, problems = await open_dashboard(browser, client)
    plugin_names = page.locator("#plugins td .name")
    await plugin_names.first.wait_for()
    names = await plugin_names.all_text_contents()
    assert names == ["auth", "legacy", "orders", "reports", "weather"]
    # A plugin's own words are for the operator: hidden until the admin token is typed.
    legacy = page.locator("#plugins tr", has=page.locator(".name", has_text="legacy"))
    await legacy.get_by_text("hidden: send the admin token").wait_for()
    assert await page.get_by_text("fail_init is set").count() == 0
    assert await page.locator("#recent").inner_text() == "No requests yet."

    for city in ("paris", "oslo", "lima"):
        assert (await client.get(f"/weather/{city}")).status == 200
    await client.post("/orders", data=b'{"item": 1}')
    await client.get("/orders/42", headers={"x-deny": "1"})
    await client.get("/plugins/weather/wait?ms=2000")  # times out: 504
    for _ in range(2):
        await client.get("/plugins/orders/fail")
    await client.get("/orders/7")  # the circuit is open: 503
    await client.get("/health")
    await client.get("/nowhere")

    # The page catches up by itself, within a poll or two. Anonymous, it shows how many
    # requests got which status; with the token, the requests themselves.
    await page.get_by_text("404: 1").wait_for(timeout=5000)
    assert "type the admin token to see them" in await page.locator("#recent").inner_text()
    assert "/nowhere" not in await page.locator("#recent").inner_text()
    await page.fill("#token", TOKEN)
    await page.locator("#recent tr").nth(9).wait_for(timeout=5000)
    first = await page.locator("#recent tr").first.inner_text()
    assert "/nowhere" in first
    assert "404" in first
    orders = page.locator("#plugins tr", has=page.locator(".name", has_text="orders"))
    await orders.get_by_text("open", exact=True).wait_for()
    await orders.get_by_role("button", name="Close circuit").wait_for()
    assert await page.locator("#c-ready").inner_text() == "3 / 5"

    # The charts: a row per running plugin, four charts each, fed by 1 s points.
    rows = page.locator("#charts .chart-row")
    await page.wait_for_function(
        """() => {
          const row = (n) => document.querySelector(`#charts .chart-row[data-plugin="${n}"]`);
          return row("weather") && row("weather").dataset.requests === "4"
            && row("orders") && row("orders").dataset.requests === "4";
        }""",
        timeout=10_000,
    )
    plugins = await rows.evaluate_all("rows => rows.map(r => r.dataset.plugin)")
    assert plugins == ["auth", "orders", "weather"]
    for name in plugins:
        kinds = page.locator(f'#charts svg[data-plugin="{name}"]')
        assert await kinds.evaluate_all("s => s.map(e => e.dataset.chart)") == [
            "rate", "latency", "errors", "breaker",
        ]  # fmt: skip
    # Two seconds or more make a line (a fast test may have served all in its first).
    await page.wait_for_function(
        """() => Number(document.querySelector('#charts .chart-row[data-plugin="weather"]')
                         .dataset.points) >= 2""",
        timeout=10_000,
    )
    weather_rate = page.locator('svg[data-chart="rate"][data-plugin="weather"] path')
    assert "L" in (await weather_rate.get_attribute("d") or ""), "a line, not a dot"
    latency = page.locator('svg[data-chart="latency"][data-plugin="weather"] path.p99')
    assert "M" in (await latency.get_attribute("d") or "")
    errors = page.locator('svg[data-chart="errors"][data-plugin="orders"] path')
    assert "M" in (await errors.get_attribute("d") or "")
    # The breaker opening shows on its chart, and only on the plugin whose breaker opened.
    await page.locator(
        'svg[data-chart="breaker"][data-plugin="orders"] rect.band.open'
    ).first.wait_for()
    assert await page.locator('svg[data-chart="breaker"][data-plugin="weather"] rect').count() == 0
    (worker,) = await page.locator("#workers tr").all()
    assert str(os.getpid()) in await worker.inner_text()

    # The window fits the data: seconds of traffic fill the chart, not a sliver at its
    # right edge of 15 minutes; the x axis says how far back it goes, the y axis how high.
    weather_svg = page.locator('svg[data-chart="rate"][data-plugin="weather"]')
    assert int(await weather_svg.get_attribute("data-span") or 0) <= 120
    assert "15 minutes" not in await page.locator("#charts-title").inner_text()
    x_axis = page.locator('.chart-row[data-plugin="weather"] [data-axis="x"]').first
    ticks = await x_axis.locator("span").all_text_contents()
    assert ticks[-1] == "now"
    assert re.fullmatch(r"-[0-9]+ s", ticks[0]), ticks
    first_x = await page.evaluate(
        """() => {
          const d = document.querySelector('svg[data-chart="rate"][data-plugin="weather"] path')
            .getAttribute("d");
          return Number(d.match(/^M([0-9.]+)/)[1]);
        }"""
    )
    assert first_x < 900 * 0.9, f"the first point starts at x={first_x} of 900, not at the edge"
    y_axis = page.locator('svg[data-chart="errors"][data-plugin="weather"]').locator("..")
    y_ticks = await y_axis.locator('[data-axis="y"] span').all_text_contents()
    assert y_ticks[-1] == "0%"
    assert y_ticks[0] != "100%", "the error axis fits the errors there were (none: 1%)"
    # p50 and p99 are told apart by hue and by dash, and named in their colours.
    colours = await page.evaluate(
        """() => ["p50", "p99", "rate", "errors"].map((c) => {
          const path = document.querySelector(`#charts path.${c}`);
          const style = getComputedStyle(path);
          return [style.stroke, style.strokeDasharray];
        })"""
    )
    strokes = [stroke for stroke, _ in colours]
    assert len(set(strokes)) == 4, strokes
    assert colours[0][1] != colours[1][1], "p99 is dashed, p50 is not"
    legend = page.locator('.chart-row[data-plugin="weather"] .key')
    assert "p99 ms" in await legend.all_text_contents()

    # 404s and 5xx by route: one line per route and status, counted.
    summary = page.locator("#errors-by-route")
    await summary.locator('tr[data-route="<unmatched>"][data-status="404"]').wait_for()
    by_route = {
        (await row.get_attribute("data-route"), await row.get_attribute("data-status")): (
            await row.locator("td").nth(2).inner_text()
        )
        for row in await summary.locator("tr").all()
    }
    assert by_route[("<unmatched>", "404")] == "1"
    assert by_route[("/plugins/{plugin}/{tail:.*}", "504")] == "1"
    assert by_route[("/plugins/{plugin}/{tail:.*}", "502")] == "2"
    assert by_route[("/orders/{id}", "503")] == "1"
    assert ("/orders/{id}", "401") not in by_route, "only 404 and 5xx"

    # Everything fits 1,280 px: no page-wide scrolling, no table wider than its box.
    overflow = await page.evaluate(
        """() => [document.documentElement.scrollWidth,
                  ...[...document.querySelectorAll(".table-wrap")]
                      .filter((w) => w.scrollWidth > w.clientWidth + 1)
                      .map((w) => w.closest("section").querySelector("h2").textContent)]"""
    )
    widths = await page.evaluate(
        """() => [...document.querySelectorAll("#plugins tr:first-child td, thead th")]
                  .map((c) => c.textContent.slice(0, 20) + "=" + c.offsetWidth)"""
    )
    assert overflow == [1280], " ".join(widths)

    before = await updates(page)
    points = int(await rows.first.get_attribute("data-points") or 0)
    await asyncio.sleep(2.5)
    assert await updates(page) > before, "it keeps polling"
    assert int(await rows.first.get_attribute("data-points") or 0) > points, "the charts move on"

    await page.fill("#token", TOKEN)
    await legacy.get_by_text("kit refuses to start: fail_init is set").wait_for()
    await page.mouse.move(0, 0)
    await page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    if os.environ.get("BACKWORKS_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(tmp_path / "dashboard.png", SCREENSHOT)
    assert problems == []


async def test_admin_buttons_send_the_token_and_report_the_answer(
    kit: Kit, serve: Serve, browser: Browser
) -> None:
    kit("kit")
    client = await serve(
        {
            "dashboard": {"enabled": True},
            "admin": {"token": TOKEN},
            "plugins": {"kit": {"circuit_breaker": {"failure_threshold": 1}}},
        }
    )
    await client.get("/plugins/kit/fail")  # opens the circuit
    page, problems = await open_dashboard(browser, client)
    notice = page.locator("#notice")
    close = page.get_by_role("button", name="Close circuit")
    await close.wait_for()

    await close.click()
    await notice.get_by_text("Type the admin token first.").wait_for()

    await page.fill("#token", "wrong")
    await close.click()
    await notice.get_by_text("The server refused this admin token.").wait_for()

    await page.fill("#token", TOKEN)
    await close.click()
    await notice.get_by_text("Circuit of kit closed.").wait_for()
    await page.locator("#plugins").get_by_text("closed", exact=True).wait_for()
    assert (await client.get("/plugins/kit/status?code=200")).status == 200

    await page.get_by_role("button", name="Reload").click()
    await notice.get_by_text("Plugin kit reloaded.").wait_for()
    assert client.app[RELOADER].statuses["kit"].trigger == "admin"
    assert problems == []


async def test_buttons_are_absent_without_a_configured_token(
    kit: Kit, serve: Serve, browser: Browser
) -> None:
    kit("kit")
    client = await serve({"dashboard": {"enabled": True}})
    page, problems = await open_dashboard(browser, client)
    await page.locator("#plugins td .name").first.wait_for()
    assert await page.locator("#plugins button").count() == 0
    assert not await page.locator("#token").is_visible()
    assert problems == []
