"""The ``cml-jobs`` command against real workers on the real Redis: what it prints for
people, what it prints for scripts (``--json``, matching the bus), and its exit codes."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner, Result

from cml_jobs import (
    BackgroundTaskScheduler,
    CronTaskDescriptor,
    RecurrentTaskDescriptor,
    ScheduledTaskDescriptor,
    TaskNotFoundError,
)
from cml_jobs._views import task_json
from cml_jobs.cli import main
from cml_jobs.stores import NewTask
from cml_jobs.stores.redis import RedisScheduleStore
from tests.workers import WorkerFleet, fleet

pytestmark = pytest.mark.redis

RECURRENT, CRON, ONCE, PAUSED, PARKED, FAILING = 20, 12, 10, 5, 2, 1


@dataclass
class Cluster:
    """Three workers and an app that scheduled 50 tasks of every kind on one prefix."""

    app: BackgroundTaskScheduler
    workers: WorkerFleet
    env: dict[str, str]

    def cli(self, *args: str) -> Result:
        """Run ``cml-jobs ARGS`` with the workers' CML_JOBS_* environment."""
        return CliRunner().invoke(main, list(args), env=self.env, catch_exceptions=False)

    async def run(self, *args: str) -> Result:
        return await asyncio.to_thread(self.cli, *args)


async def _schedule(app: BackgroundTaskScheduler, store: RedisScheduleStore) -> None:
    bus, later = app.bus, datetime.now(timezone.utc) + timedelta(hours=1)
    for i in range(RECURRENT):
        await bus.schedule_task(
            RecurrentTaskDescriptor(id=f"every-{i:02}", name="RecordingJob", interval=1)
        )
    for i in range(CRON):
        await bus.schedule_task(
            CronTaskDescriptor(id=f"cron-{i:02}", name="RecordingJob", cron="*/2 * * * * *")
        )
    for i in range(ONCE):
        await bus.schedule_task(
            ScheduledTaskDescriptor(id=f"once-{i:02}", name="RecordingOnceJob", scheduled_at=later)
        )
    for i in range(PAUSED):
        task_id = f"paused-{i:02}"
        descriptor = RecurrentTaskDescriptor(id=task_id, name="RecordingJob", interval=1)
        await bus.schedule_task(descriptor)
        await bus.pause_task(task_id)
    await bus.schedule_task(
        RecurrentTaskDescriptor(
            id="failing", name="RecordingJob", interval=1, data={"fail_first": 10_000}
        )
    )
    now = datetime.now(timezone.utc)
    for i in range(PARKED):  # written behind the bus's back: no worker can read them
        await store.add(NewTask(f"broken-{i}", "{not json", now, now), replace=False)


@pytest.fixture
async def cluster(
    redis_client: aioredis.Redis, redis_url: str, key_prefix: str
) -> AsyncIterator[Cluster]:
    app = BackgroundTaskScheduler.configure(
        redis_url=redis_url, modules=["tests.fixtures.recording"], key_prefix=key_prefix
    )
    with fleet(redis_url, key_prefix) as workers:
        workers.start(3)
        async with app:
            await workers.wait_ready(redis_client)
            await _schedule(app, RedisScheduleStore(redis_client, prefix=key_prefix))
            env = {"CML_JOBS_REDIS_URL": redis_url, "CML_JOBS_KEY_PREFIX": key_prefix}
            env["CML_JOBS_QUEUE"] = workers.queue
            yield Cluster(app, workers, env)


async def _settled(cluster: Cluster) -> None:
    """Every recurring task has run, the failing one has failed, the broken ones parked."""

    async def ready() -> bool:
        tasks = await cluster.app.list_tasks()
        ran = [t for t in tasks if t.id.startswith(("every-", "cron-")) and t.counts]
        parked = [t for t in tasks if t.parked_reason is not None]
        failed = [t for t in tasks if t.id == "failing" and t.counts.get("failed")]
        return len(ran) == RECURRENT + CRON and len(parked) == PARKED and bool(failed)

    await cluster.workers.until(ready, "every task ran, failed or was parked")


async def test_tasks_json_matches_the_bus_and_the_table_is_readable(cluster: Cluster) -> None:
    """``tasks --json`` lists every task as the bus does; filters and the table agree."""
    await _settled(cluster)
    listed = await cluster.run("tasks", "--json")
    by_bus = {task.id: task_json(task) for task in await cluster.app.list_tasks()}
    assert listed.exit_code == 0, listed.output
    by_cli = {task["id"]: task for task in json.loads(listed.stdout)}
    assert set(by_cli) == set(by_bus) and len(by_cli) == 50
    stable = ("job", "trigger", "paused", "parked_reason", "descriptor")
    for task_id, shown in by_cli.items():
        assert {k: shown[k] for k in stable} == {k: by_bus[task_id][k] for k in stable}
        if task_id.startswith(("once-", "paused-")):
            assert shown == by_bus[task_id]
    states = [task["state"] for task in by_cli.values()]
    assert states.count("paused") == PAUSED and states.count("parked") == PARKED
    assert by_cli["failing"]["last_outcome"] == "failed"

    table = await cluster.run("tasks")
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["ID", "JOB", "TRIGGER", "NEXT", "RUN", "STATE", "LAST", "OUTCOME",
                                "COUNTS"]  # fmt: skip
    assert len(lines) == 51 and "50 of 50 task(s)" in table.stderr
    once = next(line for line in lines if line.startswith("once-00 "))
    assert "RecordingOnceJob" in once and "once at" in once and "in 59m" in once
    assert any(line.startswith("every-00 ") and "every 1s" in line for line in lines)

    paused = json.loads((await cluster.run("tasks", "--state", "paused", "--json")).stdout)
    assert sorted(t["id"] for t in paused) == [f"paused-{i:02}" for i in range(PAUSED)]
    once_jobs = await cluster.run("tasks", "--job", "RecordingOnceJob", "--json")
    assert len(json.loads(once_jobs.stdout)) == ONCE


async def test_show_prints_a_task_and_exits_1_for_an_unknown_one(cluster: Cluster) -> None:
    """``show`` gives the descriptor, upcoming occurrences and the history; an unknown id
    exits 1."""
    await _settled(cluster)
    shown = await cluster.run("show", "once-03", "--json")
    assert shown.exit_code == 0, shown.output
    task = json.loads(shown.stdout)
    expected = task_json(await cluster.app.bus.get_task("once-03"))
    assert {k: task[k] for k in expected} == expected
    assert task["upcoming"] == [expected["next_run_time"]]

    every = json.loads((await cluster.run("show", "every-01", "--json", "--upcoming", "3")).stdout)
    coming = [datetime.fromisoformat(at) for at in every["upcoming"]]
    assert [b - a for a, b in itertools.pairwise(coming)] == [timedelta(seconds=1)] * 2

    runs = every["history"]
    assert runs and {run["outcome"] for run in runs} == {"succeeded"}
    by_bus = await cluster.app.bus.get_history("every-01", 20)
    assert [run["occurrence_at"] for run in runs][-5:] == [
        run.occurrence_at.isoformat() for run in by_bus
    ][-5:]
    assert all(run["lateness"] >= 0 and run["duration"] >= 0 for run in runs)
    assert "OCCURRENCE" in (await cluster.run("show", "every-01")).stdout

    text = await cluster.run("show", "once-03")
    assert "task      once-03" in text.stdout and '"scheduled_at":' in text.stdout
    assert "upcoming:" in text.stdout

    missing = await cluster.run("show", "no-such-task")
    assert missing.exit_code == 1 and "'no-such-task'" in missing.stderr
    assert (await cluster.run("show")).exit_code == 2  # usage: the id is missing
    assert (await cluster.run("tasks", "--state", "sleeping")).exit_code == 2


async def test_pause_resume_and_cancel_change_the_task(cluster: Cluster) -> None:
    """The actions act through the bus: the app sees each change; unknown ids exit 1."""
    paused = await cluster.run("pause", "every-05", "--note", "investigating")
    assert paused.exit_code == 0, paused.output
    assert (await cluster.app.bus.get_task("every-05")).note == "investigating"
    listed = json.loads((await cluster.run("tasks", "--state", "paused", "--json")).stdout)
    assert any(t["id"] == "every-05" and t["note"] == "investigating" for t in listed)
    triggered = json.loads((await cluster.run("trigger", "every-05", "--json")).stdout)
    extra = datetime.fromisoformat(triggered["result"])

    async def ran() -> bool:
        history = await cluster.app.bus.get_history("every-05", 5)
        return any(run.occurrence_at == extra for run in history)

    await cluster.workers.until(ran, "the triggered run is in the history")
    assert (await cluster.run("resume", "every-05")).exit_code == 0
    assert not (await cluster.app.bus.get_task("every-05")).paused
    cancelled = await cluster.run("cancel", "once-01", "--json")
    assert json.loads(cancelled.stdout) == {"id": "once-01", "action": "cancel", "result": 0}
    with pytest.raises(TaskNotFoundError):
        await cluster.app.bus.get_task("once-01")
    assert (await cluster.run("pause", "no-such-task")).exit_code == 1
    still_broken = await cluster.run("unpark", "broken-0")
    assert still_broken.exit_code == 1 and "stays parked" in still_broken.stderr


async def test_workers_lists_the_live_workers_as_the_bus_does(cluster: Cluster) -> None:
    """``workers --json`` shows the three workers the bus lists; the table one row each;
    ``check --json`` counts the same workers and names the parked tasks (exit 1)."""
    await _settled(cluster)
    listed = await cluster.run("workers", "--json")
    assert listed.exit_code == 0, listed.output
    shown = json.loads(listed.stdout)
    by_bus = await cluster.app.bus.list_workers()
    assert [w["id"] for w in shown] == [w.id for w in by_bus] and len(shown) == 3
    pids = {process.pid for process in cluster.workers.processes}
    assert {w["pid"] for w in shown} == pids
    checked = await cluster.run("check", "--json", "--min-workers", "3")
    report = json.loads(checked.stdout)
    assert checked.exit_code == 1 and not report["healthy"]  # the broken tasks are parked
    assert sorted(p["task_id"] for p in report["parked"]) == ["broken-0", "broken-1"]
    assert sorted(w["id"] for w in report["workers"]) == sorted(w["id"] for w in shown)
    table = (await cluster.run("workers")).stdout.splitlines()
    assert table[0].split() == ["ID", "VERSION", "RUNNING", "STARTED", "HEARTBEAT"]
    assert len(table) == 4 and all(":" in line.split()[0] for line in table[1:])


async def test_events_follow_prints_live_events_and_resumes_from_an_id(cluster: Cluster) -> None:
    """``events --follow --json`` prints the workers' events as they happen, one JSON
    object a line; ``--from`` an id printed there resumes right after it."""
    live = await cluster.run("events", "--follow", "--json", "--limit", "6", "--task", "every-02")
    assert live.exit_code == 0, live.output
    seen = [json.loads(line) for line in live.stdout.splitlines()]
    assert len(seen) == 6 and {event["task_id"] for event in seen} == {"every-02"}
    assert {"started", "succeeded"} <= {event["kind"] for event in seen}
    resumed = await cluster.run("events", "--from", seen[2]["id"], "--json", "--task", "every-02")
    again = [json.loads(line) for line in resumed.stdout.splitlines()]
    assert [event["id"] for event in again[:3]] == [event["id"] for event in seen[3:]]

    text = await cluster.run("events", "--follow", "--limit", "2", "--task", "every-03")
    assert all(" every-03 (RecordingJob)" in line for line in text.stdout.splitlines())
