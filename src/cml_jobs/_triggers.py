"""When a task fires: trigger arithmetic and the misfire/coalesce decision.

Everything here is pure: callers pass ``now``; nothing reads the clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError

from cml_jobs._descriptors import (
    CronTaskDescriptor,
    RecurrentTaskDescriptor,
    ScheduledTaskDescriptor,
    TaskDescriptor,
)

__all__ = [
    "Plan",
    "check_cron",
    "first_occurrence",
    "grid_point_at_or_after",
    "jitter_offset",
    "lateness",
    "misfired",
    "next_occurrence",
    "occurrences_between",
    "plan",
    "ready_at",
    "upcoming",
]

# A cron backlog longer than this is not walked occurrence by occurrence: the count of
# missed occurrences becomes a lower bound, and the walk restarts one day before `now`.
_CRON_WALK_LIMIT = 10_000


def check_cron(expression: str) -> None:
    """Raise ``ValueError`` naming the expression when it is not a valid cron expression.

    Five fields (minute hour day month weekday), or six with a leading seconds field.
    """
    fields = expression.split()
    if len(fields) not in (5, 6):
        raise ValueError(
            f"{expression!r} is not a cron expression: expected 5 fields (minute hour day "
            "month weekday), or 6 with seconds first"
        )
    try:
        if len(fields) == 6:
            _seconds_field(fields[0])
        CronSim(" ".join(fields[-5:]), datetime(2000, 1, 1, tzinfo=timezone.utc))
    except (CronSimError, ValueError) as exc:
        raise ValueError(f"{expression!r} is not a valid cron expression: {exc}") from exc


def _seconds_field(field: str) -> list[int]:
    """The seconds a cron seconds field selects (``*``, ``*/N``, ``a``, ``a-b/N``, lists)."""
    selected: set[int] = set()
    for part in field.split(","):
        base, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if base == "*":
            low, high = 0, 59
        else:
            low_text, _, high_text = base.partition("-")
            low = int(low_text)
            high = int(high_text) if high_text else (59 if step_text else low)
        if not (0 <= low <= high <= 59) or step < 1:
            raise ValueError(f"seconds field {field!r}: values are 0-59, steps at least 1")
        selected.update(range(low, high + 1, step))
    return sorted(selected)


def grid_point_at_or_after(
    descriptor: RecurrentTaskDescriptor, occurrence: datetime, now: datetime
) -> datetime:
    """The first occurrence at or after ``now`` on the grid through ``occurrence``."""
    if occurrence >= now:
        return occurrence
    steps = -((occurrence - now) // descriptor.interval)  # ceiling division
    return occurrence + steps * descriptor.interval


def first_occurrence(descriptor: TaskDescriptor, now: datetime) -> datetime | None:
    """The first occurrence at or after ``now`` (the first grid point for recurrent tasks)."""
    if isinstance(descriptor, ScheduledTaskDescriptor):
        return descriptor.scheduled_at
    if isinstance(descriptor, RecurrentTaskDescriptor) and descriptor.start_at is None:
        return now + descriptor.interval
    if descriptor.start_at is not None and descriptor.start_at >= now:
        if isinstance(descriptor, RecurrentTaskDescriptor):
            return descriptor.start_at
        return next_occurrence(descriptor, descriptor.start_at - timedelta(microseconds=1))
    return next_occurrence(descriptor, now - timedelta(microseconds=1))


def next_occurrence(descriptor: TaskDescriptor, after: datetime) -> datetime | None:
    """The first occurrence strictly after ``after``, or None when the task has no more.

    For a recurrent task without ``start_at``, ``after`` must itself be an occurrence.
    """
    if isinstance(descriptor, ScheduledTaskDescriptor):
        return descriptor.scheduled_at if descriptor.scheduled_at > after else None
    if isinstance(descriptor, RecurrentTaskDescriptor):
        return _next_on_grid(descriptor, after)
    return _next_cron(descriptor, after)


def _next_on_grid(descriptor: RecurrentTaskDescriptor, after: datetime) -> datetime:
    # Counting whole intervals from an occurrence (never from when a run ended) keeps the
    # grid drift-free. Without start_at the grid is anchored at the task's first
    # occurrence, and callers pass an occurrence as `after`.
    anchor = descriptor.start_at or after
    if after < anchor:
        return anchor
    steps = (after - anchor) // descriptor.interval + 1
    return anchor + steps * descriptor.interval


def _next_cron(descriptor: CronTaskDescriptor, after: datetime) -> datetime:
    if descriptor.start_at is not None and after < descriptor.start_at:
        after = descriptor.start_at - timedelta(microseconds=1)
    return next(_cron_times(descriptor, after))


def _cron_times(descriptor: CronTaskDescriptor, after: datetime) -> Iterator[datetime]:
    zone = ZoneInfo(descriptor.timezone)
    fields = descriptor.cron.split()
    seconds = _seconds_field(fields[0]) if len(fields) == 6 else [0]
    # Start one second before `after`'s minute so that its own minute is included. Add and
    # subtract in UTC: arithmetic on a local time resets `fold`, which turns the second pass
    # through a fall-back hour into the first and skips it.
    minute_start = after.astimezone(zone).replace(second=0, microsecond=0)
    start = (minute_start.astimezone(timezone.utc) - timedelta(seconds=1)).astimezone(zone)
    for minute in CronSim(" ".join(fields[-5:]), start):
        for second in seconds:
            at = minute.astimezone(timezone.utc) + timedelta(seconds=second)
            if at > after:
                yield at


def upcoming(descriptor: TaskDescriptor, first: datetime | None, k: int) -> list[datetime]:
    """``first`` (an occurrence) and the occurrences after it: ``k`` at most."""
    found: list[datetime] = []
    while first is not None and len(found) < k:
        found.append(first)
        first = next_occurrence(descriptor, first)
    return found


def occurrences_between(
    descriptor: TaskDescriptor, anchor: datetime, start: datetime, end: datetime, limit: int
) -> list[datetime]:
    """The occurrences in ``[start, end]``, at most ``limit`` (one more tells the caller
    that the window holds too many). ``anchor`` is an occurrence of the task (its next
    due time), through which a recurrent task without ``start_at`` has its grid."""
    if isinstance(descriptor, RecurrentTaskDescriptor):
        base = descriptor.start_at or anchor
        steps = -((base - start) // descriptor.interval)  # ceiling division, either side
        on_grid = base + steps * descriptor.interval
        # The grid begins at start_at, if any.
        first: datetime | None = max(on_grid, descriptor.start_at or on_grid)
    else:
        first = next_occurrence(descriptor, start - timedelta(microseconds=1))
    found: list[datetime] = []
    while first is not None and first <= end and len(found) < limit:
        found.append(first)
        first = next_occurrence(descriptor, first)
    return found


def jitter_offset(descriptor: TaskDescriptor, occurrence_at: datetime) -> timedelta:
    """The delay added to one occurrence: in ``[0, jitter)``, the same on every worker."""
    if not descriptor.jitter:
        return timedelta(0)
    seed = f"{descriptor.id}|{occurrence_at.isoformat()}".encode()
    fraction = int.from_bytes(hashlib.blake2b(seed, digest_size=8).digest(), "big") / 2**64
    return descriptor.jitter * fraction


def ready_at(descriptor: TaskDescriptor, occurrence_at: datetime) -> datetime:
    """When an occurrence may start: its time plus its jitter."""
    return occurrence_at + jitter_offset(descriptor, occurrence_at)


def lateness(descriptor: TaskDescriptor, occurrence_at: datetime, now: datetime) -> timedelta:
    """How late a run starting at ``now`` is, jitter excluded (negative when early)."""
    return now - ready_at(descriptor, occurrence_at)


def misfired(descriptor: TaskDescriptor, occurrence_at: datetime, now: datetime) -> bool:
    """True when an occurrence starting at ``now`` is later than ``misfire_grace_time``."""
    grace = descriptor.misfire_grace_time
    return grace is not None and lateness(descriptor, occurrence_at, now) > grace


@dataclass(frozen=True)
class Plan:
    """What to do with a task whose occurrence ``due_at`` has come.

    Attributes:
        run_at: the occurrence to run now, or None when nothing runs.
        missed: occurrences that will not run (late beyond grace, or coalesced away).
        first_missed_at: the earliest of those, for the record.
        next_due_at: the task's next occurrence after this decision, or None when it ends.
    """

    run_at: datetime | None
    missed: int
    first_missed_at: datetime | None
    next_due_at: datetime | None


def plan(descriptor: TaskDescriptor, due_at: datetime, now: datetime) -> Plan:
    """Decide which of the occurrences due by ``now`` runs, following grace and coalescing.

    With ``coalesce`` the latest due occurrence runs if it is within
    ``misfire_grace_time``, and every earlier one is missed. Without it the earliest
    occurrence still within grace runs, and the ones before it are missed; the later ones
    run on the following ticks.
    """

    def in_grace(occurrence: datetime) -> bool:
        return not misfired(descriptor, occurrence, now)

    occurrences, unlisted = _due_occurrences(descriptor, due_at, now)
    if descriptor.coalesce:
        *earlier, latest = occurrences
        chosen = latest if in_grace(latest) else None
    else:
        chosen = next((o for o in occurrences if in_grace(o)), None)
        earlier = occurrences[: occurrences.index(chosen)] if chosen else occurrences
        latest = chosen or occurrences[-1]
    missed = len(earlier) + unlisted + (chosen is None) * descriptor.coalesce
    return Plan(
        run_at=chosen,
        missed=missed,
        first_missed_at=occurrences[0] if missed else None,
        next_due_at=next_occurrence(descriptor, latest),
    )


def _due_occurrences(
    descriptor: TaskDescriptor, due_at: datetime, now: datetime
) -> tuple[list[datetime], int]:
    """Occurrences from ``due_at`` up to ``now``, always at least ``[due_at]``, and how many
    more lie between the first and the latest without being listed."""
    if isinstance(descriptor, RecurrentTaskDescriptor) and descriptor.coalesce:
        # Interval arithmetic: only the first and the latest matter, the count is exact.
        latest = due_at
        if now > due_at:
            latest = due_at + ((now - due_at) // descriptor.interval) * descriptor.interval
        count = (latest - due_at) // descriptor.interval
        return ([due_at, latest], count - 1) if count else ([latest], 0)
    occurrences = [due_at]
    while len(occurrences) < _CRON_WALK_LIMIT:
        following = next_occurrence(descriptor, occurrences[-1])
        if following is None or following > now:
            return occurrences, 0
        occurrences.append(following)
    # A very long backlog: the count is a lower bound; find the latest near `now`, looking
    # back no further than needed (a day of an every-second cron is 86,400 steps).
    latest = occurrences[-1]
    for window in (timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)):
        probe = next_occurrence(descriptor, max(latest, now - window))
        if probe is None or probe <= now:
            break
    while probe is not None and probe <= now:
        latest, probe = probe, next_occurrence(descriptor, probe)
    return [*occurrences[:-1], latest], 0
