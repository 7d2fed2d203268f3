"""Metrics, spans and run logs, read back through the OpenTelemetry SDK's in-memory
reader and exporter (installed once per session: tests/otel_sdk.py)."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from cml_jobs import (
    BackgroundTaskScheduler,
    EventKind,
    RecurrentTaskDescriptor,
    ScheduledTaskDescriptor,
)
from cml_jobs._telemetry import _DURATION_BUCKETS, _LAG_BUCKETS
from cml_jobs.stores import Run, ScheduleStore
from cml_jobs.testing import ManualClock, run_due
from tests.fixtures.behaviour_jobs import OneShotJob, ScriptedJob
from tests.otel_sdk import Sdk, attrs, delta, fresh_sdk

JOBS = ["tests.fixtures.behaviour_jobs", "tests.fixtures.telemetry_jobs"]
ROOT = Path(__file__).resolve().parent.parent
SYSTEM = "cml_jobs"


@pytest.fixture
def otel() -> Iterator[Sdk]:
    """The OpenTelemetry SDK, installed once per session; no spans from other tests."""
    sdk = fresh_sdk()
    yield sdk
    sdk.spans.clear()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def scheduler(clock: ManualClock) -> AsyncIterator[BackgroundTaskScheduler]:
    """An in-memory scheduler without a worker: the tests run due occurrences themselves."""
    ScriptedJob.attempts.clear()
    OneShotJob.ran.clear()
    app = BackgroundTaskScheduler.configure(modules=JOBS, clock=clock, run_worker=False)
    async with app:
        yield app


@pytest.fixture
async def any_scheduler(
    store: ScheduleStore, clock: ManualClock
) -> AsyncIterator[BackgroundTaskScheduler]:
    """The same, over every store (the trace context is kept by the store)."""
    app = BackgroundTaskScheduler.configure(
        modules=JOBS, store=store, clock=clock, run_worker=False
    )
    async with app:
        yield app


def scripted(task_id: str, mode: str = "ok", **options: object) -> RecurrentTaskDescriptor:
    return RecurrentTaskDescriptor(
        id=task_id, name="ScriptedJob", data={"mode": mode}, interval=60, **options
    )


def outcome(job: str, value: str, **extra: str) -> frozenset[tuple[str, str]]:
    return attrs(
        messaging__system=SYSTEM,
        messaging__destination__name=job,
        cml_jobs__outcome=value,
        **extra,
    )


def job(name: str, **extra: str) -> frozenset[tuple[str, str]]:
    return attrs(messaging__system=SYSTEM, messaging__destination__name=name, **extra)


async def _skip_one(scheduler: BackgroundTaskScheduler, clock: ManualClock) -> None:
    """One occurrence skipped: the previous run of its task still goes on."""
    started = asyncio.Event()
    scheduler.subscribe(
        lambda e: e.kind is EventKind.STARTED and e.task_id == "busy" and started.set()
    )
    await scheduler.bus.schedule_task(scripted("busy", "hang"))
    clock.advance(seconds=60)
    holding = asyncio.create_task(run_due(scheduler))
    await asyncio.wait_for(started.wait(), 30)
    clock.advance(seconds=60)
    assert [e.kind for e in await run_due(scheduler)] == [EventKind.SKIPPED]
    await scheduler.bus.cancel_task("busy")  # stops the hanging run; nothing is recorded
    await asyncio.wait_for(holding, 30)


async def _every_outcome(scheduler: BackgroundTaskScheduler, clock: ManualClock) -> None:
    """Runs that are skipped, succeed, fail after a retry, time out, and are missed."""
    await _skip_one(scheduler, clock)
    bus = scheduler.bus
    await bus.schedule_task(scripted("ok"))
    await bus.schedule_task(scripted("fail", "fail", max_retries=1, retry_backoff=0.001))
    await bus.schedule_task(scripted("hang", "hang", timeout=0.05))
    await bus.schedule_task(
        ScheduledTaskDescriptor(
            id="once",
            name="OneShotJob",
            scheduled_at=clock.now() + timedelta(seconds=10),
            misfire_grace_time=5,
        )
    )
    clock.advance(seconds=60)
    await run_due(scheduler)
    await scheduler.list_tasks()  # refreshes the task gauge


async def test_every_instrument_counts_runs_that_succeed_fail_time_out_are_missed_or_skipped(
    scheduler: BackgroundTaskScheduler, clock: ManualClock, otel: Sdk
) -> None:
    """Each instrument exists with its unit, and counts each outcome under its attributes."""
    before = otel.points()
    await _every_outcome(scheduler, clock)
    changed = delta(before, otel.points())

    runs = {key[1]: n for key, n in changed.items() if key[0] == "cml_jobs.runs"}
    assert runs == {
        outcome("ScriptedJob", "skipped"): 1,
        outcome("ScriptedJob", "succeeded"): 1,
        outcome("ScriptedJob", "failed", error__type="RuntimeError"): 1,
        outcome("ScriptedJob", "timed_out", error__type="TimeoutError"): 1,
        outcome("OneShotJob", "missed"): 1,
    }
    durations = {k[1]: n for k, n in changed.items() if k[0] == "cml_jobs.run.duration"}
    assert durations == {
        outcome("ScriptedJob", "succeeded"): 1,
        outcome("ScriptedJob", "failed", error__type="RuntimeError"): 1,
        outcome("ScriptedJob", "timed_out", error__type="TimeoutError"): 1,
    }
    assert changed[("cml_jobs.schedule.lag", job("ScriptedJob"))] == 4  # the busy run too
    assert changed[("cml_jobs.retries", job("ScriptedJob", error__type="RuntimeError"))] == 1
    assert ("cml_jobs.runs.active", job("ScriptedJob")) not in changed  # back to zero
    gauge = {k[1]: n for k, n in otel.points().items() if k[0] == "cml_jobs.tasks"}
    assert gauge == {
        attrs(cml_jobs__task__state="scheduled"): 3,
        attrs(cml_jobs__task__state="running"): 0,
        attrs(cml_jobs__task__state="paused"): 0,
        attrs(cml_jobs__task__state="parked"): 0,
    }


async def test_instruments_have_their_units_and_second_buckets(
    scheduler: BackgroundTaskScheduler, clock: ManualClock, otel: Sdk
) -> None:
    """Durations and lag are in seconds with explicit buckets; counts have curly units."""
    await _every_outcome(scheduler, clock)
    found = otel.metrics()
    units = {name: metric.unit for name, metric in found.items()}
    assert units == {
        "cml_jobs.run.duration": "s",
        "cml_jobs.schedule.lag": "s",
        "cml_jobs.runs": "{occurrence}",
        "cml_jobs.runs.active": "{run}",
        "cml_jobs.retries": "{retry}",
        "cml_jobs.tasks": "{task}",
    }
    [duration, *_] = found["cml_jobs.run.duration"].data.data_points
    assert list(duration.explicit_bounds) == _DURATION_BUCKETS
    assert _DURATION_BUCKETS[0] == 0.005 and _DURATION_BUCKETS[-1] == 600
    [lag, *_] = found["cml_jobs.schedule.lag"].data.data_points
    assert list(lag.explicit_bounds) == _LAG_BUCKETS


async def test_no_metric_carries_a_task_id(
    scheduler: BackgroundTaskScheduler, clock: ManualClock, otel: Sdk
) -> None:
    """Task ids stay off metrics (unbounded cardinality); they are on spans only."""
    await _every_outcome(scheduler, clock)
    names = {name for key in otel.points() for name, _ in key[1]}
    assert names and not any("task.id" in name for name in names)
    assert names <= {
        "messaging.system",
        "messaging.destination.name",
        "cml_jobs.outcome",
        "cml_jobs.task.state",
        "error.type",
    }


async def test_the_run_span_starts_a_new_trace_linked_to_the_scheduling_span(
    any_scheduler: BackgroundTaskScheduler, clock: ManualClock, otel: Sdk
) -> None:
    """Producer and consumer spans are in different traces; the run's links to the first."""
    await any_scheduler.bus.schedule_task(scripted("linked"))
    clock.advance(seconds=60)
    await run_due(any_scheduler)
    clock.advance(seconds=60)
    await run_due(any_scheduler)
    spans = otel.spans.get_finished_spans()
    [producer] = [s for s in spans if s.kind is SpanKind.PRODUCER]
    runs = [s for s in spans if s.kind is SpanKind.CONSUMER]
    assert producer.name == "create ScriptedJob"
    assert [s.name for s in runs] == ["process ScriptedJob"] * 2
    assert producer.attributes is not None
    assert producer.attributes["cml_jobs.task.id"] == "linked"
    for run in runs:
        assert run.parent is None
        assert run.context.trace_id != producer.context.trace_id
        [link] = run.links
        assert link.context.span_id == producer.context.span_id
        assert link.context.trace_id == producer.context.trace_id
    assert runs[0].context.trace_id != runs[1].context.trace_id  # no endless trace


async def test_a_failed_run_span_has_error_status_and_the_exception(
    scheduler: BackgroundTaskScheduler, clock: ManualClock, otel: Sdk
) -> None:
    """The failed attempt's span is ERROR, with an exception event and error.type."""
    await scheduler.bus.schedule_task(scripted("bad", "fail"))
    clock.advance(seconds=60)
    await run_due(scheduler)
    [run] = [s for s in otel.spans.get_finished_spans() if s.kind is SpanKind.CONSUMER]
    assert run.status.status_code is StatusCode.ERROR
    assert run.attributes is not None and run.attributes["error.type"] == "RuntimeError"
    [event] = run.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.message"] == "boom on attempt 1"


async def test_users_own_spans_nest_under_the_run_span(
    scheduler: BackgroundTaskScheduler, clock: ManualClock, otel: Sdk
) -> None:
    """A span the job opens in run_every is a child of the run's span, in its trace."""
    await scheduler.bus.schedule_task(
        RecurrentTaskDescriptor(id="traced", name="TracedJob", interval=60)
    )
    clock.advance(seconds=60)
    await run_due(scheduler)
    spans = {span.name: span for span in otel.spans.get_finished_spans()}
    user, run = spans["user work"], spans["process TracedJob"]
    assert user.parent is not None
    assert user.parent.span_id == run.context.span_id
    assert user.context.trace_id == run.context.trace_id


async def test_the_scheduling_trace_context_is_stored_with_the_task(
    any_scheduler: BackgroundTaskScheduler, otel: Sdk
) -> None:
    """The producer span's W3C traceparent is kept by the store."""
    await any_scheduler.bus.schedule_task(scripted("stored"))
    [producer] = otel.spans.get_finished_spans()
    state = await any_scheduler.runtime.store.get("stored")
    assert state is not None and state.trace_context is not None
    version, trace_id, span_id, flags = state.trace_context.split("-")
    assert version == "00" and int(flags, 16) & 1  # sampled
    assert int(trace_id, 16) == producer.context.trace_id
    assert int(span_id, 16) == producer.context.span_id


async def test_the_trace_context_travels_in_the_arq_payload(
    any_scheduler: BackgroundTaskScheduler,
) -> None:
    """A run handed to the arq queue (dispatch="queue") carries its task's trace context
    and its descriptor in the JSON payload, and nothing else the worker would need."""
    from cml_jobs._execution import Assignment
    from cml_jobs.worker._arq import ArqSink

    class Pool:
        def __init__(self) -> None:
            self.payloads: list[dict[str, object]] = []

        async def enqueue_job(self, function: str, payload: dict[str, object], **_: object) -> None:
            self.payloads.append(payload)

    task = await any_scheduler.bus.schedule_task(scripted("traced"))
    assert task.descriptor is not None and task.next_run_time is not None
    trace = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    pool = Pool()
    sink = ArqSink(any_scheduler.runtime, pool)  # type: ignore[arg-type]
    await sink.submit([Assignment(Run("traced", 7, task.next_run_time), task.descriptor, trace)])
    [payload] = pool.payloads
    assert payload["c"] == trace
    assert any_scheduler.runtime.codec.decode(str(payload["d"])) == task.descriptor


async def test_one_log_line_per_outcome_with_redacted_data(
    scheduler: BackgroundTaskScheduler, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """cml_jobs.runs logs each outcome with its fields; redacted data shows no secret."""
    bus = scheduler.bus
    await bus.schedule_task(
        RecurrentTaskDescriptor(
            id="secret", name="SecretJob", data={"account": "a1", "token": "s3cr3t"}, interval=60
        )
    )
    await bus.schedule_task(
        RecurrentTaskDescriptor(id="opaque", name="OpaqueJob", data={"account": "a2"}, interval=60)
    )
    clock.advance(seconds=60)
    with caplog.at_level(logging.INFO, logger="cml_jobs.runs"):
        events = await run_due(scheduler)
    records = {r.cml_jobs["task_id"]: r for r in caplog.records if r.name == "cml_jobs.runs"}  # type: ignore[attr-defined]
    secret, opaque = records["secret"], records["opaque"]
    assert "s3cr3t" not in caplog.text and "a2" not in caplog.text
    assert secret.cml_jobs["data"] == {"account": "a1", "token": "[redacted]"}  # type: ignore[attr-defined]
    assert opaque.cml_jobs["data"] == {"account": "[redacted]"}  # type: ignore[attr-defined]
    fields = secret.cml_jobs  # type: ignore[attr-defined]
    assert {"job", "occurrence_at", "attempt", "duration", "outcome"} <= set(fields)
    assert fields["outcome"] == "succeeded"
    assert "task=secret job=SecretJob" in secret.getMessage()
    ended = [e for e in events if e.kind is EventKind.SUCCEEDED and e.task_id == "secret"]
    assert ended[0].data == {"account": "a1", "token": "[redacted]"}
    assert "s3cr3t" not in ended[0].to_json()


async def test_a_failed_run_is_logged_at_error_with_its_traceback(
    scheduler: BackgroundTaskScheduler, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A failure's log line carries the exception, so its traceback is printed."""
    await scheduler.bus.schedule_task(scripted("bad", "fail"))
    clock.advance(seconds=60)
    with caplog.at_level(logging.INFO, logger="cml_jobs.runs"):
        await run_due(scheduler)
    [record] = [r for r in caplog.records if r.name == "cml_jobs.runs"]
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert "outcome=failed" in record.getMessage()


def test_the_telemetry_example_serves_the_run_counter_and_the_lag_histogram() -> None:
    """examples/telemetry/app.py: /metrics shows runs and lag; the console shows run spans."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = subprocess.Popen(
        [sys.executable, "examples/telemetry/app.py", "--port", str(port), "--seconds", "4"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        metrics_text = _scrape_until(f"http://127.0.0.1:{port}/metrics", "cml_jobs_runs_total{")
        output, errors = app.communicate(timeout=60)
    finally:
        app.kill() if app.poll() is None else None
    assert app.returncode == 0, errors[-3000:]
    assert 'cml_jobs_runs_total{cml_jobs_outcome="succeeded"' in metrics_text
    assert 'cml_jobs_schedule_lag_seconds_bucket{le="0.005"' in metrics_text
    assert "cml_jobs_run_duration_seconds_bucket{" in metrics_text
    assert '"name": "process PingJob"' in output and '"name": "create PingJob"' in output


def _scrape_until(url: str, wanted: str, timeout: float = 30) -> str:
    """GET ``url`` until its body contains ``wanted``; the last body is returned."""
    deadline = time.monotonic() + timeout
    body = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                body = response.read().decode()
        except OSError:
            body = ""
        if wanted in body:
            return body
        time.sleep(0.2)
    raise AssertionError(f"{wanted!r} never appeared at {url}:\n{body[-2000:]}")
