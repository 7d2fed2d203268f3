"""The migration's pure core: APScheduler 3 jobs (built from APScheduler's own triggers,
without a job store) in, cml-jobs descriptors or reasons out (`cml-jobs migrate
apscheduler`, docs/guides/migrating-from-apscheduler.md)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.calendarinterval import CalendarIntervalTrigger
from apscheduler.triggers.combining import AndTrigger, OrTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from cml_jobs import CronTaskDescriptor, RecurrentTaskDescriptor, ScheduledTaskDescriptor
from cml_jobs._migrate import END_AT_SUPPORTED, Converted, Refused, convert, parse_mapping
from cml_jobs._triggers import next_occurrence

NOW = datetime(2026, 3, 20, 10, 0, tzinfo=timezone.utc)
MAPPING = {"app.tasks:digest": "DigestJob"}


def aps_job(trigger: Any, **changes: Any) -> SimpleNamespace:
    """A job as APScheduler 3 restores it (its attributes), next run as APScheduler computes."""
    values: dict[str, Any] = {
        "id": "job-1",
        "func_ref": "app.tasks:digest",
        "args": (),
        "kwargs": {"recipient": "ops@example.com"},
        "trigger": trigger,
        "next_run_time": trigger.get_next_fire_time(None, NOW),
        "misfire_grace_time": 1,
        "coalesce": True,
        "max_instances": 1,
    }
    return SimpleNamespace(**{**values, **changes})


def converted(job: SimpleNamespace) -> Converted:
    result = convert(job, MAPPING, now=NOW)
    assert isinstance(result, Converted), result
    return result


CRON_TRIGGERS = [
    CronTrigger(day_of_week="mon-fri", hour=3, minute=15, timezone="Europe/Paris"),
    CronTrigger(day_of_week="*/2", hour=12, timezone="UTC"),
    CronTrigger(day_of_week="sat,sun", minute="*/30", timezone="UTC"),
    CronTrigger(day_of_week="sun", timezone="UTC"),
    CronTrigger(day="last", hour=8, timezone="UTC"),
    CronTrigger(day="2nd fri", hour=9, timezone="UTC"),
    CronTrigger(day="last sun", hour=9, timezone="UTC"),
    CronTrigger(month="jan-mar,oct", day="1-7/3", timezone="UTC"),
    CronTrigger(second="*/10", minute="5/20", timezone="UTC"),
    CronTrigger(hour="*/6", timezone="America/New_York"),
    # APScheduler reads a crontab's weekdays from Monday = 0: "1-5" is Tuesday-Saturday.
    CronTrigger.from_crontab("*/15 9-17 * * 1-5", timezone="UTC"),
]


@pytest.mark.parametrize("trigger", CRON_TRIGGERS, ids=str)
def test_a_converted_cron_fires_when_apscheduler_would(trigger: CronTrigger) -> None:
    """The converted cron task's next 40 occurrences are exactly the fire times APScheduler
    computes from the same trigger (weekdays renumbered, positions and 'last' kept)."""
    descriptor = converted(aps_job(trigger)).descriptor
    assert isinstance(descriptor, CronTaskDescriptor)
    theirs = trigger.get_next_fire_time(None, NOW)
    ours = next_occurrence(descriptor, NOW - timedelta(microseconds=1))
    for _ in range(40):
        assert ours == theirs
        theirs, ours = trigger.get_next_fire_time(theirs, theirs), next_occurrence(descriptor, ours)


def test_the_crontab_weekday_pitfall_is_converted_as_apscheduler_ran_it() -> None:
    """A from_crontab '1-5' ran Tuesday to Saturday under APScheduler: so does the task."""
    trigger = CronTrigger.from_crontab("0 9 * * 1-5", timezone="Europe/Paris")
    descriptor = converted(aps_job(trigger)).descriptor
    assert isinstance(descriptor, CronTaskDescriptor)
    assert (descriptor.cron, descriptor.timezone) == ("0 0 9 * * 2-6", "Europe/Paris")


def test_an_interval_job_keeps_its_options_and_apschedulers_grid() -> None:
    """Interval, kwargs, grace, coalesce and max_instances carry over; the grid is anchored
    at APScheduler's next run, so the task's occurrences are APScheduler's."""
    trigger = IntervalTrigger(minutes=5, start_date=NOW - timedelta(minutes=7), timezone="UTC")
    job = aps_job(trigger, misfire_grace_time=None, coalesce=False, max_instances=3)
    result = converted(job)
    assert result.descriptor == RecurrentTaskDescriptor(
        id="job-1",
        name="DigestJob",
        data={"recipient": "ops@example.com"},
        interval=300,
        start_at=NOW + timedelta(minutes=3),
        misfire_grace_time=None,
        coalesce=False,
        max_instances=3,
    )
    assert (result.paused, result.next_run_time) == (False, NOW + timedelta(minutes=3))


def test_a_jittered_interval_keeps_its_start_date_grid_and_its_jitter() -> None:
    """With jitter, APScheduler's next run includes the jitter: the grid is start_date's."""
    trigger = IntervalTrigger(hours=1, start_date=NOW, timezone="UTC", jitter=30)
    descriptor = converted(aps_job(trigger)).descriptor
    assert descriptor.start_at == NOW
    assert descriptor.jitter == timedelta(seconds=30)


def test_a_paused_job_is_converted_and_marked_paused() -> None:
    """A paused APScheduler job (no next run time) becomes a task to pause after scheduling."""
    trigger = CronTrigger(hour=4, timezone="UTC", start_date=NOW + timedelta(days=2))
    result = converted(aps_job(trigger, next_run_time=None))
    assert result.paused
    assert result.descriptor.start_at == NOW + timedelta(days=2)


def test_a_date_job_becomes_a_one_time_task_at_its_run_date() -> None:
    """A date trigger becomes a ScheduledTaskDescriptor at the same time."""
    result = converted(aps_job(DateTrigger(NOW + timedelta(hours=2), timezone="UTC")))
    assert isinstance(result.descriptor, ScheduledTaskDescriptor)
    assert result.descriptor.scheduled_at == NOW + timedelta(hours=2)


def refusal(job: SimpleNamespace) -> str:
    result = convert(job, MAPPING, now=NOW)
    assert isinstance(result, Refused), result
    assert result.job_id == job.id
    return result.reason


INTERVAL = IntervalTrigger(hours=1, start_date=NOW, timezone="UTC")
REFUSED = [
    (aps_job(INTERVAL, func_ref="app.tasks:other"), "unknown callable 'app.tasks:other'"),
    (aps_job(INTERVAL, args=(1, 2)), "positional args (1, 2)"),
    (aps_job(OrTrigger([INTERVAL, CronTrigger(hour=1)])), "OrTrigger"),
    (aps_job(AndTrigger([INTERVAL, CronTrigger(hour=1)])), "AndTrigger"),
    (aps_job(CalendarIntervalTrigger(months=1, timezone="UTC")), "CalendarIntervalTrigger"),
    (aps_job(CronTrigger(year=2027, timezone="UTC")), "year='2027'"),
    (aps_job(CronTrigger(week=3, timezone="UTC")), "week='3'"),
    (aps_job(CronTrigger(day=1, day_of_week="mon", timezone="UTC")), "matching both"),
    (aps_job(CronTrigger(day="1,last fri", timezone="UTC")), "weekday position"),
    (
        aps_job(DateTrigger(NOW - timedelta(hours=1), timezone="UTC"), misfire_grace_time=60),
        "beyond misfire_grace_time",
    ),
    (
        aps_job(CronTrigger(hour=3, timezone="UTC"), next_run_time=NOW + timedelta(minutes=1)),
        "not an occurrence of cron '0 0 3 * * *'",
    ),
    (aps_job(INTERVAL, kwargs={"when": NOW}), "data holds only JSON values"),
    (aps_job(INTERVAL, id="a job id"), "a task id is 1-200 characters"),
]


@pytest.mark.parametrize(("job", "reason"), REFUSED, ids=lambda value: str(value)[:40])
def test_a_job_cml_jobs_cannot_express_is_refused_with_its_reason(
    job: SimpleNamespace, reason: str
) -> None:
    """Each kind of job that has no faithful cml-jobs equivalent is refused, and the
    reason names what is wrong."""
    assert reason in refusal(job)


@pytest.mark.parametrize(
    "trigger",
    [
        IntervalTrigger(hours=1, start_date=NOW, end_date=NOW + timedelta(days=1), timezone="UTC"),
        CronTrigger(hour=3, end_date=NOW + timedelta(days=1), timezone="UTC"),
    ],
    ids=["interval", "cron"],
)
def test_an_end_date_becomes_end_at(trigger: Any) -> None:
    """APScheduler's end_date carries over as end_at: no occurrence after it."""
    assert END_AT_SUPPORTED is True
    descriptor = converted(aps_job(trigger)).descriptor
    assert descriptor.end_at == NOW + timedelta(days=1)  # type: ignore[union-attr]


@pytest.mark.parametrize("pair", ["app.tasks=Job", "app.tasks:digest", ":digest=Job", "=Job"])
def test_a_malformed_map_is_refused_with_the_expected_form(pair: str) -> None:
    """--map must read module:callable=JobName; anything else says so."""
    with pytest.raises(ValueError, match="is not module:callable=JobName"):
        parse_mapping([pair])


def test_maps_name_callables_as_apscheduler_stores_them() -> None:
    """--map pairs become a mapping from 'module:qualname' to the job name."""
    pairs = ["app.tasks:digest=DigestJob", "app.jobs:Cleaner.run=CleanupJob"]
    assert parse_mapping(pairs) == {
        "app.tasks:digest": "DigestJob",
        "app.jobs:Cleaner.run": "CleanupJob",
    }


EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "apscheduler"


def load_example(name: str) -> ModuleType:
    """examples/apscheduler/<name>.py as the module ``apscheduler_<name>``."""
    spec = importlib.util.spec_from_file_location(f"apscheduler_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_guides_before_and_after_examples_are_the_same_schedule() -> None:
    """Converting the jobs of the guide's APScheduler app (before.py) gives exactly the
    tasks of its cml-jobs version (after.py), the interval grid anchored where APScheduler
    put it."""
    before, after = load_example("before"), load_example("after")
    scheduler = BackgroundScheduler(jobstores={"default": MemoryJobStore()}, timezone="UTC")
    before.add_jobs(scheduler)
    scheduler.start(paused=True)
    try:
        jobs = scheduler.get_jobs()
    finally:
        scheduler.shutdown(wait=False)
    names = {"send_digest": "DigestJob", "clean_folder": "CleanupJob", "remind": "ReminderJob"}
    mapping = {f"{before.__name__}:{func}": name for func, name in names.items()}
    now = datetime.now(timezone.utc)
    ours = {job.id: convert(job, mapping, now=now) for job in jobs}
    descriptors = {i: r.descriptor for i, r in ours.items() if isinstance(r, Converted)}
    digest = descriptors["digest"]
    assert digest.start_at == ms(ours["digest"].next_run_time)  # type: ignore[union-attr]
    descriptors["digest"] = digest.model_copy(update={"start_at": None})
    assert descriptors == {task.id: task for task in after.TASKS}


def ms(at: datetime | None) -> datetime | None:
    return None if at is None else at.replace(microsecond=at.microsecond // 1000 * 1000)


def test_the_guides_cml_jobs_example_runs() -> None:
    """examples/apscheduler/after.py schedules, pauses, resumes, replaces, lists and
    cancels its tasks in memory, and exits 0."""
    result = subprocess.run(
        [sys.executable, "after.py"], cwd=EXAMPLES, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    listed = [line.split()[0] for line in result.stdout.splitlines()]
    assert listed == ["cleanup", "digest", "remind-42"]
