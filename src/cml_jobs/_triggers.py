"""When a task fires: trigger arithmetic and the misfire/coalesce decision.

Everything here is pure: callers pass ``now``; nothing reads the clock.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from cml_jobs._cron import check_cron, cron_after
from cml_jobs._descriptors import (
    CronTaskDescriptor,
    RecurrentTaskDescriptor,
    ScheduledTaskDescriptor,
    TaskDescriptor,
)

__all__ = [
    "Plan",
    "check_cron",
    "describe_trigger",
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
# missed occurrences becomes a lower bound, and only the latest occurrence is looked for.
_CRON_WALK_LIMIT = 10_000
# How far back the latest occurrence of a cron task is looked for, nearest first: a
# dense expression is found in the first window without walking a long history. A
# century covers every valid expression (cronsim looks 50 years ahead).
_LOOK_BACK = (
    timedelta(minutes=1),
    timedelta(hours=1),
    timedelta(days=1),
    timedelta(days=32),
    timedelta(days=367),
    timedelta(days=36525),
)
_TICK = timedelta(microseconds=1)

RecurringDescriptor = RecurrentTaskDescriptor | CronTaskDescriptor


def grid_point_at_or_after(
    descriptor: RecurrentTaskDescriptor, occurrence: datetime, now: datetime
) -> datetime | None:
    """The first occurrence at or after ``now`` on the grid through ``occurrence``, or
    None when it would come after ``end_at``."""
    if occurrence >= now:
        return occurrence
    steps = -((occurrence - now) // descriptor.interval)  # ceiling division
    return _until_end(descriptor, _plus(occurrence, steps * descriptor.interval))


def first_occurrence(descriptor: TaskDescriptor, now: datetime) -> datetime | None:
    """The occurrence a task is first due at when it is scheduled at ``now``, or None
    when it has none.

    A one-time task is due at its time. A task whose ``start_at`` has come is due at its
    latest occurrence at or before ``now`` (``start_at`` itself at first): like a late
    one-time task, it runs at once within ``misfire_grace_time`` and is recorded as
    missed beyond it. Otherwise a task is due at its first occurrence at or after
    ``start_at`` or ``now``; an interval task without ``start_at``, one interval after
    ``now`` (to the millisecond, as stores keep times).
    """
    if isinstance(descriptor, ScheduledTaskDescriptor):
        return descriptor.scheduled_at
    if isinstance(descriptor, RecurrentTaskDescriptor) and descriptor.start_at is None:
        now_ms = now.replace(microsecond=now.microsecond // 1000 * 1000)
        return _until_end(descriptor, _plus(now_ms, descriptor.interval))
    start = descriptor.start_at
    if start is not None and start <= now:
        latest = _latest_from(descriptor, start, now)
        if latest is not None:
            return latest
    return next_occurrence(descriptor, _just_before(max(start or now, now)))


def next_occurrence(descriptor: TaskDescriptor, after: datetime) -> datetime | None:
    """The first occurrence strictly after ``after``, or None when the task has no more
    (past its ``end_at``, or past the end of the calendar).

    For a recurrent task without ``start_at``, ``after`` must itself be an occurrence.
    """
    if isinstance(descriptor, ScheduledTaskDescriptor):
        return descriptor.scheduled_at if descriptor.scheduled_at > after else None
    if isinstance(descriptor, RecurrentTaskDescriptor):
        return _until_end(descriptor, _next_on_grid(descriptor, after))
    if descriptor.start_at is not None and after < descriptor.start_at:
        after = _just_before(descriptor.start_at)
    return _until_end(descriptor, cron_after(descriptor.cron, descriptor.timezone, after))


def _next_on_grid(descriptor: RecurrentTaskDescriptor, after: datetime) -> datetime | None:
    # Counting whole intervals from an occurrence (never from when a run ended) keeps the
    # grid drift-free. Without start_at the grid is anchored at the task's first
    # occurrence, and callers pass an occurrence as `after`.
    anchor = descriptor.start_at or after
    if after < anchor:
        return anchor
    steps = (after - anchor) // descriptor.interval + 1
    return _plus(anchor, steps * descriptor.interval)


def _plus(at: datetime, delta: timedelta) -> datetime | None:
    """``at + delta``, or None past the end of the calendar (year 9999)."""
    try:
        return at + delta
    except OverflowError:
        return None


def _just_before(at: datetime) -> datetime:
    """The instant before ``at`` (``at`` itself at the start of the calendar)."""
    try:
        return at - _TICK
    except OverflowError:
        return at


def _until_end(descriptor: RecurringDescriptor, at: datetime | None) -> datetime | None:
    """``at``, or None when it comes after the task's ``end_at``."""
    end = descriptor.end_at
    return None if at is None or (end is not None and at > end) else at


def _horizon(descriptor: TaskDescriptor, now: datetime) -> datetime:
    """The latest time an occurrence due by ``now`` can have: ``now``, or ``end_at``."""
    end = None if isinstance(descriptor, ScheduledTaskDescriptor) else descriptor.end_at
    return now if end is None else min(now, end)


def _latest_from(
    descriptor: RecurringDescriptor, since: datetime, now: datetime
) -> datetime | None:
    """The latest occurrence in ``[since, now]`` (and not after ``end_at``), or None.

    For an interval task, ``since`` is a point of its grid.
    """
    horizon = _horizon(descriptor, now)
    if horizon < since:
        return None
    if isinstance(descriptor, RecurrentTaskDescriptor):
        return since + (horizon - since) // descriptor.interval * descriptor.interval
    for window in _LOOK_BACK:
        lower = since if horizon - since <= window else horizon - window
        found, probe = None, next_occurrence(descriptor, _just_before(lower))
        while probe is not None and probe <= horizon:
            found, probe = probe, next_occurrence(descriptor, probe)
        if found is not None:
            return found
    return None


def describe_trigger(descriptor: TaskDescriptor) -> str:
    """The trigger of ``descriptor`` in words, for messages."""
    if isinstance(descriptor, ScheduledTaskDescriptor):
        return f"scheduled_at={descriptor.scheduled_at.isoformat()!r}"
    if isinstance(descriptor, RecurrentTaskDescriptor):
        text = f"interval={descriptor.interval.total_seconds()!r} s"
    else:
        text = f"cron={descriptor.cron!r} in {descriptor.timezone}"
    for name, at in (("start_at", descriptor.start_at), ("end_at", descriptor.end_at)):
        text += "" if at is None else f", {name}={at.isoformat()!r}"
    return text


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
        first = _until_end(descriptor, max(on_grid, descriptor.start_at or on_grid))
    else:  # on the grid, from start_at if any, to end_at if any
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
        latest = _latest_from(descriptor, due_at, now) or due_at
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
    assert not isinstance(descriptor, ScheduledTaskDescriptor)  # it has one occurrence
    latest = _latest_from(descriptor, occurrences[-1], now) or occurrences[-1]
    return [*occurrences[:-1], latest], 0
