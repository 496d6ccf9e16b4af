"""The demo page and the browser client in a real Chromium (Debian's, driven by Playwright).

The gateway runs as a child process on a fixed port so that it can be restarted under the
page; the page must reconnect by itself and finish the job with no duplicate and no hole.
A screenshot of the finished page goes to `.ci/artifacts/` (CI keeps it).
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import shutil
import signal
import threading
from collections.abc import AsyncIterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis.asyncio as redis
from playwright.async_api import Browser, Page, async_playwright, expect

from service import tokens
from service.config import Settings
from service.model import new_job_id
from tests import ws_client
from tests.conftest import ROOT, make_settings, wait_for
from tests.processes import (
    gateway_process,
    ready,
    refusing_websockets,
    running_gateway,
    running_worker,
)
from tests.redis_servers import RedisServer, free_port
from tests.test_docs import section

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / ".ci" / "artifacts"
STATIC = ROOT / "service" / "gateway" / "static"
# Headless, and kept off the network: this machine allows loopback only.
FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--metrics-recording-only",
]  # fmt: skip

pytestmark = pytest.mark.slow


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=FLAGS
        )
        try:
            yield launched
        finally:
            await launched.close()


async def submit_from_the_page(page: Page, payload: str) -> None:
    await page.get_by_label("Kind").select_option("count")
    await page.get_by_label("Payload (JSON)").fill(payload)
    await page.get_by_role("button", name="Submit and watch").click()


async def shown_seqs(page: Page) -> list[int]:
    values = await page.locator(".job .events li").evaluate_all(
        "items => items.map(i => Number(i.dataset.seq))"
    )
    return [int(v) for v in values]


async def test_the_page_shows_a_count_job_in_order_across_a_gateway_restart(
    browser: Browser, redis_server: RedisServer, settings: Settings, migrated: redis.Redis
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    page = await browser.new_page(viewport={"width": 1100, "height": 900})
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    async with running_worker(settings):
        with gateway_process(redis_server.url, port) as first:
            await wait_for(lambda: ready(base), what="the gateway")
            await page.goto(base)
            # A short job first: all its events, in order.
            await submit_from_the_page(page, '{"n": 5}')
            await expect(page.locator(".job .status")).to_have_text("done")
            assert await shown_seqs(page) == [1, 2, 3, 4, 5, 6]
            await expect(page.locator("#socket")).to_have_text("connected")
            # A longer one, and the gateway restarted in the middle of it.
            await submit_from_the_page(page, '{"n": 40, "interval_ms": 50}')
            latest = page.locator(".job").first
            await page.wait_for_function(
                "() => document.querySelector('.job .events').children.length >= 8",
                timeout=15_000,
            )
            first.send_signal(signal.SIGTERM)
            await asyncio.to_thread(first.wait, 20)
        await expect(page.locator("#socket")).to_have_attribute("data-state", "reconnecting")
        with gateway_process(redis_server.url, port):
            await expect(latest.locator(".status")).to_have_text("done", timeout=30_000)
            await expect(page.locator("#socket")).to_have_text("connected")
            await expect(page.locator("#resume")).to_contain_text("Resumed")
            # The gateway's own figures: this page's socket, and a Redis command rate.
            await expect(page.locator("#mode")).to_have_text("pubsub")
            await expect(page.locator("#sockets")).to_have_text("1", timeout=10_000)
            await expect(page.locator("#commands")).to_have_text(re.compile(r"^\d"), timeout=12_000)
            seqs = await latest.locator(".events li").evaluate_all(
                "items => items.map(i => Number(i.dataset.seq))"
            )
            assert seqs == list(range(1, 42)), seqs
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "demo-page.png"), full_page=True)
            # Readable on a phone: nothing wider than the screen.
            phone = await browser.new_page(viewport={"width": 390, "height": 844})
            await phone.goto(base)
            await expect(phone.locator("#socket")).to_have_text("not open yet")
            # The form is on the first screen, submit button included.
            button = await phone.get_by_role("button", name="Submit and watch").bounding_box()
            assert button is not None and button["y"] + button["height"] <= 844, button
            overflow = await phone.evaluate(
                "() => document.documentElement.scrollWidth - window.innerWidth"
            )
            assert overflow <= 0, f"the page is {overflow} px wider than a phone's screen"
            await phone.screenshot(path=str(ARTIFACTS / "demo-page-phone.png"), full_page=True)
    assert not problems, problems


def _watch_for_problems(page: Page) -> list[str]:
    """Page errors, console errors and any failed request (a favicon 404 included)."""
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on(
        "response",
        lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None,
    )
    return problems


async def test_the_page_explains_itself_and_shows_progress_rate_and_charts(
    browser: Browser, settings: Settings, migrated: redis.Redis
) -> None:
    page = await browser.new_page(viewport={"width": 1100, "height": 900})
    problems = _watch_for_problems(page)
    async with running_worker(settings), running_gateway(settings) as base:
        await page.goto(base)
        # First load: the socket's state and the figures say what they are.
        await expect(page.locator("#socket")).to_have_text("not open yet")
        await expect(page.locator("#socket-hint")).to_be_visible()
        await expect(page.locator("#mode")).to_have_text("pubsub")
        # A payload error goes away as soon as the JSON is valid.
        await page.get_by_label("Payload (JSON)").fill('{"n": ')
        await expect(page.locator("#problem")).to_contain_text("not JSON")
        await page.get_by_label("Payload (JSON)").fill('{"n": 5}')
        await expect(page.locator("#problem")).to_have_text("")
        # A job's progress bar moves, its rate shows, and the bar is full at the end.
        await submit_from_the_page(page, '{"n": 10, "interval_ms": 300}')
        card = page.locator(".job").first
        await expect(card.locator(".progress .fraction")).to_have_text(re.compile(r"^[1-9] / 10"))
        await expect(card.locator(".rate")).not_to_have_text("0.0")
        await expect(card.locator(".status")).to_have_text("done")
        assert await shown_seqs(page) == list(range(1, 12))
        await expect(card.locator(".progress .fraction")).to_have_text("10 / 10")
        full = await card.locator("progress").evaluate("p => [p.value, p.max]")
        assert full == [10, 10], full
        await expect(page.locator("#socket")).to_have_text("connected")
        await expect(page.locator("#socket-hint")).to_be_hidden()
        # The delivery chart shows the job as a spike; the commands chart has readings.
        await expect(page.locator("#chart-delivered")).to_have_attribute(
            "data-max", re.compile(r"^[1-9]")
        )
        await expect(page.locator("#chart-commands")).to_have_attribute(
            "data-points", re.compile(r"^([2-9]|\d\d)")
        )
        # The commands tile and its chart's last point are one figure, read in one refresh.
        tile, last = await page.evaluate(
            "() => [document.getElementById('commands').textContent,"
            " document.getElementById('chart-commands').dataset.last]"
        )
        assert tile == last and re.fullmatch(r"\d+(\.\d)?", tile), (tile, last)
        # Both charts span the whole width from their first readings on.
        for chart in ("#chart-delivered", "#chart-commands"):
            points = await page.locator(f"{chart} polyline").get_attribute("points")
            xs = [float(point.split(",")[0]) for point in (points or "").split()]
            assert xs[0] == 0 and xs[-1] == 300, (chart, xs)
        # A card: the kind as its title, the job id whole on one line, no empty padding shown.
        await expect(card.locator("h3")).to_have_text("count")
        job_id = await card.get_attribute("data-job")
        await expect(card.locator(".id")).to_have_text(job_id or "?")
        assert await card.locator(".id").evaluate("e => e.getClientRects().length") == 1
        lines = await card.locator(".events li").all_text_contents()
        assert lines[0] == 'data {"i":1}' and not any("pad" in line for line in lines), lines
        # A one-event card beside it is not stretched to the height of its row.
        await page.get_by_label("Kind").select_option("echo")
        await page.get_by_role("button", name="Submit and watch").click()
        echo = page.locator(".job").first  # the newest card comes first
        await expect(echo.locator("h3")).to_have_text("echo")
        await expect(echo.locator(".status")).to_have_text("done")
        count_card = page.locator(f'.job[data-job="{job_id}"]')
        heights = [await c.evaluate("e => e.offsetHeight") for c in (echo, count_card)]
        assert heights[0] < heights[1], heights
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "demo-page-charts.png"), full_page=True)
        # Checked and closed while the gateway still runs: its next /metrics read would fail.
        await page.close()
    assert not problems, problems


async def test_the_browser_client_surfaces_errors_that_end_a_watch(
    browser: Browser, redis_server: RedisServer, settings: Settings, migrated: redis.Redis
) -> None:
    unknown = new_job_id()
    page = await browser.new_page()
    async with running_gateway(settings) as base:
        await page.goto(base)
        errors = await page.evaluate(
            """async ([unknown, token]) => {
                const {Resultcast} = await import("/static/resultcast.js");
                const client = new Resultcast();
                const ended = (job, t) => new Promise((resolve) =>
                    client.watch(job, t, {onError: resolve, onEvent: () => resolve("event")}));
                const result = [await ended(unknown, "forged"), await ended(unknown, token)];
                client.close();
                return result;
            }""",
            [unknown, tokens.sign(unknown, settings.secret_key)],
        )
    assert [(e["code"], e["transient"], e["job"]) for e in errors] == [
        ("unauthorized", False, unknown),
        ("gone", False, unknown),
    ], errors


APP_PAGE = """<!doctype html><meta charset="utf-8"><title>an app</title>
<script type="module">
import {configure, watch} from "./resultcast.js";
window.follow = (base, job, token) => new Promise((resolve, reject) => {
  configure({base});
  const seqs = [];
  const onEvent = (e) => seqs.push(e.seq);
  watch(job, token, {onEvent, onDone: () => resolve(seqs), onError: reject});
});
</script>"""


async def test_a_copy_of_the_module_on_another_origin_watches_jobs(
    browser: Browser,
    redis_server: RedisServer,
    settings: Settings,
    migrated: redis.Redis,
    tmp_path: Path,
) -> None:
    """An app serves its own copy of resultcast.js; its backend submitted the job."""
    (tmp_path / "resultcast.js").write_bytes((STATIC / "resultcast.js").read_bytes())
    (tmp_path / "index.html").write_text(APP_PAGE)
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    app = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    serving = threading.Thread(target=app.serve_forever, daemon=True)
    serving.start()
    page = await browser.new_page()
    try:
        async with running_worker(settings), running_gateway(settings) as base:
            job, token = await ws_client.submit(base, "count", {"n": 4})
            await page.goto(f"http://127.0.0.1:{app.server_address[1]}/index.html")
            seqs = await page.evaluate("([b, j, t]) => follow(b, j, t)", [base, job, token])
    finally:
        app.shutdown()
        app.server_close()
    assert seqs == [1, 2, 3, 4, 5]


FOLLOW = """async ([job, token, transport]) => {
    const {Resultcast} = await import("/static/resultcast.js");
    window.states = [];
    const client = new Resultcast(undefined, {onState: (s) => window.states.push(s.state)});
    window.seqs = [];
    window.sources = () => [...client.watches.values()].filter((w) => w.source).length;
    return await new Promise((resolve, reject) => client.watch(job, token, {
        transport,
        onEvent: (e) => window.seqs.push(e.seq),
        onDone: () => resolve(window.seqs),
        onError: (e) => { if (!e.transient) reject(new Error(e.code)); },
    }));
}"""


async def test_an_event_source_watch_goes_on_across_a_gateway_restart(
    browser: Browser, redis_server: RedisServer, settings: Settings, migrated: redis.Redis
) -> None:
    """`transport: "sse"`: the browser's own EventSource, which reconnects by itself with
    Last-Event-ID when the gateway restarts; no duplicate, no hole."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    page = await browser.new_page()
    async with running_worker(settings):
        with gateway_process(redis_server.url, port) as first:
            await wait_for(lambda: ready(base), what="the gateway")
            job, token = await ws_client.submit(base, "count", {"n": 60, "interval_ms": 50})
            await page.goto(base)
            following = asyncio.ensure_future(page.evaluate(FOLLOW, [job, token, "sse"]))
            await page.wait_for_function("() => (window.seqs || []).length >= 8", timeout=15_000)
            first.send_signal(signal.SIGTERM)
            await asyncio.to_thread(first.wait, 20)
        with gateway_process(redis_server.url, port):
            seqs = await asyncio.wait_for(following, 60)
    assert seqs == list(range(1, 62)), seqs


async def test_the_client_falls_back_to_event_streams_when_websockets_are_refused(
    browser: Browser, settings: Settings, migrated: redis.Redis
) -> None:
    page = await browser.new_page()
    async with running_worker(settings), refusing_websockets(settings) as base:
        job, token = await ws_client.submit(base, "count", {"n": 20, "interval_ms": 20})
        await page.goto(base)
        seqs = await asyncio.wait_for(page.evaluate(FOLLOW, [job, token, "auto"]), 60)
        states = await page.evaluate("() => window.states")
    assert seqs == list(range(1, 22)), seqs
    assert states.count("reconnecting") >= 2, states  # it did try WebSockets first


async def test_the_browser_client_passes_transient_errors_and_goes_on(
    browser: Browser, redis_server: RedisServer, migrated: redis.Redis
) -> None:
    """Two watches, one XREAD connection: `capacity` reaches `onError` with `transient: true`,
    and both watches still get every event."""
    settings = make_settings(
        redis_server.url, delivery_mode="xread", xread_max_connections=1, xread_block_ms=200
    )
    page = await browser.new_page()
    async with running_worker(settings), running_gateway(settings) as base:
        jobs = [
            await ws_client.submit(base, "count", {"n": 8, "interval_ms": 100}) for _ in range(2)
        ]
        await page.goto(base)
        result = await page.evaluate(
            """async (jobs) => {
                const {Resultcast} = await import("/static/resultcast.js");
                const client = new Resultcast();
                const errors = [];
                const one = ([job, token]) => new Promise((resolve) => {
                    const seqs = [];
                    client.watch(job, token, {
                        onEvent: (e) => seqs.push(e.seq),
                        onDone: () => resolve(seqs),
                        onError: (e) => errors.push([e.code, e.transient]),
                    });
                });
                const seqs = await Promise.all(jobs.map(one));
                client.close();
                return {seqs, errors};
            }""",
            jobs,
        )
    assert result["seqs"] == [list(range(1, 10))] * 2, result
    assert result["errors"] and {tuple(e) for e in result["errors"]} == {("capacity", True)}


async def test_the_readmes_browser_snippet_runs_as_written(
    browser: Browser, settings: Settings, migrated: redis.Redis
) -> None:
    tour = section((ROOT / "README.md").read_text(), "A five-minute tour")
    (snippet,) = re.findall(r"```js\n(.*?)```", tour, re.DOTALL)
    page = await browser.new_page()
    problems = _watch_for_problems(page)
    logged: list[str] = []
    page.on("console", lambda message: logged.append(message.text))
    async with running_worker(settings), running_gateway(settings) as base:
        await page.goto(base)
        await page.add_script_tag(content=snippet, type="module")
        await wait_for(lambda: "done" in logged, timeout_s=20, what="the snippet's onDone")
        await page.close()
    # onEvent logs "seq data" for each event: five data events and done, in order.
    events = [line for line in logged if line != "done"]
    assert [line.split(" ", 1)[0] for line in events] == ["1", "2", "3", "4", "5", "6"], logged
    assert not problems, problems


async def test_the_admin_view_shows_the_gateways_live_state_given_its_key(
    browser: Browser, settings: Settings, migrated: redis.Redis
) -> None:
    keyed = make_settings(settings.redis_url, admin_key="the-admin-key")
    page = await browser.new_page()
    async with running_gateway(keyed) as base:
        await page.goto(base)
        await page.locator("#admin summary").click()
        await page.get_by_label("Admin key").fill("not-the-key")
        await page.get_by_role("button", name="Show").click()
        await expect(page.locator("#admin-problem")).to_have_text("wrong admin key")
        await page.get_by_label("Admin key").fill("the-admin-key")
        await page.get_by_role("button", name="Show").click()
        await expect(page.locator("#admin-stats")).to_contain_text('"connections"')
        await expect(page.locator("#admin-stats")).to_contain_text('"source": "pubsub"')
        await expect(page.locator("#admin-problem")).to_have_text("")
