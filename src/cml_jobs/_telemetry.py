"""OpenTelemetry: the only module that imports it. The API only; the app picks the SDK.

Instruments are created at import time against the global providers; OpenTelemetry binds
them late, so an SDK the app installs afterwards still receives everything. Metric
attributes never carry a task id (unbounded cardinality); spans do.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Link, ProxyTracerProvider, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from cml_jobs._outcome import Outcome

__all__ = [
    "mark_failed",
    "record_lag",
    "record_outcome",
    "record_retry",
    "run_span",
    "schedule_batch_span",
    "schedule_span",
    "set_task_counts",
]

_SCOPE = "cml_jobs"
_tracer = trace.get_tracer(_SCOPE)
_meter = metrics.get_meter(_SCOPE)
_propagator = TraceContextTextMapPropagator()

SYSTEM = "messaging.system"
DESTINATION = "messaging.destination.name"  # the job name
OUTCOME = "cml_jobs.outcome"
ERROR_TYPE = "error.type"
STATE = "cml_jobs.task.state"
SYSTEM_NAME = "cml_jobs"
TASK_STATES = ("scheduled", "running", "paused", "parked")

# Seconds, from 5 ms to 10 min: the SDK's default buckets are made for milliseconds.
_DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600]
_LAG_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]

_duration = _meter.create_histogram(
    "cml_jobs.run.duration",
    unit="s",
    description="How long runs take, by job and outcome.",
    explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
)
_lag = _meter.create_histogram(
    "cml_jobs.schedule.lag",
    unit="s",
    description="How late runs start: start time minus occurrence time.",
    explicit_bucket_boundaries_advisory=_LAG_BUCKETS,
)
_outcomes = _meter.create_counter(
    "cml_jobs.runs", unit="{occurrence}", description="Occurrences by job and outcome."
)
_active = _meter.create_up_down_counter(
    "cml_jobs.runs.active", unit="{run}", description="Runs executing now, in this process."
)
_retries = _meter.create_counter(
    "cml_jobs.retries", unit="{retry}", description="Failed attempts that are retried."
)

# The latest task counts this process learnt (from listing the store). The gauge's
# callback reads them: an exporter's collection never waits for Redis.
_task_counts: dict[str, int] = {}


def _observe_tasks(options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(n, {STATE: state}) for state, n in _task_counts.items()]


_meter.create_observable_gauge(
    "cml_jobs.tasks",
    callbacks=[_observe_tasks],
    unit="{task}",
    description="Tasks in the store by state, as last listed by this process.",
)


# Metric attributes are built once per job name, outcome and error type (bounded by the
# registry and the code), not on every run; OpenTelemetry only reads them.
@functools.lru_cache(maxsize=1024)
def _job(job_name: str) -> dict[str, str]:
    return {SYSTEM: SYSTEM_NAME, DESTINATION: job_name}


@functools.lru_cache(maxsize=1024)
def _outcome_attributes(job_name: str, outcome: Outcome, error_type: str | None) -> dict[str, str]:
    attributes = {**_job(job_name), OUTCOME: outcome.value}
    if error_type:
        attributes[ERROR_TYPE] = error_type
    return attributes


def _tracing() -> bool:
    """Whether an app installed a tracer provider (until then every span is a no-op, and
    a run skips building one). Asked on every run: a provider set later is used at once."""
    return not isinstance(trace.get_tracer_provider(), ProxyTracerProvider)


def record_outcome(
    job_name: str,
    outcome: Outcome,
    *,
    count: int = 1,
    duration: timedelta | None = None,
    error_type: str | None = None,
) -> None:
    """Count ``count`` occurrences that ended with ``outcome``; time the run if it ran."""
    attributes = _outcome_attributes(job_name, outcome, error_type)
    _outcomes.add(count, attributes)
    if duration is not None:
        _duration.record(duration.total_seconds(), attributes)


def record_lag(job_name: str, lag: timedelta) -> None:
    """Record how late a run started (or was found, when it is then missed)."""
    _lag.record(max(lag.total_seconds(), 0.0), _job(job_name))


_store_resets = _meter.create_counter(
    "cml_jobs.store.resets",
    unit="{reset}",
    description="Times a worker found the store had lost its data (Redis without persistence).",
)


def record_store_reset() -> None:
    """Count one loss of the store's data seen by this process."""
    _store_resets.add(1)


def record_retry(job_name: str, error_type: str | None = None) -> None:
    """Count one retry of a failed run."""
    attributes = dict(_job(job_name))
    if error_type:
        attributes[ERROR_TYPE] = error_type
    _retries.add(1, attributes)


def set_task_counts(counts: Mapping[str, int]) -> None:
    """Replace the counts the ``cml_jobs.tasks`` gauge reports."""
    _task_counts.clear()
    _task_counts.update(counts)


@contextmanager
def schedule_span(job_name: str, task_id: str) -> Iterator[str | None]:
    """A producer span around scheduling a task; yields its W3C ``traceparent`` (or None
    when no tracing SDK is installed), which is stored with the task."""
    attributes: dict[str, str] = {
        **_job(job_name),
        "messaging.operation.name": "create",
        "messaging.operation.type": "create",
        "cml_jobs.task.id": task_id,
    }
    with _tracer.start_as_current_span(
        f"create {job_name}", kind=SpanKind.PRODUCER, attributes=attributes
    ):
        carrier: dict[str, str] = {}
        _propagator.inject(carrier)
        yield carrier.get("traceparent")


@contextmanager
def schedule_batch_span(count: int) -> Iterator[str | None]:
    """A producer span around scheduling ``count`` tasks in one store call; yields its
    ``traceparent`` (or None), which is stored with each of them."""
    attributes: dict[str, str | int] = {
        SYSTEM: SYSTEM_NAME,
        "messaging.operation.name": "create",
        "messaging.operation.type": "create",
        "messaging.batch.message_count": count,
    }
    with _tracer.start_as_current_span(
        "create tasks", kind=SpanKind.PRODUCER, attributes=attributes
    ):
        carrier: dict[str, str] = {}
        _propagator.inject(carrier)
        yield carrier.get("traceparent")


def _links(trace_context: str | None) -> list[Link]:
    if not trace_context:
        return []
    context = _propagator.extract({"traceparent": trace_context})
    parent = trace.get_current_span(context).get_span_context()
    return [Link(parent)] if parent.is_valid else []


@contextmanager
def run_span(
    job_name: str, task_id: str, attempt: int, trace_context: str | None = None
) -> Iterator[Span]:
    """A consumer span around one run: the root of a new trace, linked to the span that
    scheduled the task (``trace_context``), so a recurrence never grows one endless trace.
    Active runs are counted meanwhile."""
    job = _job(job_name)
    _active.add(1, job)
    try:
        if not _tracing():
            yield trace.INVALID_SPAN
            return
        with _run_span(job_name, task_id, attempt, trace_context) as span:
            yield span
    finally:
        _active.add(-1, job)


@contextmanager
def _run_span(
    job_name: str, task_id: str, attempt: int, trace_context: str | None
) -> Iterator[Span]:
    attributes: dict[str, str | int] = {
        **_job(job_name),
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "cml_jobs.task.id": task_id,
        "cml_jobs.run.attempt": attempt,
    }
    with _tracer.start_as_current_span(
        f"process {job_name}",
        kind=SpanKind.CONSUMER,
        attributes=attributes,
        links=_links(trace_context),
        context=trace.set_span_in_context(trace.INVALID_SPAN),
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


def mark_failed(span: Span, error: BaseException) -> None:
    """Set the span's error status and record the exception on it."""
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, type(error).__name__))
    span.set_attribute(ERROR_TYPE, type(error).__qualname__)
