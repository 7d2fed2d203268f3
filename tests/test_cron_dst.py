"""Cron occurrences across daylight-saving changes, checked against a brute-force scan.

The expected occurrences are computed here from scratch, minute by minute (second by
second for 6-field expressions), by the rules written in docs/guides/scheduling.md:

- a wall time that matches the expression fires at the instant it is shown;
- an expression whose minute or hour field starts with ``*`` (wildcard) fires on both
  passes through a repeated hour and not at all in a skipped one;
- any other (fixed) expression fires once in a repeated hour (the first pass), and a
  matching wall time in a skipped range fires at the first instant after the gap, at
  its own seconds;
- day of month and day of week must both match when either starts with ``*``, else
  either may match.
"""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta, timezone
from functools import cache
from zoneinfo import ZoneInfo

import pytest

from cml_jobs import CronTaskDescriptor
from cml_jobs._triggers import next_occurrence

UTC = timezone.utc
ZONES = [
    "Europe/Paris",
    "America/New_York",
    "Australia/Lord_Howe",
    "America/Santiago",
    "Asia/Kathmandu",
    "UTC",
]
SEC, MIN, HOUR = timedelta(seconds=1), timedelta(minutes=1), timedelta(hours=1)
_DOW = {name: n for n, name in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
_MONTH = {
    name: n + 1
    for n, name in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
    )
}


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


# --- an independent reading of an expression -------------------------------------------


def _values(field: str, low: int, high: int, names: dict[str, int]) -> set[int]:
    selected: set[int] = set()
    for part in field.lower().split(","):
        base, _, step_text = part.partition("/")
        number = lambda text: names[text] if text in names else int(text)  # noqa: E731
        if base == "*":
            first, last = low, high
        elif "-" in base:
            first, last = (number(text) for text in base.split("-"))
        else:
            first = number(base)
            last = high if step_text else first
        selected.update(range(first, last + 1, int(step_text or 1)))
    return selected


class Spec:
    """What a cron expression selects, read without cronsim."""

    def __init__(self, text: str) -> None:
        self.text = text
        fields = text.split()
        second, minute, hour, dom, month, dow = fields if len(fields) == 6 else ["0", *fields]
        self.fixed = not (minute.startswith("*") or hour.startswith("*"))
        self.times = (
            _values(second, 0, 59, {}),
            _values(minute, 0, 59, {}),
            _values(hour, 0, 23, {}),
        )
        self.months = _values(month, 1, 12, _MONTH)
        self.days = _values(dom, 1, 31, {})
        self.weekdays = {day % 7 for day in _values(dow, 0, 7, _DOW)}
        self.either_day = not (dom.startswith("*") or dow.startswith("*"))

    @cache  # noqa: B019 - a handful of specs per test
    def on(self, day: date) -> bool:
        """Whether the expression fires on this date (day of month / day of week rule)."""
        by_date, by_weekday = day.day in self.days, day.isoweekday() % 7 in self.weekdays
        fits = (by_date or by_weekday) if self.either_day else (by_date and by_weekday)
        return day.month in self.months and fits

    def matches(self, wall: datetime) -> bool:
        seconds, minutes, hours = self.times
        return (
            wall.second in seconds
            and wall.minute in minutes
            and wall.hour in hours
            and self.on(wall.date())
        )


@cache
def transitions(zone_name: str) -> tuple[datetime, ...]:
    """Every instant in 2025-2027 at which the zone's offset changes (hourly scan, bisection)."""
    zone = ZoneInfo(zone_name)
    found: list[datetime] = []
    moment = at(2025, 1, 1)
    while moment < at(2028, 1, 1):
        following = moment + HOUR
        if moment.astimezone(zone).utcoffset() != following.astimezone(zone).utcoffset():
            low, high = moment, following
            while high - low > SEC:
                middle = low + (high - low) / 2
                same = middle.astimezone(zone).utcoffset() == low.astimezone(zone).utcoffset()
                low, high = (middle, high) if same else (low, middle)
            found.append(high)
        moment = following
    return tuple(found)


def expected(spec: Spec, zone: ZoneInfo, low: datetime, high: datetime) -> set[datetime]:
    """The occurrences in ``[low, high]``, by the documented rules, by brute force."""
    step = SEC if len(spec.text.split()) == 6 else MIN
    found: set[datetime] = set()
    moment = low
    while moment <= high:
        local = moment.astimezone(zone)
        second_pass = local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()
        if spec.matches(local.replace(tzinfo=None)) and not (spec.fixed and second_pass):
            found.add(moment)
        moment += step
    for change in transitions(zone.key) if spec.fixed else ():
        before, after = ((change + d * SEC).astimezone(zone) for d in (-1, 0))
        wall, gap_end = before.replace(tzinfo=None) + SEC, after.replace(tzinfo=None)
        while wall < gap_end:  # a skipped range: its matching fixed times run at its end
            if spec.matches(wall) and low <= change + wall.second * SEC <= high:
                found.add(change + wall.second * SEC)
            wall += step
    return found


def occurrences(spec: Spec, zone: str, low: datetime, high: datetime) -> list[datetime]:
    descriptor = CronTaskDescriptor(id="t", name="Job", cron=spec.text, timezone=zone)
    found: list[datetime] = []
    following = next_occurrence(descriptor, low - timedelta(microseconds=1))
    while following is not None and following <= high:
        found.append(following)
        following = next_occurrence(descriptor, following)
    return found


def check(spec: Spec, zone_name: str, low: datetime, high: datetime, rng: random.Random) -> None:
    """The occurrences in the window are exactly the expected ones, in order, and the next
    occurrence after any instant in it is the first expected one after that instant."""
    zone = ZoneInfo(zone_name)
    want = sorted(expected(spec, zone, low, high))
    got = occurrences(spec, zone_name, low, high)
    where = f"{spec.text!r} in {zone_name} between {low} and {high}"
    assert got == want, f"{where}: extra {sorted(set(got) - set(want))[:5]}, " + (
        f"skipped {sorted(set(want) - set(got))[:5]}"
    )
    descriptor = CronTaskDescriptor(id="t", name="Job", cron=spec.text, timezone=zone_name)
    for _ in range(20):
        after = low + (high - low) * rng.random()
        later = [o for o in want if o > after]
        if later:
            assert next_occurrence(descriptor, after) == later[0], f"{where}: after {after}"


# --- random expressions near each change ------------------------------------------------


def random_spec(rng: random.Random, hour: int, six_fields: bool) -> Spec:
    """An expression likely to fire near local ``hour``: wildcard or fixed minute and hour."""
    near = [(hour + d) % 24 for d in (-1, 0, 1)]
    minute = rng.choice(
        ["*", "*/15", "*/7", "*/30", "0", "30", "15,45", "0-59/20", "10-12", str(rng.randrange(60))]
    )
    around = f"{near[0]}-{near[2]}" if near[0] < near[2] else ",".join(map(str, sorted(near)))
    hours = rng.choice(["*", "*/2", "*/3", around, str(rng.choice(near))])
    if near[0] < near[2] and rng.random() < 0.2:
        hours = f"{around}/2"
    day, month, weekday = "*", "*", "*"
    if rng.random() < 0.3:
        day, weekday = rng.choice(
            [("*", "sun,mon"), ("*", "1-5"), ("1-10", "*"), ("*/2", "*"), ("1-7", "0"), ("15", "6")]
        )
    if rng.random() < 0.1:
        month = "mar-may,sep-nov"
    fields = [minute, hours, day, month, weekday]
    if six_fields:
        fields.insert(0, rng.choice(["0", "*/15", "10,40", "5-7", "30"]))
    return Spec(" ".join(fields))


@pytest.mark.parametrize("zone_name", ZONES)
def test_cron_occurrences_across_dst_changes_match_a_brute_force_scan(zone_name: str) -> None:
    """Random 5- and 6-field expressions, wildcard and fixed, around every change of
    2025-2027 (for zones without one, around Paris's): every occurrence matches and none
    is skipped."""
    zone = ZoneInfo(zone_name)
    changes = transitions(zone_name) or transitions("Europe/Paris")
    assert zone_name in ("Asia/Kathmandu", "UTC") or len(changes) == 6
    rng = random.Random(20250406 + ZONES.index(zone_name))
    for change in changes:
        hour = (change - SEC).astimezone(zone).hour
        for index in range(8):
            six_fields = index % 2 == 1
            span = HOUR if six_fields else 3 * HOUR
            check(random_spec(rng, hour, six_fields), zone_name, change - span, change + span, rng)


FIXED_AND_WILDCARD = [
    "0 2 * * *",
    "30 2 * * *",
    "0 1,2,3 * * *",
    "*/15 * * * *",
    "0 */2 * * *",
    "* 1-3 * * *",
    "0 0 * * *",
    "30 23 * * *",
    "0 0 * * sun",
    "15 30 2 * * *",
    "*/20 * * * * *",
]


@pytest.mark.parametrize("zone_name", ZONES)
@pytest.mark.parametrize("expression", FIXED_AND_WILDCARD)
def test_common_expressions_across_each_change_match_a_brute_force_scan(
    zone_name: str, expression: str
) -> None:
    """Everyday expressions around every change of 2025-2027, a day either side (two
    hours for 6-field ones)."""
    rng = random.Random(7)
    span = 2 * HOUR if len(expression.split()) == 6 else timedelta(days=1)
    for change in transitions(zone_name) or transitions("Europe/Paris"):
        check(Spec(expression), zone_name, change - span, change + span, rng)


@pytest.mark.parametrize(
    ("expression", "zone", "after", "expected_at"),
    [
        # Lord Howe: 2025-04-06 02:00 LHDT (+11) becomes 01:30 LHST (+10:30).
        (
            "*/15 23 * * sun",
            "Australia/Lord_Howe",
            at(2025, 4, 5, 15, 0, 1),
            at(2025, 4, 6, 12, 30),
        ),
        # 2026-04-05: 02:00 local comes once, after the repeated half hour (+10:30).
        ("0 */2 * * *", "Australia/Lord_Howe", at(2026, 4, 4, 15, 0, 1), at(2026, 4, 4, 15, 30)),
        # Santiago: 2025-09-07 00:00 (-04) becomes 01:00 (-03).
        ("* 1-3 * sep-nov 0", "America/Santiago", at(2025, 4, 5, 21), at(2025, 9, 7, 4)),
        ("0-59/20 */2 * * sun,mon", "America/Santiago", at(2025, 9, 7, 3, 1), at(2025, 9, 7, 5)),
        # A fixed midnight that does not exist runs when the day starts, at 01:00 (-03).
        ("0 0 * * *", "America/Santiago", at(2025, 9, 6, 12), at(2025, 9, 7, 4)),
        # Lord Howe: 2025-10-05 02:00 (+10:30) becomes 02:30 (+11); 02:10 runs at 02:30.
        ("10 2 * * *", "Australia/Lord_Howe", at(2025, 10, 4, 12), at(2025, 10, 4, 15, 30)),
    ],
)
def test_reported_dst_cases(
    expression: str, zone: str, after: datetime, expected_at: datetime
) -> None:
    """The cases found wrong on Lord Howe (30-minute change) and Santiago (midnight)."""
    descriptor = CronTaskDescriptor(id="t", name="Job", cron=expression, timezone=zone)
    assert next_occurrence(descriptor, after) == expected_at


def test_restricted_day_of_month_and_day_of_week_run_on_either() -> None:
    """'0 0 1 * mon' runs on the 1st and on every Monday, as the scheduling guide says."""
    descriptor = CronTaskDescriptor(id="t", name="Job", cron="0 0 1 * mon")
    found = [at(2029, 12, 31, 12)]
    for _ in range(6):
        following = next_occurrence(descriptor, found[-1])
        assert following is not None
        found.append(following)
    days = [(1, 1), (1, 7), (1, 14), (1, 21), (1, 28), (2, 1)]  # Tuesday the 1st, Mondays
    assert found[1:] == [at(2030, month, day) for month, day in days]
