"""OpenTelemetry: the only module that imports it. The API only; the app picks the SDK.

Instruments are created at import time against the global providers; OpenTelemetry binds
them late, so an SDK the app installs afterwards still receives everything.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from opentelemetry import metrics, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from cml_jobs.stores._base import Outcome

__all__ = ["record_lag", "record_outcome", "record_retry", "run_span"]

_SCOPE = "cml_jobs"
_tracer = trace.get_tracer(_SCOPE)
_meter = metrics.get_meter(_SCOPE)

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
    "cml_jobs.runs.active", unit="{run}", description="Runs executing now."
)
_retries = _meter.create_counter("cml_jobs.retries", unit="{retry}", description="Retried runs.")

JOB = "cml_jobs.job.name"
OUTCOME = "cml_jobs.outcome"


def record_outcome(
    job_name: str,
    outcome: Outcome,
    *,
    count: int = 1,
    duration: timedelta | None = None,
    error_type: str | None = None,
) -> None:
    """Count ``count`` occurrences that ended with ``outcome``; time the run if it ran."""
    attributes = {"messaging.system": "arq", JOB: job_name, OUTCOME: outcome.value}
    if error_type:
        attributes["error.type"] = error_type
    _outcomes.add(count, attributes)
    if duration is not None:
        _duration.record(duration.total_seconds(), attributes)


def record_lag(job_name: str, lag: timedelta) -> None:
    """Record how late a run started."""
    _lag.record(max(lag.total_seconds(), 0.0), {JOB: job_name})


def record_retry(job_name: str) -> None:
    """Count one retry of a failed run."""
    _retries.add(1, {JOB: job_name})


@contextmanager
def run_span(job_name: str, task_id: str, attempt: int) -> Iterator[Span]:
    """A consumer span around one run, the root of its own trace; active runs counted."""
    attributes: dict[str, str | int] = {
        "messaging.system": "arq",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": job_name,
        "cml_jobs.task.id": task_id,
        "cml_jobs.run.attempt": attempt,
    }
    _active.add(1, {JOB: job_name})
    try:
        with _tracer.start_as_current_span(
            f"process {job_name}",
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            context=trace.set_span_in_context(trace.INVALID_SPAN),
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            yield span
    finally:
        _active.add(-1, {JOB: job_name})


def mark_failed(span: Span, error: BaseException) -> None:
    """Set the span's error status and record the exception on it."""
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, type(error).__name__))
    span.set_attribute("error.type", type(error).__qualname__)
