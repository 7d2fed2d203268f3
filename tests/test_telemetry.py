"""Metrics, spans and run logs, read back through the OpenTelemetry SDK's in-memory
reader and exporter (installed once per session: tests/otel_sdk.py)."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from opentelemetry import trace
from opentelemetry.sdk.metrics.export import Gauge, Histogram, Sum
from opentelemetry.trace import SpanKind, StatusCode

from cml_jobs import (
    BackgroundTaskScheduler,
    EventKind,
    RecurrentTaskDescriptor,
    ScheduledTaskDescriptor,
)
from cml_jobs.stores import Run, ScheduleStore
from cml_jobs.testing import InMemoryScheduleStore, ManualClock, run_due
from tests.fixtures.behaviour_jobs import GatedJob, OneShotJob, ScriptedJob
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
    """An occurrence of GatedJob comes due while the previous run waits at its gate (and
    still holds its lease: the interval is shorter than the lease)."""
    GatedJob.reset()
    await scheduler.bus.schedule_task(
        RecurrentTaskDescriptor(id="busy", name="GatedJob", interval=10)
    )
    clock.advance(seconds=10)
    running = asyncio.create_task(run_due(scheduler))
    async with asyncio.timeout(10):
        await GatedJob.waiting.wait()
        clock.advance(seconds=10)
        assert [e.kind for e in await run_due(scheduler)] == [EventKind.SKIPPED]
        GatedJob.gate.set()
        await running
    await scheduler.bus.cancel_task("busy")


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
        outcome("GatedJob", "skipped"): 1,
        outcome("GatedJob", "succeeded"): 1,
        outcome("ScriptedJob", "succeeded"): 1,
        outcome("ScriptedJob", "failed", error__type="RuntimeError"): 1,
        outcome("ScriptedJob", "timed_out", error__type="TimeoutError"): 1,
        outcome("OneShotJob", "missed"): 1,
    }
    durations = {k[1]: n for k, n in changed.items() if k[0] == "cml_jobs.run.duration"}
    assert durations == {
        outcome("GatedJob", "succeeded"): 1,
        outcome("ScriptedJob", "succeeded"): 1,
        outcome("ScriptedJob", "failed", error__type="RuntimeError"): 1,
        outcome("ScriptedJob", "timed_out", error__type="TimeoutError"): 1,
    }
    assert changed[("cml_jobs.schedule.lag", job("ScriptedJob"))] == 3
    assert changed[("cml_jobs.retries", job("ScriptedJob", error__type="RuntimeError"))] == 1
    assert ("cml_jobs.runs.active", job("ScriptedJob")) not in changed  # back to zero
    assert ("cml_jobs.runs.active", job("GatedJob")) not in changed
    gauge = {k[1]: n for k, n in otel.points().items() if k[0] == "cml_jobs.tasks"}
    assert gauge == {
        attrs(cml_jobs__task__state="scheduled"): 3,
        attrs(cml_jobs__task__state="running"): 0,
        attrs(cml_jobs__task__state="paused"): 0,
        attrs(cml_jobs__task__state="parked"): 0,
    }


OBSERVABILITY = (ROOT / "docs" / "observability.md").read_text()
_KINDS = {"histogram": Histogram, "counter": Sum, "up-down counter": Sum, "observable gauge": Gauge}


def documented_instruments() -> dict[str, tuple[str, str, str]]:
    """docs/observability.md's metrics table: instrument -> (kind, unit, meaning)."""
    rows = re.findall(
        r"^\| `(cml_jobs\.[a-z._]+)` \| ([a-z -]+) \| `([^`]+)` \| [^|]* \| (.+) \|$",
        OBSERVABILITY,
        re.MULTILINE,
    )
    return {name: (kind, unit, meaning) for name, kind, unit, meaning in rows}


def documented_buckets(name: str) -> tuple[float, float]:
    """The first and last bucket boundaries the docs state for a histogram, in seconds."""
    meaning = documented_instruments()[name][2]
    found = re.search(r"buckets (\d+) (ms|s|min) … (\d+) (ms|s|min)", meaning)
    assert found, f"no bucket range documented for {name}"
    scale = {"ms": 0.001, "s": 1, "min": 60}
    return float(found[1]) * scale[found[2]], float(found[3]) * scale[found[4]]


async def test_every_instrument_is_documented_with_its_kind_and_unit(
    scheduler: BackgroundTaskScheduler, clock: ManualClock, otel: Sdk
) -> None:
    """Each instrument the runs feed has the kind and unit docs/observability.md gives it
    (durations and lag in seconds; counts in curly units)."""
    await _every_outcome(scheduler, clock)
    documented = documented_instruments()
    found = otel.metrics()
    assert (
        {
            "cml_jobs.run.duration",
            "cml_jobs.runs",
            "cml_jobs.runs.active",
            "cml_jobs.schedule.lag",
            "cml_jobs.retries",
            "cml_jobs.tasks",
        }
        <= set(found)
        <= set(documented)
    )
    for name, metric in found.items():
        kind, unit, _ = documented[name]
        assert metric.unit == unit, name
        assert isinstance(metric.data, _KINDS[kind]), name
        if isinstance(metric.data, Sum):
            assert metric.data.is_monotonic is (kind == "counter"), name


@pytest.mark.parametrize("name", ["cml_jobs.run.duration", "cml_jobs.schedule.lag"])
async def test_histograms_have_the_bucket_range_the_docs_state(
    scheduler: BackgroundTaskScheduler, clock: ManualClock, otel: Sdk, name: str
) -> None:
    """Run duration: buckets 5 ms ... 10 min; schedule lag: 1 ms ... 60 s (as documented),
    in increasing order, not the SDK's millisecond defaults."""
    await _every_outcome(scheduler, clock)
    [point, *_] = otel.metrics()[name].data.data_points
    bounds = list(point.explicit_bounds)
    assert (bounds[0], bounds[-1]) == documented_buckets(name)
    assert bounds == sorted(set(bounds))


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


def process_spans(otel: Sdk, task_id: str | None = None) -> list[Any]:
    """The finished run spans (CONSUMER), of one task if given, oldest first."""
    spans = [s for s in otel.spans.get_finished_spans() if s.kind is SpanKind.CONSUMER]
    return [s for s in spans if task_id is None or s.attributes["cml_jobs.task.id"] == task_id]


def documented(span: Any) -> dict[str, Any]:
    """A span's attributes, without the one docs/observability.md does not list."""
    return {k: v for k, v in span.attributes.items() if k != "messaging.operation.type"}


async def test_the_create_span_is_a_child_of_the_callers_span(
    scheduler: BackgroundTaskScheduler, otel: Sdk
) -> None:
    """Scheduling inside the app's span (e.g. an HTTP request) makes the PRODUCER span
    ``create {job}`` its child, with the documented attributes."""
    with trace.get_tracer("the-app").start_as_current_span("POST /workers") as request:
        await scheduler.bus.schedule_task(scripted("w1"))
    [create] = [s for s in otel.spans.get_finished_spans() if s.kind is SpanKind.PRODUCER]
    assert create.name == "create ScriptedJob"
    assert create.parent is not None
    assert create.parent.span_id == request.get_span_context().span_id
    assert create.context.trace_id == request.get_span_context().trace_id
    assert documented(create) == {
        "messaging.system": "cml_jobs",
        "messaging.destination.name": "ScriptedJob",
        "messaging.operation.name": "create",
        "cml_jobs.task.id": "w1",
    }


async def test_each_retry_attempt_has_a_span_of_its_own(
    scheduler: BackgroundTaskScheduler, clock: ManualClock, otel: Sdk
) -> None:
    """A run that fails twice then succeeds gives three ``process`` spans, attempts 1, 2,
    3, each linked to the create span; the failed ones are ERROR with error.type."""
    await scheduler.bus.schedule_task(
        scripted("flaky", "fail_twice", max_retries=3, retry_backoff=0.001)
    )
    clock.advance(seconds=60)
    await run_due(scheduler)
    [create] = [s for s in otel.spans.get_finished_spans() if s.kind is SpanKind.PRODUCER]
    spans = process_spans(otel, "flaky")
    assert [documented(s) for s in spans] == [
        {
            "messaging.system": "cml_jobs",
            "messaging.destination.name": "ScriptedJob",
            "messaging.operation.name": "process",
            "cml_jobs.task.id": "flaky",
            "cml_jobs.run.attempt": attempt,
            **({"error.type": "RuntimeError"} if attempt < 3 else {}),
        }
        for attempt in (1, 2, 3)
    ]
    assert [s.name for s in spans] == ["process ScriptedJob"] * 3
    assert [s.status.status_code for s in spans] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]
    for span in spans:
        [link] = span.links
        assert link.context.span_id == create.context.span_id


async def test_a_run_cancelled_during_configure_has_a_span_marked_cancelled(
    scheduler: BackgroundTaskScheduler, clock: ManualClock, otel: Sdk
) -> None:
    """A cancel that lands while the job is being configured stops the run under way: its
    span carries cml_jobs.run.cancelled = true, and the body never ran."""
    GatedJob.reset()
    await scheduler.bus.schedule_task(
        RecurrentTaskDescriptor(id="g", name="GatedJob", data={"where": "configure"}, interval=60)
    )
    clock.advance(seconds=60)
    running = asyncio.create_task(run_due(scheduler))
    async with asyncio.timeout(10):
        await GatedJob.waiting.wait()
        assert await scheduler.bus.cancel_task("g") == 1
        GatedJob.gate.set()
        await running
    [span] = process_spans(otel, "g")
    assert span.attributes["cml_jobs.run.cancelled"] is True
    assert GatedJob.ran == []


async def test_runs_active_counts_a_run_while_it_goes_on(
    scheduler: BackgroundTaskScheduler, clock: ManualClock, otel: Sdk
) -> None:
    """cml_jobs.runs.active is 1 higher for the job while its run goes on, and back after."""
    key = ("cml_jobs.runs.active", job("GatedJob"))
    GatedJob.reset()
    await scheduler.bus.schedule_task(RecurrentTaskDescriptor(id="g", name="GatedJob", interval=60))
    clock.advance(seconds=60)
    before = otel.points().get(key, 0)
    running = asyncio.create_task(run_due(scheduler))
    async with asyncio.timeout(10):
        await GatedJob.waiting.wait()
        assert otel.points()[key] == before + 1
        GatedJob.gate.set()
        await running
    assert otel.points()[key] == before


async def test_stopped_runs_are_counted_with_their_duration(
    scheduler: BackgroundTaskScheduler, clock: ManualClock, otel: Sdk
) -> None:
    """A run ending in StopRecurrence counts as 'stopped' (no error.type); its span is not
    an error."""
    before = otel.points()
    await scheduler.bus.schedule_task(scripted("ends", "stop"))
    clock.advance(seconds=60)
    await run_due(scheduler)
    changed = delta(before, otel.points())
    assert changed[("cml_jobs.runs", outcome("ScriptedJob", "stopped"))] == 1
    assert changed[("cml_jobs.run.duration", outcome("ScriptedJob", "stopped"))] == 1
    [span] = process_spans(otel, "ends")
    assert span.status.status_code is not StatusCode.ERROR
    assert "error.type" not in span.attributes


async def test_a_task_parked_for_a_job_no_worker_has_is_counted_under_its_job(
    otel: Sdk,
) -> None:
    """A worker that lacks the job parks the task after unknown_job_grace; cml_jobs.runs
    counts it as 'parked' under the job's name."""
    clock = ManualClock()
    store = InMemoryScheduleStore()
    before = otel.points()
    app = BackgroundTaskScheduler.configure(
        modules=JOBS, store=store, clock=clock, run_worker=False
    )
    old_worker = BackgroundTaskScheduler.configure(
        modules=["tests.fixtures.telemetry_jobs"],  # no ScriptedJob here
        store=store,
        clock=clock,
        run_worker=False,
        unknown_job_grace=timedelta(seconds=10),
    )
    async with app, old_worker:
        await app.bus.schedule_task(scripted("orphan"))
        clock.advance(seconds=60 + 11)  # within misfire_grace_time, past the job grace
        events = await run_due(old_worker)
        assert [e.kind for e in events] == [EventKind.PARKED]
        task = await app.bus.get_task("orphan")
        assert task.parked_reason is not None and "'ScriptedJob'" in task.parked_reason
    changed = delta(before, otel.points())
    assert changed[("cml_jobs.runs", outcome("ScriptedJob", "parked"))] == 1


@pytest.mark.redis
async def test_a_task_with_an_unreadable_descriptor_is_counted_as_parked_under_unknown(
    redis_client: aioredis.Redis, redis_url: str, key_prefix: str, otel: Sdk
) -> None:
    """A descriptor overwritten in Redis with garbage: the task is parked, and counted
    under messaging.destination.name = 'unknown'."""
    clock = ManualClock()
    app = BackgroundTaskScheduler.configure(
        redis_url=redis_url, modules=JOBS, key_prefix=key_prefix, clock=clock, run_worker=False
    )
    async with app:
        await app.bus.schedule_task(scripted("tampered"))
        written = await redis_client.hset(f"{key_prefix}task:tampered", "descriptor", "{not json")
        assert written == 0  # the field existed: the layout is the one the Redis store uses
        before = otel.points()
        clock.advance(seconds=60)
        events = await run_due(app)
        assert [(e.kind, e.task_id) for e in events] == [(EventKind.PARKED, "tampered")]
        assert (await app.bus.get_task("tampered")).parked_reason is not None
    changed = delta(before, otel.points())
    assert changed == {("cml_jobs.runs", outcome("unknown", "parked")): 1}


def lag_sum(otel: Sdk, job_name: str) -> tuple[float, int]:
    """Sum and count of the cml_jobs.schedule.lag histogram for one job."""
    metric = otel.metrics().get("cml_jobs.schedule.lag")
    for point in metric.data.data_points if metric else []:
        if dict(point.attributes or {}).get("messaging.destination.name") == job_name:
            return point.sum, point.count
    return 0.0, 0


async def test_schedule_lag_leaves_out_the_jitter(
    scheduler: BackgroundTaskScheduler, clock: ManualClock, otel: Sdk
) -> None:
    """An occurrence delayed by its jitter and run as soon as it is ready records a lag
    near 0, not the jitter: lag measures whether the system keeps up."""
    step = timedelta(milliseconds=250)
    await scheduler.bus.schedule_task(
        RecurrentTaskDescriptor(id="spread", name="TracedJob", interval=3600, jitter=60)
    )
    before = lag_sum(otel, "TracedJob")
    clock.advance(seconds=3600)
    started = []
    for _ in range(int(60 / step.total_seconds()) + 1):
        started = [e for e in await run_due(scheduler) if e.kind is EventKind.STARTED]
        if started:
            break
        clock.advance(step)
    [start] = started
    assert start.occurrence_at is not None
    assert start.at - start.occurrence_at > 10 * step  # the jitter did delay it
    total, count = lag_sum(otel, "TracedJob")
    assert count - before[1] == 1
    assert 0 <= total - before[0] < step.total_seconds()


@pytest.mark.redis
async def test_a_store_that_lost_its_data_is_counted_and_logged_once(
    redis_client: aioredis.Redis,
    redis_url: str,
    key_prefix: str,
    otel: Sdk,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every key of the store gone (Redis restarted without persistence): the in-app
    worker's dispatcher notices, logs an ERROR and adds 1 to cml_jobs.store.resets, once."""
    app = BackgroundTaskScheduler.configure(
        redis_url=redis_url,
        modules=JOBS,
        key_prefix=key_prefix,
        queue_name=f"{key_prefix}queue",
        run_worker=True,
        poll_interval=timedelta(milliseconds=100),
    )
    key = ("cml_jobs.store.resets", frozenset())
    every_200_ms = RecurrentTaskDescriptor(id="r", name="ScriptedJob", interval=0.2)
    async with app:
        events = app.events()
        await app.bus.schedule_task(every_200_ms)
        await _runs_of(events, "r", 1)  # the dispatcher has looked at the store
        before = otel.points().get(key, 0)
        with caplog.at_level(logging.ERROR, logger="cml_jobs.dispatch"):
            lost = [k async for k in redis_client.scan_iter(match=f"{key_prefix}*")]
            await redis_client.delete(*lost)
            async with asyncio.timeout(30):
                while True:
                    if otel.points().get(key, 0) != before:
                        break
                    await asyncio.sleep(0.05)
            # The app declares its task again. Six runs 0.2 s apart span a second, so the
            # dispatcher has looked at the store again since: it counts nothing new.
            since = app.events()
            await app.bus.schedule_task(every_200_ms)
            await _runs_of(since, "r", 6)
    assert otel.points()[key] == before + 1
    [record] = [r for r in caplog.records if "lost its data" in r.getMessage()]
    assert record.levelno == logging.ERROR and record.name == "cml_jobs.dispatch"


async def _runs_of(events: AsyncIterator[Any], task_id: str, count: int) -> None:
    """Wait (30 s at most) for ``count`` successful runs of ``task_id``."""
    runs = 0
    async with asyncio.timeout(30):
        async for event in events:
            runs += event.kind is EventKind.SUCCEEDED and event.task_id == task_id
            if runs == count:
                return


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
