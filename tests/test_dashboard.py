"""The dashboard over HTTP (no browser): paging through many tasks, the ``authorize``
hook, and the ``cml-jobs web`` app's lifespan."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.requests import Request

from cml_jobs import BackgroundTaskScheduler, RecurrentTaskDescriptor
from cml_jobs.web import dashboard


@pytest.fixture
async def scheduler() -> AsyncIterator[BackgroundTaskScheduler]:
    """An embedded scheduler with 120 quiet tasks (no worker: nothing runs)."""
    app = BackgroundTaskScheduler.configure(
        modules=["tests.fixtures.dashboard_jobs"], run_worker=False
    )
    async with app:
        for i in range(120):
            name = "QuietJob"
            await app.bus.schedule_task(
                RecurrentTaskDescriptor(id=f"task-{i:03}", name=name, interval=60 + i)
            )
        yield app


def _client(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")  # type: ignore[arg-type]


def _ids(html: str) -> list[str]:
    return re.findall(r'<tr data-id="([^"]+)">', html)


async def test_the_tasks_page_pages_sorts_and_filters(scheduler: BackgroundTaskScheduler) -> None:
    """50 tasks a page, soonest next run first; search narrows; a page past the end
    shows the last one."""
    async with _client(dashboard(scheduler)) as client:
        first = (await client.get("/")).text
        assert _ids(first) == [f"task-{i:03}" for i in range(50)]
        assert "120 of 120 task(s) · page 1 of 3" in first
        last = (await client.get("/", params={"page": "99"})).text
        assert _ids(last) == [f"task-{i:03}" for i in range(100, 120)]
        found = (await client.get("/", params={"q": "TASK-11", "sort": "id"})).text
        assert _ids(found) == [f"task-{i:03}" for i in range(110, 120)]
        none = (await client.get("/", params={"state": "paused"})).text
        assert _ids(none) == [] and "no task matches" in none
        missing = await client.get("/task", params={"id": "nope"})
        assert missing.status_code == 404 and "nope" in missing.text


async def test_authorize_decides_every_view_and_action(
    scheduler: BackgroundTaskScheduler,
) -> None:
    """The hook is asked with the action's name: it may allow views and refuse pausing,
    and it may be async."""
    asked: list[str] = []

    async def authorize(request: Request, action: str) -> bool:
        asked.append(action)
        return request.headers.get("x-role") == "admin" or action == "view"

    async with _client(dashboard(scheduler, authorize=authorize)) as client:
        page = await client.get("/task", params={"id": "task-001"})
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert page.status_code == 200 and token is not None
        form = {"task_id": "task-001", "csrf_token": token.group(1)}
        refused = await client.post("/act/pause", data=form)
        assert refused.status_code == 403 and not (await scheduler.bus.get_task("task-001")).paused
        allowed = await client.post("/act/pause", data=form, headers={"x-role": "admin"})
        assert allowed.status_code == 303 and (await scheduler.bus.get_task("task-001")).paused
    assert asked == ["view", "pause", "pause"]
    async with _client(dashboard(scheduler, authorize=lambda request, action: False)) as client:
        assert (await client.get("/")).status_code == 403


@pytest.mark.redis
async def test_cml_jobs_web_serves_the_dashboard_of_the_workers_redis(
    redis_url: str, key_prefix: str
) -> None:
    """``cml-jobs web``'s app starts its scheduler in its lifespan and shows that Redis's
    tasks; with --read-only it offers no action."""
    from cml_jobs.cli._common import Target
    from cml_jobs.cli._web import standalone_app

    writer = BackgroundTaskScheduler.configure(
        redis_url=redis_url, modules=["tests.fixtures.dashboard_jobs"], key_prefix=key_prefix
    )
    async with writer:
        await writer.bus.schedule_task(
            RecurrentTaskDescriptor(id="nightly", name="QuietJob", interval=3600)
        )

    app = standalone_app(Target(redis_url, key_prefix, f"{key_prefix}queue"), read_only=True)
    async with app.router.lifespan_context(app), _client(app) as client:
        listing = (await client.get("/")).text
        task = (await client.get("/task", params={"id": "nightly"})).text
    assert _ids(listing) == ["nightly"]
    assert "<button" not in task and "read-only" in task


async def test_the_mounting_example_lets_only_its_ops_role_act() -> None:
    """examples/operations/dashboard_app.py: anyone may look, only ``X-Role: ops`` may
    pause, and the read-only mount offers no action."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).parent.parent / "examples" / "operations" / "dashboard_app.py"
    spec = importlib.util.spec_from_file_location("dashboard_app_example", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example
    spec.loader.exec_module(example)
    app, scheduler = example.app, example.scheduler
    async with app.router.lifespan_context(app), _client(app) as client:
        descriptor = RecurrentTaskDescriptor(
            id="invoices-acme", name="SyncInvoicesJob", data={"account_id": "acme"}, interval=60
        )
        await scheduler.bus.schedule_task(descriptor)
        page = await client.get("/jobs/task", params={"id": "invoices-acme"})
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert page.status_code == 200 and token is not None
        form = {"task_id": "invoices-acme", "csrf_token": token.group(1), "note": "OPS-42"}
        assert (await client.post("/jobs/act/pause", data=form)).status_code == 403
        ops = await client.post("/jobs/act/pause", data=form, headers={"X-Role": "ops"})
        assert ops.status_code == 303
        assert (await scheduler.bus.get_task("invoices-acme")).note == "OPS-42"
        read_only = await client.get("/jobs-readonly/task", params={"id": "invoices-acme"})
        assert "OPS-42" in read_only.text and "<button" not in read_only.text
