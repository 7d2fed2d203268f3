"""`cml-jobs migrate apscheduler` against real APScheduler 3 job stores: a RedisJobStore on
the test Redis and an SQLAlchemyJobStore on the test PostgreSQL, filled by APScheduler's own
``add_job`` (docs/guides/migrating-from-apscheduler.md)."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import redis.asyncio as aioredis
from apscheduler.jobstores.base import BaseJobStore
from apscheduler.jobstores.redis import RedisJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from click.testing import CliRunner
from sqlalchemy import create_engine, select

from cml_jobs import (
    BackgroundTaskScheduler,
    CronTaskDescriptor,
    EventKind,
    RecurrentTaskDescriptor,
    ScheduledTaskDescriptor,
    TaskEvent,
)
from cml_jobs._migrate._load import redis_connect_args
from cml_jobs.cli import main as cli
from cml_jobs.cli._migrate import migrate_group
from tests.ci import unavailable

APP = "tests.fixtures.apscheduler_app"
MAPS = [
    f"--map={APP}:send_digest=DigestJob",
    f"--map={APP}:clean_folder=CleanupJob",
    f"--map={APP}:remind=ReminderJob",
]
POSTGRES_URL = os.environ.get(
    "CML_JOBS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@dataclass
class Source:
    """An APScheduler job store, and the options that name it on the command line."""

    store: BaseJobStore
    args: list[str]

    def ids(self) -> list[str]:
        """The job ids in the store, read without restoring (so without APScheduler)."""
        if isinstance(self.store, RedisJobStore):
            return sorted(key.decode() for key in self.store.redis.hkeys(self.store.jobs_key))
        with self.store.engine.connect() as connection:
            return sorted(connection.execute(select(self.store.jobs_t.c.id)).scalars())


@pytest.fixture(params=["redis", "sqlalchemy"])
def source(request: pytest.FixtureRequest) -> Iterator[Source]:
    """An empty APScheduler job store of this test's own: Redis keys under the test's key
    prefix (deleted after), or a PostgreSQL table of its own (dropped after)."""
    if request.param == "redis":
        url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("key_prefix")
        keys = {"jobs_key": f"{prefix}aps.jobs", "run_times_key": f"{prefix}aps.run_times"}
        store = RedisJobStore(**keys, **redis_connect_args(url))
        args = [f"--redis-url={url}", f"--jobs-key={keys['jobs_key']}"]
        yield Source(store, [*args, f"--run-times-key={keys['run_times_key']}"])
        return
    table = f"aps_{uuid4().hex[:8]}"
    engine = create_engine(POSTGRES_URL)
    try:
        engine.connect().close()
    except Exception as exc:
        engine.dispose()
        unavailable(f"PostgreSQL at {POSTGRES_URL!r} is unreachable: {exc}")
    store = SQLAlchemyJobStore(engine=engine, tablename=table)
    yield Source(store, [f"--sqlalchemy-url={POSTGRES_URL}", f"--tablename={table}"])
    store.jobs_t.drop(engine, checkfirst=True)
    engine.dispose()


def populate(source: Source, lead: timedelta, *, extra: bool = False) -> dict[str, datetime | None]:
    """Add an interval, a cron, a date and a paused job with options through a paused
    APScheduler; return each job's next run time as APScheduler computed it."""
    start = datetime.now(timezone.utc) + lead
    scheduler = BackgroundScheduler(jobstores={"default": source.store}, timezone="UTC")
    add = scheduler.add_job
    add(f"{APP}:send_digest", "interval", hours=1, start_date=start, id="digest",
        kwargs={"recipient": "ops@example.com"}, misfire_grace_time=30, coalesce=False,
        max_instances=2)  # fmt: skip
    add(f"{APP}:clean_folder", "cron", second="*/5", start_date=start, id="cleanup",
        timezone="Europe/Paris", kwargs={"folder": "/tmp"}, misfire_grace_time=30)  # fmt: skip
    add(f"{APP}:remind", "date", run_date=start, id="remind-42", kwargs={"user_id": 42},
        misfire_grace_time=30)  # fmt: skip
    add(f"{APP}:send_digest", "cron", day="last", hour=8, id="monthly", jitter=60,
        kwargs={"recipient": "boss@example.com"}, next_run_time=None)  # fmt: skip
    if extra:  # a callable no --map names
        add(f"{APP}:legacy_export", "interval", minutes=10, id="export", kwargs={"path": "/x"})
    scheduler.start(paused=True)
    try:
        return {job.id: job.next_run_time for job in scheduler.get_jobs()}
    finally:
        scheduler.shutdown(wait=False)


def ms(at: datetime | None) -> datetime | None:
    """A time as cml-jobs keeps it: UTC, to the millisecond."""
    if at is None:
        return None
    at = at.astimezone(timezone.utc)
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def expected_descriptors(aps: dict[str, datetime | None]) -> dict[str, dict[str, Any]]:
    start = aps["digest"]
    assert start is not None
    descriptors = [
        RecurrentTaskDescriptor(id="digest", name="DigestJob", interval=3600,
            data={"recipient": "ops@example.com"}, start_at=start, misfire_grace_time=30,
            coalesce=False, max_instances=2),
        CronTaskDescriptor(id="cleanup", name="CleanupJob", cron="*/5 * * * * *",
            timezone="Europe/Paris", data={"folder": "/tmp"}, start_at=start,
            misfire_grace_time=30),
        ScheduledTaskDescriptor(id="remind-42", name="ReminderJob", data={"user_id": 42},
            scheduled_at=start, misfire_grace_time=30),
        CronTaskDescriptor(id="monthly", name="DigestJob", cron="0 0 8 L * *", timezone="UTC",
            data={"recipient": "boss@example.com"}, misfire_grace_time=1, jitter=60),
    ]  # fmt: skip
    return {d.id: d.model_dump(mode="json") for d in descriptors}


def main(args: list[str]) -> int:
    """Run the ``cml-jobs`` command line as a script would, and return its exit code."""
    code = cli.main(args, prog_name="cml-jobs", standalone_mode=False)
    return int(code or 0)


async def migrate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    """Run the command (in a thread: it runs its own event loop); its exit code and report."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["migrate", "apscheduler", *args])
    return code, json.loads(capsys.readouterr().out)


@pytest.fixture
def target(monkeypatch: pytest.MonkeyPatch, redis_url: str, key_prefix: str) -> str:
    """The cml-jobs store the workers use, named in the environment as for a worker."""
    monkeypatch.setenv("CML_JOBS_REDIS_URL", redis_url)
    monkeypatch.setenv("CML_JOBS_KEY_PREFIX", f"{key_prefix}cml:")
    monkeypatch.setenv("CML_JOBS_MODULES", APP)
    return f"{key_prefix}cml:"


async def cml_keys(redis_client: aioredis.Redis, prefix: str) -> list[bytes]:
    return [key async for key in redis_client.scan_iter(match=f"{prefix}*")]


def tasks_by_id(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {task["job_id"]: task for task in report["tasks"]}


async def test_a_dry_run_prints_the_exact_descriptors_and_writes_nothing(
    source: Source, target: str, capsys: pytest.CaptureFixture[str], redis_client: aioredis.Redis
) -> None:
    """--dry-run prints, as JSON, the descriptor each APScheduler job becomes (interval,
    cron, date and a paused job, with their options); it writes nothing to cml-jobs and
    leaves the APScheduler store as it was."""
    aps = populate(source, lead=timedelta(minutes=5))
    code, report = await migrate(capsys, *source.args, *MAPS, "--dry-run")
    assert code == 0
    assert (report["applied"], report["refused"]) == (False, [])
    shown = tasks_by_id(report)
    assert {job_id: task["descriptor"] for job_id, task in shown.items()} == expected_descriptors(
        aps
    )
    assert {job_id: task["paused"] for job_id, task in shown.items()} == {
        "cleanup": False, "digest": False, "monthly": True, "remind-42": False,
    }  # fmt: skip
    assert shown["cleanup"]["apscheduler_next_run_time"] == aps["cleanup"].isoformat()  # type: ignore[union-attr]
    assert await cml_keys(redis_client, target) == []
    assert source.ids() == ["cleanup", "digest", "monthly", "remind-42"]


async def test_applied_tasks_run_when_apscheduler_would_have_run_its_jobs(
    source: Source, target: str, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--apply schedules the tasks into the workers' store; their next run times are the
    ones APScheduler computed, and an in-app worker runs each first occurrence then."""
    aps = populate(source, lead=timedelta(seconds=6))
    code, report = await migrate(capsys, *source.args, *MAPS, "--apply")
    assert (code, report["applied"]) == (0, True)
    scheduler = BackgroundTaskScheduler.configure(
        redis_url=redis_url, modules=[APP], run_worker=True, key_prefix=target,
        queue_name=f"{target}queue", poll_interval=timedelta(milliseconds=100),
    )  # fmt: skip
    succeeded: dict[str, TaskEvent] = {}
    done = asyncio.Event()

    def on_event(event: TaskEvent) -> None:
        if event.kind is EventKind.SUCCEEDED:
            succeeded.setdefault(event.task_id, event)
            if {"digest", "cleanup", "remind-42"} <= succeeded.keys():
                done.set()

    async with scheduler:
        scheduler.subscribe(on_event)
        tasks = {task.id: task for task in await scheduler.list_tasks()}
        assert {i: t.next_run_time for i, t in tasks.items()} == {
            i: ms(at) for i, at in aps.items()
        }
        assert tasks["monthly"].paused
        async with asyncio.timeout(30):
            await done.wait()
    for task_id, event in succeeded.items():
        assert event.occurrence_at == ms(aps[task_id])
        late = (event.at - event.occurrence_at).total_seconds()
        print(f"{task_id}: APScheduler {aps[task_id]}, cml-jobs ran it {late:+.3f} s after")
        assert late >= 0


async def test_an_unknown_callable_stops_the_apply_until_skip_unconvertible(
    source: Source,
    target: str,
    redis_url: str,
    capsys: pytest.CaptureFixture[str],
    redis_client: aioredis.Redis,
) -> None:
    """A job whose callable no --map names makes --apply write nothing and names the job;
    with --skip-unconvertible the others are scheduled (and applying again changes nothing)."""
    populate(source, lead=timedelta(minutes=5), extra=True)
    code, report = await migrate(capsys, *source.args, *MAPS, "--apply")
    assert (code, report["applied"]) == (1, False)
    [refused] = report["refused"]
    assert (refused["job_id"], refused["callable"]) == ("export", f"{APP}:legacy_export")
    assert refused["reason"].startswith(f"unknown callable '{APP}:legacy_export'")
    assert await cml_keys(redis_client, target) == []
    for _ in range(2):
        code, report = await migrate(capsys, *source.args, *MAPS, "--apply", "--skip-unconvertible")
        assert (code, report["applied"], len(report["refused"])) == (0, True, 1)
    scheduler = BackgroundTaskScheduler.configure(
        redis_url=redis_url, modules=[APP], key_prefix=target
    )
    async with scheduler:
        tasks = await scheduler.list_tasks()
    assert [task.id for task in tasks] == ["cleanup", "digest", "monthly", "remind-42"]
    assert source.ids() == ["cleanup", "digest", "export", "monthly", "remind-42"]


async def test_a_job_apscheduler_cannot_restore_is_refused_and_kept_in_its_store(
    source: Source,
    target: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A job whose callable no longer imports is refused with APScheduler's reason, and
    stays in the APScheduler store (APScheduler's get_all_jobs would have deleted it)."""
    (tmp_path / "gone_app.py").write_text("def export(path):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    scheduler = BackgroundScheduler(jobstores={"default": source.store}, timezone="UTC")
    scheduler.add_job("gone_app:export", "interval", hours=1, id="gone", kwargs={"path": "/x"})
    scheduler.start(paused=True)
    scheduler.shutdown(wait=False)
    (tmp_path / "gone_app.py").unlink()
    monkeypatch.delitem(sys.modules, "gone_app")
    importlib.invalidate_caches()
    code, report = await migrate(capsys, *source.args, "--map=gone_app:export=DigestJob")
    assert code == 1
    [refused] = report["refused"]
    assert refused["job_id"] == "gone"
    assert "APScheduler cannot restore it" in refused["reason"]
    assert source.ids() == ["gone"]


def test_apply_without_the_workers_redis_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--apply with no CML_JOBS_REDIS_URL says which setting is missing, and reads nothing."""
    monkeypatch.delenv("CML_JOBS_REDIS_URL", raising=False)
    code = main(["migrate", "apscheduler", "--redis-url=redis://127.0.0.1:1/0", "--apply"])
    assert code == 2
    assert "set CML_JOBS_REDIS_URL" in capsys.readouterr().err


async def test_the_click_command_runs_the_same_migration(
    source: Source, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The click version of the command (for a click command line) takes the same options
    and prints the same report as the whole command line."""
    populate(source, lead=timedelta(minutes=5), extra=True)
    code, report = await migrate(capsys, *source.args, *MAPS)
    runner = CliRunner()
    result = await asyncio.to_thread(
        runner.invoke, migrate_group, ["apscheduler", *source.args, *MAPS, "--dry-run"]
    )
    assert (result.exit_code, json.loads(result.stdout)) == (code, report)
    assert code == 1


async def test_a_job_mapped_to_a_job_that_does_not_fit_is_refused(
    source: Source, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the job modules known, a task whose job is of the wrong kind (or whose kwargs
    do not fit the job's constructor) is refused before anything is written."""
    populate(source, lead=timedelta(minutes=5))
    maps = [f"--map={APP}:send_digest=ReminderJob", *MAPS[1:]]
    code, report = await migrate(capsys, *source.args, *maps, "--apply")
    assert (code, report["applied"]) == (1, False)
    reasons = {refused["job_id"]: refused["reason"] for refused in report["refused"]}
    assert sorted(reasons) == ["digest", "monthly"]
    assert "job 'ReminderJob' is a scheduled job (run_at)" in reasons["digest"]
