"""Health: is Redis reachable, is its data readable, is a worker polling, is any task
parked, or overdue beyond its grace.

``cml-jobs check`` prints the report and exits non-zero when it is unhealthy, so that it
can serve as a container's liveness or readiness probe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import redis.asyncio
from redis.exceptions import AuthenticationError, NoPermissionError, RedisError

from cml_jobs._descriptors import parse_descriptor
from cml_jobs.exceptions import InvalidDescriptorError, StoreError
from cml_jobs.stores import TaskState
from cml_jobs.stores.redis import RedisScheduleStore, damaged_keys, redis_client

__all__ = ["Finding", "HealthReport", "Overdue", "check_health", "findings", "overdue_tasks"]

#: How late a task without a ``misfire_grace_time`` may be before it counts as overdue.
DEFAULT_GRACE = timedelta(seconds=60)


@dataclass(frozen=True)
class Overdue:
    """A task whose next occurrence is past due by more than its grace."""

    task_id: str
    due_at: datetime
    late_by: timedelta
    grace: timedelta


@dataclass(frozen=True)
class Finding:
    """One line of the health report: a topic, what was found, whether that is healthy,
    and the details (one indented line each: the tasks it names).

    ``restart_helps`` is False for findings about the data (parked tasks, unreadable keys),
    which no restart of a worker can fix: a liveness probe reports them without failing.
    """

    topic: str
    summary: str
    healthy: bool = True
    details: tuple[str, ...] = ()
    restart_helps: bool = True


@dataclass
class HealthReport:
    """What ``check_health`` found, one ``Finding`` per topic, in the order looked at."""

    findings: list[Finding] = field(default_factory=list)
    liveness: bool = False  # only findings that a restart can fix count

    @property
    def healthy(self) -> bool:
        """Every finding is healthy (with ``liveness``: every one a restart can fix)."""
        counted = [f for f in self.findings if f.restart_helps or not self.liveness]
        return all(finding.healthy for finding in counted)

    def lines(self) -> list[str]:
        """The report, one finding per line, each followed by its details."""
        lines = []
        for finding in self.findings:
            lines.append(f"{finding.topic}: {finding.summary}")
            lines += [f"  {detail}" for detail in finding.details]
        lines.append("healthy" if self.healthy else "UNHEALTHY")
        return lines


def overdue_tasks(
    states: Sequence[TaskState], now: datetime, default_grace: timedelta = DEFAULT_GRACE
) -> list[Overdue]:
    """Live tasks whose next occurrence is later than their ``misfire_grace_time`` (or
    ``default_grace`` when they have none): no dispatcher is claiming them."""
    found = []
    for state in states:
        if state.paused or state.parked_reason is not None or state.due_at is None:
            continue
        if not state.descriptor_json:  # no task to claim: reported as unreadable data
            continue
        try:
            grace = parse_descriptor(state.descriptor_json).misfire_grace_time
        except InvalidDescriptorError:
            grace = None
        grace = default_grace if grace is None else grace
        late_by = now - state.due_at
        if late_by > grace:
            found.append(Overdue(state.task_id, state.due_at, late_by, grace))
    return found


async def check_health(
    redis_url: str,
    *,
    prefix: str,
    queue: str,
    now: datetime,
    default_grace: timedelta = DEFAULT_GRACE,
    require_worker: bool = True,
    timeout: timedelta = timedelta(seconds=3),
    liveness: bool = False,
) -> HealthReport:
    """Look at Redis, the workers and the schedule once (see ``HealthReport.liveness``)."""
    seconds = timeout.total_seconds()
    client = redis_client(
        redis_url, patient=False, socket_connect_timeout=seconds, socket_timeout=seconds
    )
    report = HealthReport(liveness=liveness)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        refused = isinstance(exc, AuthenticationError | NoPermissionError)
        verdict = "REFUSED the credentials" if refused else "UNREACHABLE"
        report.findings.append(Finding("redis", f"{verdict} ({_said(exc)})", healthy=False))
        await client.aclose()
        return report
    report.findings.append(Finding("redis", "ok (reachable)"))
    try:
        report.findings += await findings(
            client, prefix, queue, now, default_grace, require_worker=require_worker
        )
    except (RedisError, StoreError, OSError) as exc:
        report.findings.append(Finding("data", f"UNREADABLE ({_said(exc)})", healthy=False))
    finally:
        await client.aclose()
    return report


async def findings(
    client: redis.asyncio.Redis,
    prefix: str,
    queue: str,
    now: datetime,
    default_grace: timedelta,
    *,
    require_worker: bool,
) -> list[Finding]:
    """What a reachable Redis holds: unreadable data, workers, parked and overdue tasks.

    Raises:
        RedisError, StoreError: Redis refused a read.
    """
    damaged = await damaged_keys(client, prefix)
    summary = f"{len(damaged)} key(s) UNREADABLE" if damaged else "readable"
    data = Finding("data", summary, not damaged, tuple(damaged), restart_helps=False)
    seen = await client.get(f"{queue}:health-check")
    if seen is None:
        workers = Finding("workers", "NONE polling the queue", healthy=not require_worker)
    else:  # arq keeps one health key per queue: the latest worker's line
        line = seen.decode(errors="replace") if isinstance(seen, bytes) else seen
        workers = Finding("workers", f"alive (at least 1; latest: {line})")
    states = await RedisScheduleStore(client, prefix=prefix).list()
    parked = [state for state in states if state.parked_reason is not None]
    late = overdue_tasks(states, now, default_grace)
    return [
        data,
        workers,
        Finding(
            "parked tasks",
            f"{len(parked)}",
            healthy=not parked,
            details=tuple(f"{s.task_id}: {str(s.parked_reason)[:200]}" for s in parked),
            restart_helps=False,
        ),
        Finding("overdue tasks", f"{len(late)}", healthy=not late, details=_overdue(late)),
    ]


def _overdue(late: Sequence[Overdue]) -> tuple[str, ...]:
    return tuple(
        f"{o.task_id}: due {o.due_at.isoformat()}, {o.late_by.total_seconds():.0f} s late "
        f"(grace {o.grace.total_seconds():.0f} s)"
        for o in late
    )


def _said(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
