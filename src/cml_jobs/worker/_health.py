"""Health: is Redis reachable (or refusing the credentials), is its data readable, is a
worker polling, is any task parked, or overdue beyond its grace.

``cml-jobs check`` prints the report and exits non-zero when it is unhealthy, so that it
can serve as a container's liveness or readiness probe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from redis.exceptions import AuthenticationError, NoPermissionError, RedisError

from cml_jobs._descriptors import parse_descriptor
from cml_jobs.exceptions import InvalidDescriptorError, StoreError
from cml_jobs.stores import TaskState
from cml_jobs.stores.redis import RedisScheduleStore, damaged_keys, redis_client
from cml_jobs.worker._fleet_health import FleetFindings, fleet_findings

__all__ = ["HealthReport", "Overdue", "check_health", "overdue_tasks"]

#: How late a task without a ``misfire_grace_time`` may be before it counts as overdue.
DEFAULT_GRACE = timedelta(seconds=60)


@dataclass(frozen=True)
class Overdue:
    """A task whose next occurrence is past due by more than its grace."""

    task_id: str
    due_at: datetime
    late_by: timedelta
    grace: timedelta


@dataclass
class HealthReport:
    """What ``check_health`` found.

    Attributes:
        redis_error: why Redis could not be reached, or None.
        worker: arq's health-check line of the latest worker that polled the queue
            (workers refresh it every 15 s; it expires after 16 s), or None.
        overdue: tasks past due by more than their grace.
        require_worker: a missing worker makes the report unhealthy.
        fleet: the registered workers and parked tasks (see ``FleetFindings``).
        redis_refused: Redis answered, but refused the credentials (``redis_error`` says how).
        data_error: Redis answered, but reading the schedule failed (how), or None.
        unreadable: one line per key under the prefix that cannot be read (``damaged_keys``).
        liveness: judge only what restarting a worker can fix: parked tasks and unreadable
            keys are shown, but leave the report healthy.
    """

    redis_error: str | None = None
    worker: str | None = None
    overdue: list[Overdue] = field(default_factory=list)
    require_worker: bool = True
    fleet: FleetFindings = field(default_factory=FleetFindings)
    redis_refused: bool = False
    data_error: str | None = None
    unreadable: list[str] = field(default_factory=list)
    liveness: bool = False

    @property
    def healthy(self) -> bool:
        """Redis answers, its data is readable, a worker is alive (if required), nothing is
        overdue, enough workers are registered and no task is parked (see ``liveness``)."""
        worker_ok = self.worker is not None or not self.require_worker
        data_ok = (self.data_error is None and not self.unreadable) or self.liveness
        fleet_ok = self.fleet.healthy or (self.liveness and self._enough_workers)
        return self.redis_error is None and data_ok and worker_ok and not self.overdue and fleet_ok

    @property
    def _enough_workers(self) -> bool:
        return len(self.fleet.workers) >= self.fleet.min_workers

    def lines(self) -> list[str]:
        """The report, one finding per line."""
        if self.redis_error is not None:
            said = "REFUSED the credentials" if self.redis_refused else "UNREACHABLE"
            return [f"redis: {said} ({self.redis_error})"]
        worker = f"alive ({self.worker})" if self.worker else "NONE polling the queue"
        lines = ["redis: ok (reachable)", *self._data_lines(), f"workers: {worker}"]
        lines.append(f"overdue tasks: {len(self.overdue)}")
        for late in self.overdue:
            seconds, grace = late.late_by.total_seconds(), late.grace.total_seconds()
            lines.append(
                f"  {late.task_id}: due {late.due_at.isoformat()}, "
                f"{seconds:.0f} s late (grace {grace:.0f} s)"
            )
        lines += self.fleet.lines()
        lines.append("healthy" if self.healthy else "UNHEALTHY")
        return lines

    def _data_lines(self) -> list[str]:
        if self.data_error is not None:
            return [f"data: UNREADABLE ({self.data_error})"]
        if not self.unreadable:
            return ["data: readable"]
        return [f"data: {len(self.unreadable)} key(s) UNREADABLE"] + [
            f"  {line}" for line in self.unreadable
        ]


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
    min_workers: int = 0,
    store_url: str | None = None,
    liveness: bool = False,
) -> HealthReport:
    """Look at Redis, the workers and the schedule once (``min_workers``: how many workers
    must be registered; the tasks are read from PostgreSQL when ``store_url`` names a
    database)."""
    seconds = timeout.total_seconds()
    client = redis_client(
        redis_url, patient=False, socket_connect_timeout=seconds, socket_timeout=seconds
    )
    report = HealthReport(require_worker=require_worker, liveness=liveness)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        report.redis_error = str(exc) or type(exc).__name__
        report.redis_refused = isinstance(exc, AuthenticationError | NoPermissionError)
        await client.aclose()
        return report
    try:
        await _look(report, client, prefix, queue, store_url, now, default_grace, min_workers)
    except (RedisError, StoreError, OSError) as exc:  # Redis answered: reading failed
        report.data_error = str(exc) or type(exc).__name__
    finally:
        await client.aclose()
    return report


async def _look(
    report: HealthReport,
    client: Any,
    prefix: str,
    queue: str,
    store_url: str | None,
    now: datetime,
    default_grace: timedelta,
    min_workers: int,
) -> None:
    """Fill ``report`` from a Redis that answers: its keys, the workers, the schedule."""
    report.unreadable = await damaged_keys(client, prefix)
    seen = await client.get(f"{queue}:health-check")
    report.worker = seen.decode() if isinstance(seen, bytes) else seen
    states = await _tasks(client, prefix, store_url)
    report.overdue = overdue_tasks(states, now, default_grace)
    store = RedisScheduleStore(client, prefix=prefix)
    report.fleet = await fleet_findings(store, states, now, min_workers)


async def _tasks(client: Any, prefix: str, store_url: str | None) -> list[TaskState]:
    if store_url is None or not store_url.startswith(("postgresql://", "postgres://")):
        return await RedisScheduleStore(client, prefix=prefix).list()
    from cml_jobs.stores.postgres import open_postgres_store

    async with open_postgres_store(store_url) as store:
        return await store.list()
