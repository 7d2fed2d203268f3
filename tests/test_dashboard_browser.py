"""The web dashboard in a real browser: Debian's chromium, headless, driven by Playwright,
on the dashboard mounted in a FastAPI app served by uvicorn, over a scheduler that runs
its own worker on the real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pytest
import redis.asyncio as aioredis
import uvicorn
from fastapi import FastAPI

from cml_jobs import BackgroundTaskScheduler, RecurrentTaskDescriptor
from cml_jobs._descriptors import encode_descriptor
from cml_jobs.stores import NewTask
from cml_jobs.stores.redis import RedisScheduleStore
from cml_jobs.web import dashboard
from tests.ci import unavailable

pytestmark = pytest.mark.redis

CHROMIUM = "/usr/bin/chromium"
DEADLINE_MS = 30_000
XSS_DATA = "<script>window.__xss = 'data'</script>"
XSS_ID = "<script>window.__xss='id'</script>"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Headless chromium; under CI=true a missing browser fails the test (make browser)."""
    if not shutil.which(CHROMIUM):
        unavailable(f"{CHROMIUM} is missing; run `make browser` (apt-get install chromium)")
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=DEADLINE_MS)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        yield launched
        await launched.close()


@dataclass
class Site:
    """The app on a free port: the dashboard at /jobs, and read-only at /ro."""

    base: str
    scheduler: BackgroundTaskScheduler
    store: RedisScheduleStore
    gate: str


async def _schedule(site: Site, redis_url: str) -> None:
    bus = site.scheduler.bus
    await bus.schedule_task(
        RecurrentTaskDescriptor(
            id="report-daily",
            name="GatedReportJob",
            data={"redis_url": redis_url, "gate": site.gate},
            interval=86_400,
        )
    )
    for i in range(30):
        await bus.schedule_task(
            RecurrentTaskDescriptor(id=f"sync-{i:02}", name="QuietJob", interval=3600)
        )
    await bus.schedule_task(
        RecurrentTaskDescriptor(
            id="xss-data", name="QuietJob", data={"label": XSS_DATA}, interval=3600
        )
    )
    # An id no descriptor may have, written behind the bus's back (a tampered store).
    now = datetime.now(timezone.utc)
    fake = encode_descriptor(RecurrentTaskDescriptor(id="fake", name="QuietJob", interval=3600))
    await site.store.add(NewTask(XSS_ID, fake, now, now), replace=False)


@pytest.fixture
async def site(
    redis_client: aioredis.Redis, redis_url: str, key_prefix: str
) -> AsyncIterator[Site]:
    scheduler = BackgroundTaskScheduler.configure(
        redis_url=redis_url,
        modules=["tests.fixtures.dashboard_jobs"],
        key_prefix=key_prefix,
        run_worker=True,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with scheduler:
            yield

    app = FastAPI(lifespan=lifespan)
    app.mount("/jobs", dashboard(scheduler))
    app.mount("/ro", dashboard(scheduler, read_only=True))
    port = _free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    async with asyncio.timeout(30):
        while not server.started:
            assert not serving.done(), "uvicorn stopped during start-up"
            await asyncio.sleep(0.05)
    found = Site(
        f"http://127.0.0.1:{port}",
        scheduler,
        RedisScheduleStore(redis_client, prefix=key_prefix),
        f"{key_prefix}gate",
    )
    await _schedule(found, redis_url)
    try:
        yield found
    finally:
        server.should_exit = True
        await serving


async def test_an_operator_finds_pauses_and_triggers_a_task(browser: Any, site: Site) -> None:
    """Search finds the task; pausing with a note shows both; a triggered run appears in
    the history while the page stays loaded (the live feed)."""
    from playwright.async_api import expect

    page = await browser.new_page()
    page.set_default_timeout(DEADLINE_MS)
    await page.goto(f"{site.base}/jobs/")
    await expect(page.locator("#count")).to_contain_text("of 33 task(s)")
    await page.get_by_label("search").fill("report")
    await page.get_by_role("button", name="Filter").click()
    await expect(page.locator("#tasks tbody tr")).to_have_count(1)
    await page.get_by_role("link", name="report-daily").click()

    await page.get_by_label("note").fill("waiting for the <b>new</b> SMTP relay")
    await page.get_by_role("button", name="Pause").click()
    await expect(page.locator("#state")).to_have_text("paused")
    await expect(page.locator("#note")).to_have_text("waiting for the <b>new</b> SMTP relay")
    assert (await site.scheduler.bus.get_task("report-daily")).note is not None

    await page.get_by_role("button", name="Trigger").click()
    await page.wait_for_load_state()
    await page.evaluate("window.__same_page = true")
    await expect(page.locator("#history tbody")).to_contain_text("no run recorded yet")
    redis = site.store.client
    await redis.rpush(site.gate, "1")  # the triggered run may finish now
    await expect(page.locator("#history tbody td.outcome-succeeded")).to_have_count(1)
    assert await page.evaluate("window.__same_page") is True  # no reload: the live feed
    await expect(page.locator("#state")).to_have_text("paused")  # triggering keeps it paused
    await page.close()


async def test_task_ids_and_data_are_shown_as_text(browser: Any, site: Site) -> None:
    """A task whose id or data holds a <script> shows it as text and runs none of it."""
    from playwright.async_api import expect

    page = await browser.new_page()
    page.set_default_timeout(DEADLINE_MS)
    await page.goto(f"{site.base}/jobs/?q=script")
    await expect(page.locator("#tasks td.id")).to_have_text([XSS_ID])
    await page.get_by_role("link", name=XSS_ID).click()
    await expect(page.locator("h1")).to_have_text(XSS_ID)
    await page.goto(f"{site.base}/jobs/task?id=xss-data")
    await expect(page.locator("#descriptor")).to_contain_text(XSS_DATA)
    assert await page.evaluate("window.__xss") is None
    await page.close()


async def test_a_post_without_the_csrf_token_is_refused(browser: Any, site: Site) -> None:
    """The browser holds the cookie, but a POST without the form's token (or with a
    forged one) is refused with 403, and the task is not paused."""
    page = await browser.new_page()
    await page.goto(f"{site.base}/jobs/task?id=sync-01")
    url = f"{site.base}/jobs/act/pause"
    missing = await page.request.post(url, form={"task_id": "sync-01"})
    forged = await page.request.post(url, form={"task_id": "sync-01", "csrf_token": "made.up"})
    assert (missing.status, forged.status) == (403, 403)
    assert "CSRF" in await missing.text()
    assert not (await site.scheduler.bus.get_task("sync-01")).paused
    await page.close()


async def test_read_only_hides_and_refuses_actions(browser: Any, site: Site) -> None:
    """read_only=True shows no action, and refuses a POST even with a valid token."""
    from playwright.async_api import expect

    page = await browser.new_page()
    await page.goto(f"{site.base}/jobs/task?id=sync-02")  # a writable page gives a token
    token = await page.locator("input[name=csrf_token]").first.get_attribute("value")
    await page.goto(f"{site.base}/ro/task?id=sync-02")
    await expect(page.locator("#state")).to_have_text("scheduled")
    await expect(page.get_by_role("button")).to_have_count(0)
    refused = await page.request.post(
        f"{site.base}/ro/act/pause", form={"task_id": "sync-02", "csrf_token": token or ""}
    )
    assert refused.status == 403 and "read-only" in await refused.text()
    assert not (await site.scheduler.bus.get_task("sync-02")).paused
    await page.close()
