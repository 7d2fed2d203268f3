"""Task descriptors: validation, the JSON round trip, and the error raised for each bad input."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from cml_jobs import (
    CronTaskDescriptor,
    InvalidDescriptorError,
    InvalidTaskDataError,
    InvalidTriggerError,
    RecurrentTaskDescriptor,
    ScheduledTaskDescriptor,
)
from cml_jobs._descriptors import encode_descriptor, parse_descriptor

UTC = timezone.utc
T0 = datetime(2030, 1, 1, tzinfo=UTC)
PARIS_SUMMER = timezone(timedelta(hours=2))

RECURRENT = RecurrentTaskDescriptor(
    id="metrics-worker-456",
    name="WorkerMetricsCollectionJob",
    data={"worker_id": "worker-456", "limits": [1, 2.5, None], "flags": {"dry": True}},
    interval=timedelta(minutes=5),
    start_at=T0,
    misfire_grace_time=timedelta(seconds=90),
    coalesce=False,
    max_instances=2,
    jitter=timedelta(seconds=7.5),
    timeout=timedelta(seconds=30),
    max_retries=3,
    retry_backoff=timedelta(seconds=2),
)
SCHEDULED = ScheduledTaskDescriptor(
    id="report:2030-01",
    name="MonthlyReportJob",
    data={"month": "2030-01"},
    scheduled_at=datetime(2030, 2, 1, 6, 0, 0, 123000, tzinfo=UTC),
    misfire_grace_time=None,
)
CRON = CronTaskDescriptor(
    id="digest@team/eu",
    name="SendDigestJob",
    data={},
    cron="*/10 0 9 * * mon-fri",
    timezone="Europe/Paris",
    start_at=datetime(2030, 6, 1, 9, tzinfo=PARIS_SUMMER),
)


@pytest.mark.parametrize("descriptor", [RECURRENT, SCHEDULED, CRON], ids=lambda d: d.kind)
def test_descriptor_round_trips_through_json(descriptor: Any) -> None:
    """Every descriptor kind encodes to JSON and parses back equal, as str or bytes."""
    encoded = encode_descriptor(descriptor)
    assert parse_descriptor(encoded) == descriptor
    assert parse_descriptor(encoded.encode()) == descriptor
    assert type(parse_descriptor(encoded)) is type(descriptor)


@pytest.mark.parametrize("descriptor", [RECURRENT, SCHEDULED, CRON], ids=lambda d: d.kind)
def test_encoded_descriptor_is_plain_json_with_seconds_and_utc_times(descriptor: Any) -> None:
    """The stored form is a JSON object: durations in seconds, datetimes in ISO 8601 UTC,
    and fields left at their defaults left out (``kind`` always written)."""
    stored = json.loads(encode_descriptor(descriptor))
    assert stored["kind"] == descriptor.kind
    durations = ("interval", "misfire_grace_time", "jitter", "timeout", "retry_backoff")
    assert all(isinstance(stored[name], float) for name in durations if stored.get(name))
    assert stored.get("start_at") is None or stored["start_at"].endswith("Z")


def test_encoded_descriptor_leaves_defaults_out() -> None:
    """A descriptor with only its required fields stores only those, and its kind."""
    minimal = RecurrentTaskDescriptor(id="t1", name="Tick", interval=10)
    assert json.loads(encode_descriptor(minimal)) == {
        "kind": "recurrent",
        "id": "t1",
        "name": "Tick",
        "interval": 10.0,
    }


def test_encoded_recurrent_descriptor_shows_each_field() -> None:
    """A recurrent descriptor's JSON holds every field, durations as seconds."""
    assert json.loads(encode_descriptor(RECURRENT)) == {
        "kind": "recurrent",
        "id": "metrics-worker-456",
        "name": "WorkerMetricsCollectionJob",
        "data": {"worker_id": "worker-456", "limits": [1, 2.5, None], "flags": {"dry": True}},
        "start_at": "2030-01-01T00:00:00Z",
        "misfire_grace_time": 90.0,
        "coalesce": False,
        "max_instances": 2,
        "jitter": 7.5,
        "timeout": 30.0,
        "max_retries": 3,
        "retry_backoff": 2.0,
        "interval": 300.0,
    }


@pytest.mark.parametrize(
    ("field", "seconds"),
    [
        ("interval", 90),
        ("interval", 0.25),
        ("misfire_grace_time", 10),
        ("jitter", 2.5),
        ("timeout", 45),
        ("retry_backoff", 0.5),
    ],
)
def test_durations_accept_seconds(field: str, seconds: float) -> None:
    """A duration given as a number of seconds becomes the matching timedelta."""
    values: dict[str, Any] = {"interval": 60, field: seconds}
    descriptor = RecurrentTaskDescriptor(id="t", name="Job", **values)
    assert getattr(descriptor, field) == timedelta(seconds=seconds)


def test_aware_datetimes_are_stored_in_utc_to_the_millisecond() -> None:
    """Datetimes in any offset become UTC, truncated to the millisecond that stores keep."""
    given = datetime(2030, 6, 1, 11, 0, 0, 123456, tzinfo=PARIS_SUMMER)
    descriptor = ScheduledTaskDescriptor(id="t", name="Job", scheduled_at=given)
    assert descriptor.scheduled_at == datetime(2030, 6, 1, 9, 0, 0, 123000, tzinfo=UTC)
    assert descriptor.scheduled_at.utcoffset() == timedelta(0)


def test_defaults_are_the_documented_ones() -> None:
    """A minimal descriptor coalesces, allows one run at once and a minute of grace."""
    descriptor = RecurrentTaskDescriptor(id="t", name="Job", interval=60)
    assert descriptor.data == {}
    assert descriptor.misfire_grace_time == timedelta(seconds=60)
    assert descriptor.coalesce is True
    assert descriptor.max_instances == 1
    assert descriptor.jitter == timedelta(0)
    assert descriptor.max_retries == 0
    assert CronTaskDescriptor(id="t", name="Job", cron="* * * * *").timezone == "UTC"


def test_descriptors_are_frozen() -> None:
    """A descriptor cannot be changed after validation."""
    with pytest.raises(Exception, match="frozen"):
        RECURRENT.interval = timedelta(seconds=1)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kind", "values"),
    [
        (RecurrentTaskDescriptor, {"interval": 60, "start_at": datetime(2030, 1, 1)}),
        (CronTaskDescriptor, {"cron": "* * * * *", "start_at": datetime(2030, 1, 1)}),
        (ScheduledTaskDescriptor, {"scheduled_at": datetime(2030, 1, 1)}),
    ],
    ids=["recurrent-start_at", "cron-start_at", "scheduled_at"],
)
def test_naive_datetimes_are_refused(kind: Any, values: dict[str, Any]) -> None:
    """A datetime without a timezone is refused as a bad trigger, and the value is shown."""
    with pytest.raises(InvalidTriggerError) as caught:
        kind(id="t", name="Job", **values)
    assert "timezone" in str(caught.value)
    assert repr(datetime(2030, 1, 1)) in str(caught.value)


# Each bad input: the constructor arguments, the exact error class, and texts the message
# must contain (the bad value, shown with repr, and the field).
BAD_INPUTS: list[Any] = [
    pytest.param({"interval": 0}, InvalidTriggerError, ["interval", "0"], id="zero-interval"),
    pytest.param({"interval": -5}, InvalidTriggerError, ["interval", "-5"], id="negative-interval"),
    pytest.param(
        {"interval": timedelta(microseconds=10)},
        InvalidTriggerError,
        ["interval", "at least 1 ms"],
        id="sub-millisecond-interval",
    ),
    pytest.param({"interval": "soon"}, InvalidTriggerError, ["'soon'"], id="interval-not-a-number"),
    pytest.param(
        {"interval": 60, "jitter": -1}, InvalidTriggerError, ["jitter", "-1"], id="negative-jitter"
    ),
    pytest.param(
        {"cron": "* * *"}, InvalidTriggerError, ["'* * *'", "expected 5 fields"], id="cron-3-fields"
    ),
    pytest.param({"cron": "61 * * * *"}, InvalidTriggerError, ["'61 * * * *'"], id="cron-minute"),
    pytest.param(
        {"cron": "75 * * * * *"}, InvalidTriggerError, ["'75 * * * * *'"], id="cron-seconds"
    ),
    pytest.param(
        {"cron": "* * * * *", "timezone": "Mars/Olympus"},
        InvalidTriggerError,
        ["'Mars/Olympus'", "IANA"],
        id="unknown-timezone",
    ),
    pytest.param(
        {"cron": "* * * * *", "timezone": "../../etc/passwd"},
        InvalidTriggerError,
        ["'../../etc/passwd'"],
        id="timezone-path",
    ),
    pytest.param(
        {"interval": 60, "data": {"when": datetime(2030, 1, 1, tzinfo=UTC)}},
        InvalidTaskDataError,
        ["data.when", repr(datetime(2030, 1, 1, tzinfo=UTC)), "JSON"],
        id="data-datetime",
    ),
    pytest.param(
        {"interval": 60, "data": {"tags": {"a"}}},
        InvalidTaskDataError,
        ["data.tags", "{'a'}", "JSON"],
        id="data-set",
    ),
    pytest.param(
        {"interval": 60, "data": {"ratio": math.nan}},
        InvalidTaskDataError,
        ["nan", "JSON"],
        id="data-nan",
    ),
    pytest.param(
        {"interval": 60, "data": {"nested": [1, {"limit": math.inf}]}},
        InvalidTaskDataError,
        ["inf", "JSON"],
        id="data-nested-infinity",
    ),
    pytest.param(
        {"interval": 60, "data": {"raw": b"bytes"}},
        InvalidTaskDataError,
        ["data.raw", "b'bytes'"],
        id="data-bytes",
    ),
    pytest.param(
        {"interval": 60, "priority": 5},
        InvalidDescriptorError,
        ["priority", "5"],
        id="unknown-field",
    ),
    pytest.param(
        {"interval": 60, "id": "-starts-with-dash"},
        InvalidDescriptorError,
        ["id", "'-starts-with-dash'"],
        id="id-bad-first-character",
    ),
    pytest.param(
        {"interval": 60, "id": "has space"},
        InvalidDescriptorError,
        ["id", "'has space'"],
        id="id-with-space",
    ),
    pytest.param({"interval": 60, "id": ""}, InvalidDescriptorError, ["id", "''"], id="empty-id"),
    pytest.param(
        {"interval": 60, "id": "x" * 201}, InvalidDescriptorError, ["id", "1-200"], id="long-id"
    ),
    pytest.param({"interval": 60, "name": ""}, InvalidDescriptorError, ["name"], id="empty-name"),
    pytest.param(
        {"interval": 60, "max_instances": 0},
        InvalidDescriptorError,
        ["max_instances", "0"],
        id="zero-max-instances",
    ),
    pytest.param(
        {"interval": 60, "misfire_grace_time": 0},
        InvalidDescriptorError,
        ["misfire_grace_time", "0"],
        id="zero-grace",
    ),
    pytest.param(
        {"interval": 60, "max_retries": 101},
        InvalidDescriptorError,
        ["max_retries", "101"],
        id="too-many-retries",
    ),
]


@pytest.mark.parametrize(("values", "error", "shown"), BAD_INPUTS)
def test_bad_input_raises_the_specific_error_naming_the_value(
    values: dict[str, Any], error: type[Exception], shown: list[str]
) -> None:
    """Each bad input raises its own CmlJobsError subclass, and the message shows the value."""
    fields: dict[str, Any] = {"id": "t", "name": "Job", **values}
    kind = CronTaskDescriptor if "cron" in fields else RecurrentTaskDescriptor
    with pytest.raises(InvalidDescriptorError) as caught:
        kind(**fields)
    assert type(caught.value) is error
    for text in shown:
        assert text in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"\xff\xfe\x00garbage", id="binary-garbage"),
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"", id="empty"),
        pytest.param(b"null", id="null"),
        pytest.param(b"[]", id="array"),
        pytest.param(b'"recurrent"', id="string"),
        pytest.param(b"{}", id="empty-object"),
        pytest.param(b'{"kind": "weekly", "id": "t", "name": "Job"}', id="unknown-kind"),
        pytest.param(b'{"kind": 5, "id": "t", "name": "Job"}', id="kind-not-a-string"),
        pytest.param(b'{"kind": "recurrent", "id": "t", "name": "Job"}', id="missing-interval"),
        pytest.param(
            b'{"kind": "recurrent", "id": "t", "name": "Job", "interval": 60} trailing',
            id="trailing-garbage",
        ),
        pytest.param(
            b'{"kind": "recurrent", "id": "t", "name": "Job", "interval": 60, "x": 1}',
            id="extra-field",
        ),
        pytest.param(
            b'{"kind": "recurrent", "id": "t", "name": "Job", "interval": 60, "data": []}',
            id="data-not-an-object",
        ),
        pytest.param(
            b'{"kind": "recurrent", "id": "t", "name": "Job", "interval": 60, "data": {"x": NaN}}',
            id="data-nan",
        ),
        pytest.param(
            b'{"kind": "recurrent", "id": "t", "name": "Job", "interval": 60, '
            b'"data": {"x": 1e999}}',
            id="data-number-overflow",
        ),
        pytest.param(
            b'{"kind": "recurrent", "id": "t", "name": "Job", "interval": 60, "data": {"x": '
            + b"[" * 5000
            + b"]" * 5000
            + b"}}",
            id="data-nested-too-deep",
        ),
        pytest.param(
            b'{"kind": "recurrent", "id": "t", "name": "Job", "interval": 1e300}',
            id="interval-1e300",
        ),
        pytest.param(
            b'{"kind": "recurrent", "id": "t", "name": "Job", "interval": "P99999999999D"}',
            id="interval-iso-overflow",
        ),
        pytest.param(
            b'{"kind": "recurrent", "id": "t", "name": "Job", "interval": 60, "start_at": 1e20}',
            id="start_at-timestamp-overflow",
        ),
        pytest.param(
            b'{"kind": "scheduled", "id": "t", "name": "Job", '
            b'"scheduled_at": "9999-12-31T23:59:59-05:00"}',
            id="year-9999-overflows-in-utc",
        ),
        pytest.param(
            b'{"kind": "scheduled", "id": "t", "name": "Job", '
            b'"scheduled_at": "0001-01-01T00:00:00+05:00"}',
            id="year-1-underflows-in-utc",
        ),
        pytest.param(
            b'{"kind": "scheduled", "id": "t", "name": "Job", '
            b'"scheduled_at": "10000-01-01T00:00Z"}',
            id="year-10000",
        ),
        pytest.param(
            b'{"kind": "scheduled", "id": "t", "name": "Job", "scheduled_at": "2030-01-01T00:00"}',
            id="naive-datetime",
        ),
        pytest.param(
            b'{"kind": "cron", "id": "t", "name": "Job", "cron": "* * * * *", '
            b'"timezone": "\\u0000"}',
            id="timezone-nul",
        ),
        pytest.param(
            b'{"kind": "cron", "id": "t", "name": "Job", "cron": "99999999999999999999 * * * * *"}',
            id="cron-huge-seconds",
        ),
        pytest.param(
            b'{"kind": "recurrent", "id": "t", "name": "Job", "interval": 60, "max_retries": '
            + b"9" * 5000
            + b"}",
            id="huge-integer",
        ),
        pytest.param("\ud800", id="lone-surrogate"),
    ],
)
def test_parse_descriptor_refuses_bad_stored_text_with_invalid_descriptor_error(
    raw: str | bytes,
) -> None:
    """Whatever is stored, parse_descriptor raises InvalidDescriptorError and nothing else."""
    with pytest.raises(InvalidDescriptorError) as caught:
        parse_descriptor(raw)
    assert str(caught.value).startswith("invalid ")


def test_parse_descriptor_message_shows_the_bad_value() -> None:
    """A stored descriptor with a bad field is refused with that field and value in the message."""
    raw = '{"kind": "recurrent", "id": "t", "name": "Job", "interval": "soon"}'
    with pytest.raises(InvalidDescriptorError, match="interval") as caught:
        parse_descriptor(raw)
    assert "'soon'" in str(caught.value)


def test_year_9999_in_utc_is_accepted() -> None:
    """The last representable UTC time is a valid, if distant, one-time task."""
    raw = '{"kind": "scheduled", "id": "t", "name": "Job", "scheduled_at": "9999-12-31T23:59:59Z"}'
    assert parse_descriptor(raw).scheduled_at == datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "when",
    [
        datetime(9999, 12, 31, 23, 0, tzinfo=timezone(-timedelta(hours=5))),
        datetime(1, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=5))),
    ],
    ids=["after-year-9999-in-utc", "before-year-1-in-utc"],
)
def test_datetime_out_of_range_in_utc_is_refused_as_a_bad_trigger(when: datetime) -> None:
    """A datetime that cannot be expressed in UTC is refused, showing the value."""
    with pytest.raises(InvalidTriggerError) as caught:
        ScheduledTaskDescriptor(id="t", name="Job", scheduled_at=when)
    assert when.isoformat() in str(caught.value)
