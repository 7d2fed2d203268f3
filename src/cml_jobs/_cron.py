"""Cron expressions: the forms cml-jobs accepts, and their times across daylight saving.

Times are found on the zone's wall clock (naive local times, so an "every 2 hours" field
steps local hours, whatever the offset), then mapped to UTC by the rules of Vixie cron
(Debian's cron):

- An expression whose minute or hour field starts with ``*`` is a *wildcard* expression:
  it follows the wall clock. A wall time skipped by a spring-forward does not happen; a
  wall time repeated by a fall-back happens twice, once on each pass.
- Any other expression names *fixed* times: a fixed time in a skipped range runs at the
  first instant after the gap (keeping its seconds); a fixed time in a repeated range
  runs once, on the first pass.

Pure: callers pass every time; nothing reads the clock.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError

__all__ = ["check_cron", "cron_after"]

_UTC = timezone.utc
_SECOND = timedelta(seconds=1)
_YEAR = re.compile(r"(?<![0-9])[0-9]{4}(?![0-9])")  # 4 digits: a year, never a cron value
_FIELDS = "expected 5 fields (minute hour day month weekday), or 6 with seconds first"


def check_cron(expression: str) -> None:
    """Raise ``ValueError`` naming the expression when cml-jobs does not accept it.

    Accepted: 5 fields (minute hour day month weekday), or 6 with a leading seconds field.
    """
    fields = expression.split()
    if len(fields) == 7 or (len(fields) == 6 and _YEAR.search(fields[5])):
        raise ValueError(_year_field_problem(expression, fields))
    if len(fields) not in (5, 6):
        raise ValueError(f"{expression!r} is not a cron expression: {_FIELDS}")
    try:
        if len(fields) == 6:
            _check_seconds_field(fields[0])
        CronSim(expression, datetime(2000, 1, 1))
    except (CronSimError, ValueError) as exc:
        raise ValueError(f"{expression!r} is not a valid cron expression: {exc}") from exc


def _year_field_problem(expression: str, fields: list[str]) -> str:
    """Explain that a year field (Quartz style) is not cron, and what to write instead."""
    position = len(fields)
    year = fields[-1]
    kept = " ".join(field.replace("?", "*") for field in fields[:-1])
    years = sorted(int(text) for text in _YEAR.findall(year))
    bounds = (
        f" with start_at={years[0]}-01-01T00:00 and end_at={years[-1]}-12-31T23:59:59 "
        "(aware datetimes, in the task's timezone)"
        if years
        else ""
    )
    return (
        f"{expression!r} is not a cron expression: {_FIELDS}; its {position}th field "
        f"{year!r} is a year (Quartz style), and cron has no year field: use {kept!r}{bounds}"
    )


def _check_seconds_field(field: str) -> None:
    """Refuse a seconds field that is not ``*``, ``*/N``, ``a``, ``a-b/N`` or a list of them."""
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


def cron_after(expression: str, zone_name: str, after: datetime) -> datetime | None:
    """The first time strictly after ``after`` at which ``expression`` fires in the zone.

    Returns None when there is none before the end of the calendar (year 9999), or in the
    50 years cronsim looks ahead.
    """
    zone = ZoneInfo(zone_name)
    fields = expression.split()
    fixed = not (fields[-5].startswith("*") or fields[-4].startswith("*"))
    try:
        local = after.astimezone(zone)
        wall = local.replace(tzinfo=None, microsecond=0)
        found = [_scan(expression, zone, fixed, after, wall - _gap_behind(after, zone, fixed))]
        repeat = _repeat_ahead(local)
        if repeat and not fixed:  # wall times already shown once come again after `after`
            found.append(_second_pass(expression, zone, after, wall, repeat))
    except OverflowError:  # the calendar ends (years 1 and 9999)
        return None
    return min((at for at in found if at is not None), default=None)


def _scan(
    expression: str, zone: ZoneInfo, fixed: bool, after: datetime, start: datetime
) -> datetime | None:
    """The earliest instant after ``after`` of the wall times from ``start`` on."""
    best = limit = None
    after_on_first_pass = bool(_repeat_ahead(after.astimezone(zone)))
    # A later wall time maps to an earlier instant only inside a repeated range: keep
    # looking until no wall time left can map before the best instant found.
    for wall in CronSim(expression, start - _SECOND):
        if limit is not None and wall > limit:
            break
        for at in _instants(wall, zone, fixed):
            if at > after and (best is None or at < best):
                best, limit = at, _latest_wall_before(at, zone, after_on_first_pass)
    return best


def _second_pass(
    expression: str, zone: ZoneInfo, after: datetime, wall: datetime, repeat: timedelta
) -> datetime | None:
    """``after`` is on the first pass of a repeated range: the second pass of the first
    wall time of that range, up to ``wall``, that the expression matches."""
    change = _transition(after, after + repeat, zone)
    start = change.astimezone(zone).replace(tzinfo=None)  # where the range starts
    for candidate in CronSim(expression, start - _SECOND):
        if candidate > wall:
            return None
        return candidate.replace(tzinfo=zone, fold=1).astimezone(_UTC)
    return None


def _repeat_ahead(local: datetime) -> timedelta:
    """How long the range repeated later is, when ``local`` is on its first pass (else 0)."""
    offset, second_pass = local.utcoffset(), local.replace(fold=1).utcoffset()
    assert offset is not None and second_pass is not None
    return offset - second_pass if local.fold == 0 and second_pass < offset else timedelta(0)


def _gap_behind(after: datetime, zone: ZoneInfo, fixed: bool) -> timedelta:
    """For a fixed expression just after a gap, whose fixed times run in its first minute:
    how far back the gap's wall times go (else 0)."""
    if not fixed:
        return timedelta(0)
    offset = after.astimezone(zone).utcoffset()
    before = (after - timedelta(minutes=1)).astimezone(zone).utcoffset()
    assert offset is not None and before is not None
    return max(offset - before, timedelta(0))


def _latest_wall_before(at: datetime, zone: ZoneInfo, after_on_first_pass: bool) -> datetime:
    """The latest wall time that can still map to an instant before ``at``."""
    local = at.astimezone(zone)
    wall = local.replace(tzinfo=None)
    if local.fold == 1 and after_on_first_pass:  # later first-pass times come earlier
        first_pass, second_pass = local.replace(fold=0).utcoffset(), local.utcoffset()
        assert first_pass is not None and second_pass is not None
        return wall + (first_pass - second_pass)
    return wall


def _instants(wall: datetime, zone: ZoneInfo, fixed: bool) -> tuple[datetime, ...]:
    """The instants at which a matching wall time fires, by the rules above."""
    first = wall.replace(tzinfo=zone).astimezone(_UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(_UTC)
    if first == second:
        return (first,)
    if first < second:  # repeated by a fall-back
        return (first,) if fixed else (first, second)
    if not fixed:  # skipped by a spring-forward
        return ()
    return (_transition(second, first, zone) + timedelta(seconds=wall.second),)


def _transition(before: datetime, after: datetime, zone: ZoneInfo) -> datetime:
    """The instant in ``(before, after]`` at which the zone's offset changes."""
    target = after.astimezone(zone).utcoffset()
    while after - before > _SECOND:
        middle = before + timedelta(seconds=int((after - before).total_seconds()) // 2)
        if middle.astimezone(zone).utcoffset() == target:
            after = middle
        else:
            before = middle
    return after
