"""An APScheduler 3 ``CronTrigger``'s fields as a cml-jobs cron expression.

Pure: reads the trigger's parsed fields (never its text) and either returns the
six-field expression that fires at the same times or says why none does.
"""

from __future__ import annotations

from typing import Any

__all__ = ["UnsupportedCron", "cron_expression"]

# APScheduler's field maxima, for a range written without its end ("5/10": from 5 on).
_MAX = {"second": 59, "minute": 59, "hour": 23, "day": 31, "month": 12, "day_of_week": 6}
_ORDER = ("second", "minute", "hour", "day", "month", "day_of_week")
_POSITIONS = ("#1", "#2", "#3", "#4", "#5", "L")


class UnsupportedCron(ValueError):
    """A cron field that cml-jobs' cron expressions cannot express; the message says which."""


def cron_expression(fields: list[Any]) -> str:
    """The six-field cron expression (seconds first) equivalent to a ``CronTrigger``'s
    ``fields``.

    APScheduler numbers weekdays from Monday (0) to Sunday (6); cron from Sunday (0 or 7),
    so weekdays are renumbered. APScheduler runs on days that match *both* ``day`` and
    ``day_of_week``, cron on days matching *either*, so the two together are refused.

    Raises:
        UnsupportedCron: a field cml-jobs cannot express (``year``, ``week``, both day
            fields restricted, or an expression of an unknown kind).
    """
    by_name = {field.name: field for field in fields}
    for name in ("year", "week"):
        if name in by_name and str(by_name[name]) != "*":
            raise UnsupportedCron(
                f"{name}={str(by_name[name])!r}: cml-jobs cron expressions have no {name} field"
            )
    parts = {name: _field(name, by_name[name].expressions) for name in _ORDER}
    if parts["day"].startswith("@"):  # '2nd fri' / 'last fri': a weekday position
        if parts["day_of_week"] != "*":
            raise UnsupportedCron(_both_days(by_name))
        parts["day"], parts["day_of_week"] = "*", parts["day"][1:]
    elif parts["day"] != "*" and parts["day_of_week"] != "*":
        raise UnsupportedCron(_both_days(by_name))
    return " ".join(parts[name] for name in _ORDER)


def _both_days(by_name: dict[str, Any]) -> str:
    return (
        f"day={str(by_name['day'])!r} with day_of_week={str(by_name['day_of_week'])!r}: "
        "APScheduler runs on days matching both, cron on days matching either; keep one "
        "of the fields in the cron and check the other in the job"
    )


def _field(name: str, expressions: list[Any]) -> str:
    texts = [_expression(name, expression) for expression in expressions]
    positions = [text for text in texts if text.startswith("@")]
    if positions and len(texts) > 1:
        raise UnsupportedCron(
            f"day={','.join(str(e) for e in expressions)!r}: a weekday position ('2nd fri') "
            "cannot be combined with other days in cml-jobs"
        )
    return ",".join(texts)


def _expression(name: str, expression: Any) -> str:
    kind = type(expression).__name__
    weekday = name == "day_of_week"
    if kind == "AllExpression":
        step = expression.step
        if weekday and step:
            return f"1-7/{step}"
        return f"*/{step}" if step else "*"
    if kind in ("RangeExpression", "MonthRangeExpression", "WeekdayRangeExpression"):
        return _range(name, expression.first, expression.last, expression.step)
    if kind == "LastDayOfMonthExpression":
        return "L"
    if kind == "WeekdayPositionExpression":
        return f"@{expression.weekday + 1}{_POSITIONS[expression.option_num]}"
    raise UnsupportedCron(f"{name}={str(expression)!r}: an expression cml-jobs does not know")


def _range(name: str, first: int, last: int | None, step: int | None) -> str:
    if last is None:
        last = _MAX[name]
    if name == "day_of_week":  # Monday 0 .. Sunday 6 -> Monday 1 .. Sunday 7
        first, last = first + 1, last + 1
    text = str(first) if first == last else f"{first}-{last}"
    return f"{text}/{step}" if step else text
