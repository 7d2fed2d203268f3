"""The pure core of the migration: one APScheduler 3 job in, one cml-jobs descriptor (or
the reason there is none) out.

Nothing here does I/O or reads the clock: the caller passes ``now``. The job is read
through the attributes APScheduler 3's ``Job`` and triggers document (``id``,
``func_ref``, ``args``, ``kwargs``, ``trigger``, ``next_run_time``, ``misfire_grace_time``,
``coalesce``, ``max_instances``), so tests can build jobs without a job store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from cml_jobs._descriptors import (
    CronTaskDescriptor,
    RecurrentTaskDescriptor,
    ScheduledTaskDescriptor,
    TaskDescriptor,
)
from cml_jobs._migrate._cron import UnsupportedCron, cron_expression
from cml_jobs._triggers import next_occurrence
from cml_jobs.exceptions import InvalidDescriptorError

__all__ = ["END_AT_SUPPORTED", "Converted", "Refused", "convert"]

# ---------------------------------------------------------------------------------------
# end_date -> end_at: RecurrentTaskDescriptor and CronTaskDescriptor take `end_at`, so an
# end date is carried over (_end_at below is the one place that reads this switch).
END_AT_SUPPORTED = True
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Converted:
    """An APScheduler job and the cml-jobs task that replaces it.

    Attributes:
        job_id: the APScheduler job id (also the task id).
        func_ref: the job's callable, ``module:qualname``.
        descriptor: the task to schedule.
        paused: the APScheduler job is paused; the task is paused after scheduling.
        next_run_time: when APScheduler would run the job next (None when paused).
    """

    job_id: str
    func_ref: str
    descriptor: TaskDescriptor
    paused: bool
    next_run_time: datetime | None


@dataclass(frozen=True)
class Refused:
    """An APScheduler job that cannot be migrated, and why.

    Attributes:
        job_id: the APScheduler job id.
        func_ref: the job's callable, or "" when the job could not be loaded.
        reason: what cml-jobs cannot express, and what to do about it.
    """

    job_id: str
    func_ref: str
    reason: str


class _Refusal(Exception):
    """Raised inside the conversion; becomes a ``Refused``."""


def convert(job: Any, mapping: Mapping[str, str], *, now: datetime) -> Converted | Refused:
    """Convert one APScheduler 3 job to a cml-jobs task descriptor.

    Args:
        job: an ``apscheduler.job.Job`` (or anything with its attributes).
        mapping: callables (``module:qualname``) to cml-jobs job names.
        now: the current time, for one-time jobs already past and start dates.

    Returns:
        ``Converted`` with the descriptor, or ``Refused`` with the reason.
    """
    func_ref = str(job.func_ref)
    try:
        name = _job_name(func_ref, mapping)
        if job.args:
            raise _Refusal(
                f"positional args {tuple(job.args)!r:.80}: a cml-jobs task passes only keyword "
                "data to its job's constructor; re-add the job with kwargs= first"
            )
        descriptor = _descriptor(job, name, now)
    except _Refusal as exc:
        return Refused(job.id, func_ref, str(exc))
    except InvalidDescriptorError as exc:
        return Refused(job.id, func_ref, str(exc))
    return Converted(job.id, func_ref, descriptor, job.next_run_time is None, job.next_run_time)


def _job_name(func_ref: str, mapping: Mapping[str, str]) -> str:
    name = mapping.get(func_ref)
    if name is None:
        known = ", ".join(sorted(mapping)) or "none"
        raise _Refusal(
            f"unknown callable {func_ref!r} (mapped: {known}); "
            f"add --map {func_ref}=JobName naming the cml-jobs job that replaces it"
        )
    return name


def _descriptor(job: Any, name: str, now: datetime) -> TaskDescriptor:
    trigger = job.trigger
    kind = type(trigger).__name__
    common = _options(job, name, trigger)
    if kind == "IntervalTrigger":
        return _interval(job, trigger, common)
    if kind == "CronTrigger":
        return _cron(job, trigger, common, now)
    if kind == "DateTrigger":
        return _date(job, trigger, common, now)
    reasons = {
        "AndTrigger": "a combination of triggers (AndTrigger)",
        "OrTrigger": "a combination of triggers (OrTrigger)",
        "CalendarIntervalTrigger": "a calendar interval (CalendarIntervalTrigger)",
    }
    what = reasons.get(kind, f"a trigger of an unknown kind ({kind})")
    raise _Refusal(
        f"trigger {trigger}: cml-jobs has no equivalent of {what}; "
        "schedule it as one or more interval, cron or one-time tasks by hand"
    )


def _options(job: Any, name: str, trigger: Any) -> dict[str, Any]:
    grace = job.misfire_grace_time
    jitter = getattr(trigger, "jitter", None)
    return {
        **_end_at(trigger),
        "id": job.id,
        "name": name,
        "data": dict(job.kwargs),
        "misfire_grace_time": None if grace is None else timedelta(seconds=grace),
        "coalesce": bool(job.coalesce),
        "max_instances": int(job.max_instances),
        "jitter": timedelta(seconds=jitter or 0),
    }


def _end_at(trigger: Any) -> dict[str, Any]:
    """The descriptor field for the trigger's end date: the one place where an end date is
    handled (see END_AT_SUPPORTED)."""
    end = getattr(trigger, "end_date", None)
    if end is None:
        return {}
    if not END_AT_SUPPORTED:
        raise _Refusal(
            f"end_date={end.isoformat()!r}: end_at not supported in this version; "
            "remove the end date, or cancel the task yourself at that time"
        )
    return {"end_at": end}


def _interval(job: Any, trigger: Any, common: dict[str, Any]) -> TaskDescriptor:
    # APScheduler's grid is start_date + k * interval; its next_run_time lies on it
    # (unless moved by modify_job, when it starts the grid APScheduler follows from then
    # on). With jitter, next_run_time includes the jitter, so the grid is start_date's.
    anchor = job.next_run_time if job.next_run_time and not trigger.jitter else trigger.start_date
    return RecurrentTaskDescriptor(**common, interval=trigger.interval, start_at=anchor)


def _cron(job: Any, trigger: Any, common: dict[str, Any], now: datetime) -> TaskDescriptor:
    try:
        expression = cron_expression(list(trigger.fields))
    except UnsupportedCron as exc:
        raise _Refusal(str(exc)) from None
    start = trigger.start_date if trigger.start_date and trigger.start_date > now else None
    descriptor = CronTaskDescriptor(
        **common, cron=expression, timezone=_zone_name(trigger.timezone), start_at=start
    )
    _check_next_run(job, descriptor)
    return descriptor


def _check_next_run(job: Any, descriptor: CronTaskDescriptor) -> None:
    """Refuse when APScheduler's next run is not an occurrence of the converted cron (a
    next_run_time moved by modify_job, or a cron APScheduler reads differently)."""
    expected = job.next_run_time
    if expected is None or descriptor.jitter:
        return
    expected = expected.astimezone(timezone.utc)
    found = next_occurrence(descriptor, expected - timedelta(milliseconds=1))
    if found != expected.replace(microsecond=expected.microsecond // 1000 * 1000):
        shown = found.isoformat() if found else "never"
        raise _Refusal(
            f"APScheduler runs it next at {expected.isoformat()}, which is not an occurrence "
            f"of cron {descriptor.cron!r} in {descriptor.timezone} (next: {shown}); was its "
            "next_run_time moved with modify_job? Run it once by hand, then migrate"
        )


def _date(job: Any, trigger: Any, common: dict[str, Any], now: datetime) -> TaskDescriptor:
    at = job.next_run_time or trigger.run_date
    grace = common["misfire_grace_time"]
    if grace is not None and now - at > grace:
        raise _Refusal(
            f"run_date {at.isoformat()} is {(now - at).total_seconds():.0f} s past, beyond "
            f"misfire_grace_time ({grace.total_seconds():.0f} s): APScheduler would not run "
            "it either; remove the job"
        )
    return ScheduledTaskDescriptor(**common, scheduled_at=at)


def _zone_name(zone: Any) -> str:
    """The IANA name of a trigger's timezone (zoneinfo, pytz or datetime.timezone.utc)."""
    if zone is timezone.utc:
        return "UTC"
    name = getattr(zone, "key", None) or getattr(zone, "zone", None)
    if not name:
        raise _Refusal(
            f"timezone {zone!r} has no IANA name; give the trigger one like 'Europe/Paris'"
        )
    return str(name)
