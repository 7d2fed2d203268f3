"""Take the dashboard screenshots of docs/operations.md from a real run (`make screenshots`).

A scheduler with its own worker runs a few dozen tasks on Redis (CML_JOBS_REDIS_URL,
default redis://127.0.0.1:6379/15, under a key prefix of its own, deleted afterwards);
the dashboard is mounted in a FastAPI app served by uvicorn, and Debian's chromium
(headless, through Playwright) saves each page to docs/images/.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from playwright.async_api import Page, async_playwright

from cml_jobs import (
    BackgroundTaskScheduler,
    CronTaskDescriptor,
    RecurrentBackgroundJob,
    RecurrentTaskDescriptor,
    ScheduledBackgroundJob,
    ScheduledTaskDescriptor,
    backgroundjob,
)
from cml_jobs.web import dashboard

IMAGES = Path(__file__).parent / "images"
REDIS_URL = os.environ.get("CML_JOBS_REDIS_URL", "redis://127.0.0.1:6379/15")
CUSTOMERS = ["acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka"]


@backgroundjob(task_type="recurrent")
class SyncInvoicesJob(RecurrentBackgroundJob):
    """Pretends to fetch a customer's invoices, taking a little while."""

    def __init__(self, account_id: str) -> None:
        self.account_id = account_id

    async def run_every(self, *args: object, **kwargs: object) -> None:
        await asyncio.sleep(random.uniform(0.02, 0.3))
        if self.account_id == "umbrella" and random.random() < 0.5:
            raise ConnectionError("umbrella's invoice API answered 503")


@backgroundjob(task_type="recurrent")
class RefreshReportJob(RecurrentBackgroundJob):
    """Pretends to rebuild a report."""

    def __init__(self, report: str) -> None:
        self.report = report

    async def run_every(self, *args: object, **kwargs: object) -> None:
        await asyncio.sleep(random.uniform(0.05, 0.15))


@backgroundjob(task_type="scheduled")
class SendNewsletterJob(ScheduledBackgroundJob):
    """Pretends to send one newsletter."""

    def __init__(self, issue: int) -> None:
        self.issue = issue

    async def run_at(self, *args: object, **kwargs: object) -> None:
        """Nothing to send."""


async def _schedule(scheduler: BackgroundTaskScheduler) -> None:
    bus = scheduler.bus
    for customer in CUSTOMERS:
        await bus.schedule_task(
            RecurrentTaskDescriptor(
                id=f"invoices-{customer}",
                name="SyncInvoicesJob",
                data={"account_id": customer},
                interval=1,
                max_retries=0,
            )
        )
    for report in ("daily-revenue", "churn", "signups"):
        await bus.schedule_task(
            CronTaskDescriptor(
                id=f"report-{report}",
                name="RefreshReportJob",
                data={"report": report},
                cron="*/2 * * * * *",
            )
        )
    later = datetime.now(timezone.utc) + timedelta(hours=20)
    await bus.schedule_task(
        ScheduledTaskDescriptor(
            id="newsletter-118", name="SendNewsletterJob", data={"issue": 118}, scheduled_at=later
        )
    )
    await bus.pause_task("invoices-wonka", note="Wonka migrates billing until Monday (OPS-42)")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.asynccontextmanager
async def _serve(app: FastAPI) -> AsyncIterator[str]:
    port = _free_port()
    config = uvicorn.Config(app, port=port, log_level="warning", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        assert not serving.done(), "uvicorn stopped during start-up"
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/jobs"
    finally:
        server.should_exit = True
        await serving


async def _shoot(page: Page, base: str) -> None:
    IMAGES.mkdir(exist_ok=True)
    await page.goto(f"{base}/")
    await page.screenshot(path=IMAGES / "dashboard-tasks.png", full_page=True)
    await page.goto(f"{base}/task?id=invoices-umbrella")
    await page.wait_for_timeout(1500)  # let the live part refresh once or twice
    await page.screenshot(path=IMAGES / "dashboard-task.png", full_page=True)
    await page.goto(f"{base}/workers")
    await page.screenshot(path=IMAGES / "dashboard-workers.png")
    await page.goto(f"{base}/events")
    await page.wait_for_timeout(3000)  # a few seconds of live events
    await page.screenshot(path=IMAGES / "dashboard-events.png")


async def main() -> None:
    """Run the tasks for a while, then take the screenshots."""
    prefix = f"docs-shots:{uuid.uuid4().hex[:8]}:"
    scheduler = BackgroundTaskScheduler.configure(
        modules=[__name__], redis_url=REDIS_URL, key_prefix=prefix, run_worker=True
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with scheduler:
            yield
            for task in await scheduler.list_tasks():
                await scheduler.bus.cancel_task(task.id)

    app = FastAPI(lifespan=lifespan)
    app.mount("/jobs", dashboard(scheduler))
    async with _serve(app) as base, async_playwright() as playwright:
        await _schedule(scheduler)
        await asyncio.sleep(12)  # some history for the charts
        browser = await playwright.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"]
        )
        page = await browser.new_page(viewport={"width": 1280, "height": 800})
        await _shoot(page, base)
        await browser.close()
    await _forget(prefix)
    print(f"screenshots written to {IMAGES}")


async def _forget(prefix: str) -> None:
    """Delete every key the run wrote."""
    from cml_jobs.stores.redis import redis_client

    client = redis_client(REDIS_URL, patient=False)
    keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=500)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
