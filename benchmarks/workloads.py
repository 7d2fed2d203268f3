"""Workloads A-F. Each function runs one repeat for one system and returns its figures.

The caller flushes the benchmark db before each repeat. Times are epoch ms from the
machine's clock, shared by the harness and the workers (same host).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.harness import Bench, System, Workers, now_ms

GRACE_MS = 2000  # C: a run counts as executed if it started this soon after the window


@dataclass(frozen=True)
class Sizes:
    a_tasks: int
    b_tasks: int
    b_lead_ms: int
    c_sizes: tuple[int, ...]
    c_interval_ms: int
    c_duration_ms: int
    c_grace_ms: int
    d_tasks: int
    d_idle_s: float
    e_single: int
    e_bulk: int
    e_backlog: int
    f_workers: tuple[int, ...]
    c3_sizes: tuple[int, ...]  # C3: the same schedule at these sizes, every c3_interval_ms
    c3_interval_ms: int
    c3_duration_ms: int
    timeout_s: float
    start_lead_ms: int  # B, C: extra lead for workers started after their work is stored


FULL = Sizes(
    a_tasks=10_000,
    b_tasks=2_000,
    b_lead_ms=2_000,
    c_sizes=(1_000, 10_000),
    c_interval_ms=10_000,
    c_duration_ms=60_000,
    c_grace_ms=GRACE_MS,
    d_tasks=10_000,
    d_idle_s=10.0,
    e_single=1_000,
    e_bulk=10_000,
    e_backlog=100_000,
    f_workers=(1, 2, 4),
    c3_sizes=(1_000, 100_000),
    c3_interval_ms=60_000,
    c3_duration_ms=60_000,
    timeout_s=300.0,
    start_lead_ms=3_000,
)

QUICK = Sizes(
    a_tasks=300,
    b_tasks=200,
    b_lead_ms=1_000,
    c_sizes=(50, 300),
    c_interval_ms=1_000,
    c_duration_ms=2_000,
    c_grace_ms=500,
    d_tasks=300,
    d_idle_s=1.0,
    e_single=100,
    e_bulk=500,
    e_backlog=500,
    f_workers=(1, 2),
    c3_sizes=(50, 500),
    c3_interval_ms=2_000,
    c3_duration_ms=2_000,
    timeout_s=5.0,  # keeps --quick within ~30 s even if a system stalls
    start_lead_ms=1_500,
)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of values, or None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return float(ordered[int(rank) - 1])


def lateness(records: Sequence[tuple[str, int, int]], prefix: str = "lateness") -> dict[str, Any]:
    late = [(start - occurrence) / 1000 for _, occurrence, start in records]
    return {
        f"{prefix}_p50_s": percentile(late, 50),
        f"{prefix}_p99_s": percentile(late, 99),
        f"{prefix}_max_s": max(late) if late else None,
    }


def duplicates(records: Sequence[tuple[str, int, int]]) -> int:
    counts = Counter((task, occurrence) for task, occurrence, _ in records)
    return sum(n - 1 for n in counts.values() if n > 1)


class StatsReset(Exception):
    """Someone ran CONFIG RESETSTAT (or restarted Redis) during a measurement."""


def delta(after: Counter[str], before: Counter[str]) -> Counter[str]:
    out = Counter(after)
    out.subtract(before)
    if any(v < 0 for v in out.values()):
        raise StatsReset("INFO commandstats went backwards: another client reset the stats")
    return +out


def per(counts: Counter[str] | None, by: float) -> float | None:
    return None if counts is None else sum(counts.values()) / by


def safe_delta(after: Counter[str], before: Counter[str]) -> Counter[str] | None:
    try:
        return delta(after, before)
    except StatsReset:
        return None


async def sleep_until(ms: int) -> None:
    wait = (ms - now_ms()) / 1000
    if wait > 0:
        await asyncio.sleep(wait)


async def started(system: System, count: int = 1, ready: bool = True) -> Workers:
    workers = system.workers()
    workers.start(count)
    if ready:
        await workers.wait_ready(system.bench)
    return workers


async def started_early(system: System, count: int = 1) -> Workers | None:
    """Workers started before the work is stored, for the systems whose workers see work
    stored later; None for the others (``started_late`` starts them)."""
    return None if system.schedules_before_start else await started(system, count)


async def started_late(system: System, workers: Workers | None, count: int = 1) -> Workers:
    return workers if workers is not None else await started(system, count)


def lead_ms(system: System, sizes: Sizes, base_ms: int, n: int, per_task_ms: float) -> int:
    """How far ahead to place the first due time: storing n tasks, plus the workers'
    start-up when they start after the work is stored."""
    late = sizes.start_lead_ms if system.schedules_before_start else 0
    return base_ms + int(n * per_task_ms * 1.5) + late


# --- A (and D's commands per occurrence): drain N due one-time tasks -----------------


async def drain(system: System, sizes: Sizes, per_task_ms: float) -> dict[str, Any]:
    bench, n = system.bench, sizes.a_tasks
    ids = [f"a{i}" for i in range(n)]
    await system.open()
    try:
        s0 = await bench.commandstats()
        await system.schedule_once(ids, now_ms())
        s1 = await bench.commandstats()
        sent0 = bench.harness_sent()
        workers = await started(system, ready=False)
        spawned_ms = now_ms()
        try:
            done = await bench.wait_recorded(system.record_key, n, sizes.timeout_s)
            s2 = await bench.commandstats()
            harness = delta(bench.harness_sent(), sent0)
            flushes = await bench.admin.llen(system.record_key)
            records = await bench.records(system.record_key)
        finally:
            workers.stop()
    finally:
        await system.close()
    enqueue = safe_delta(s1, s0)
    worker = safe_delta(s2, s1)
    if worker is not None:
        worker.subtract(harness)
        worker.subtract({"rpush": flushes, "incrby": flushes})
        worker = +worker
    both = None if enqueue is None or worker is None else enqueue + worker
    starts = sorted(start for _, _, start in records)
    ran = len({task for task, _, _ in records})
    span_ms = (starts[-1] - starts[0]) if len(starts) > 1 else 0
    return {
        "drain_rate_per_s": n / (span_ms / 1000) if done and span_ms else None,
        "drain_rate_from_spawn_per_s": n / ((starts[-1] - spawned_ms) / 1000)
        if done and starts
        else None,
        "drained": ran,
        "missing": n - ran,
        "duplicates": duplicates(records),
        "cmds_enqueue_per_occ": per(enqueue, n),
        "cmds_worker_per_occ": per(worker, n),
        "cmds_per_occ": per(both, n),
        "cmds_enqueue_top": dict(enqueue.most_common(6)) if enqueue else None,
        "cmds_worker_top": dict(worker.most_common(8)) if worker else None,
        **workers.rss_figures(),
    }


# --- B: N one-time tasks due at one instant -----------------------------------------


async def burst(system: System, sizes: Sizes, per_task_ms: float) -> dict[str, Any]:
    bench, n = system.bench, sizes.b_tasks
    ids = [f"b{i}" for i in range(n)]
    await system.open()
    workers = await started_early(system)
    try:
        due = now_ms() + lead_ms(system, sizes, sizes.b_lead_ms, n, per_task_ms)
        await system.schedule_once(ids, due)
        workers = await started_late(system, workers)
        ahead_ms = due - now_ms()
        # misfire_grace_time is 60 s: nothing can still run 90 s after the due time
        timeout = (due - now_ms()) / 1000 + min(sizes.timeout_s, 90.0)
        await bench.wait_recorded(system.record_key, n, timeout)
        await asyncio.sleep(0.5)  # late duplicates, if any, and the last flush
        records = await bench.records(system.record_key)
    finally:
        if workers is not None:
            workers.stop()
        await system.close()
    ran = {task for task, _, _ in records}
    return {
        **lateness(records),
        "missing": len(set(ids) - ran),
        "duplicates": duplicates(records),
        "scheduled_ahead_s": ahead_ms / 1000,
        **workers.rss_figures(),
    }


# --- C and F: recurrent tasks -------------------------------------------------------


class WindowCounts:
    """Redis commands, by command, between ``open()`` and ``close()``: ``INFO
    commandstats`` deltas minus the harness's own commands and the recorder's flushes
    (one RPUSH + INCRBY each, counted by the list's length). Server-wide: meaningful only
    when one system runs at a time (not --quick)."""

    def __init__(self, bench: Bench, record_key: str) -> None:
        self.bench, self.record_key = bench, record_key
        self.counts: Counter[str] | None = None

    async def open(self) -> None:
        self.flushes = await self.bench.admin.llen(self.record_key)
        self.stats = await self.bench.commandstats()
        self.sent = self.bench.harness_sent()

    async def close(self) -> None:
        stats = await self.bench.commandstats()
        harness = delta(self.bench.harness_sent(), self.sent)
        flushes = await self.bench.admin.llen(self.record_key) - self.flushes
        counts = safe_delta(stats, self.stats)
        if counts is not None:
            counts.subtract(harness)
            counts.subtract({"rpush": flushes, "incrby": flushes})
            counts = +counts
        self.counts = counts

    def per_run(self, runs: int) -> dict[str, Any]:
        """Commands per run started in the window, in all and by command (every command
        the window saw, largest first)."""
        if self.counts is None or not runs:
            return {"cmds_per_run": None, "cmds_per_run_by_command": None}
        return {
            "cmds_per_run": per(self.counts, runs),
            "cmds_per_run_by_command": {c: k / runs for c, k in self.counts.most_common()},
        }


async def recurrent(
    system: System, sizes: Sizes, per_task_ms: float, n: int, worker_count: int = 1
) -> dict[str, Any]:
    bench, interval, duration = system.bench, sizes.c_interval_ms, sizes.c_duration_ms
    ids = [f"c{i}" for i in range(n)]
    await system.open()
    workers = await started_early(system, worker_count)
    try:
        t0 = now_ms() + lead_ms(system, sizes, 1000 + n // 20, n, per_task_ms)
        firsts = [t0 + i * interval // n for i in range(n)]  # phases spread over one interval
        used0, clock0 = await bench.used_memory(), time.perf_counter()
        await system.schedule_every(ids, interval, firsts)
        scheduled_s = time.perf_counter() - clock0
        used1 = await bench.used_memory()
        workers = await started_late(system, workers, worker_count)
        ahead_ms = t0 - now_ms()
        await sleep_until(t0)
        counts = WindowCounts(bench, system.record_key)
        await counts.open()
        cpu0, wall0 = workers.cpu(), time.monotonic()
        end = t0 + duration
        await sleep_until(end)
        cpu1, wall1 = workers.cpu(), time.monotonic()
        await counts.close()
        await sleep_until(end + sizes.c_grace_ms + 300)  # + one flush
        workers.check_alive()
        records = await bench.records(system.record_key)
    finally:
        if workers is not None:
            workers.stop()
        await system.close()
    expected = sum(len(range(first, end, interval)) for first in firsts)
    window = [r for r in records if t0 <= r[1] < end]
    on_time = [r for r in window if r[2] <= end + sizes.c_grace_ms]
    executed = len({(task, occurrence) for task, occurrence, _ in on_time})
    cpu = [100 * (b - a) / (wall1 - wall0) for a, b in zip(cpu0, cpu1, strict=True)]
    started_in_window = sum(1 for _, _, start in records if t0 <= start < end)
    return {
        **lateness(on_time),
        "executed": executed,
        "expected": expected,
        "executed_ratio": executed / expected if expected else None,
        "duplicates": duplicates(window),
        "runs_per_s": executed / (duration / 1000),
        "worker_cpu_pct": sum(cpu),
        "worker_cpu_pct_max": max(cpu),
        "scheduled_ahead_s": ahead_ms / 1000,
        "schedule_rate_per_s": n / scheduled_s if scheduled_s else None,
        "redis_bytes_per_task": (used1 - used0) / n,
        **counts.per_run(started_in_window),
        **workers.rss_figures(),
    }


# --- D: memory per stored task, idle commands/s -------------------------------------


async def idle(system: System, sizes: Sizes, per_task_ms: float) -> dict[str, Any]:
    bench, n = system.bench, sizes.d_tasks
    ids = [f"d{i}" for i in range(n)]
    await system.open()
    workers = await started(system)
    try:
        await asyncio.sleep(0.3)
        used0 = await bench.used_memory()
        keys_bytes0, _, stream0 = await bench.memory_of_db()
        first = now_ms() + 120_000
        await system.schedule_every(ids, 10_000, [first + i * 10_000 // n for i in range(n)])
        await asyncio.sleep(0.5)
        used1 = await bench.used_memory()
        keys_bytes1, keys, stream1 = await bench.memory_of_db()
        s0 = await bench.commandstats()
        sent0 = bench.harness_sent()
        await asyncio.sleep(sizes.d_idle_s)
        s1 = await bench.commandstats()
        harness = delta(bench.harness_sent(), sent0)
        workers.check_alive()
    finally:
        workers.stop()
        await system.close()
    idle_cmds = safe_delta(s1, s0)
    if idle_cmds is not None:
        idle_cmds.subtract(harness)
        idle_cmds = +idle_cmds
    return {
        "bytes_per_task_keys": (keys_bytes1 - keys_bytes0) / n,
        "bytes_per_task_without_stream": (keys_bytes1 - stream1 - keys_bytes0 + stream0) / n,
        "bytes_per_task_used_memory": (used1 - used0) / n,
        "keys_per_task": keys / n,
        "idle_cmds_per_s": per(idle_cmds, sizes.d_idle_s),
        "idle_cmds_top": dict(idle_cmds.most_common(6)) if idle_cmds else None,
        **workers.rss_figures(),
    }


# --- E: scheduling rate, and recovery from an outage --------------------------------


async def schedule_rate(system: System, sizes: Sizes, per_task_ms: float) -> dict[str, Any]:
    await system.open()
    try:
        due = now_ms() + 3_600_000
        ids = [f"e{i}" for i in range(sizes.e_single)]
        t = time.perf_counter()
        await system.schedule_once(ids, due, bulk=False)
        single = len(ids) / (time.perf_counter() - t)
        ids = [f"eb{i}" for i in range(sizes.e_bulk)]
        t = time.perf_counter()
        await system.schedule_once(ids, due, bulk=True)
        bulk = len(ids) / (time.perf_counter() - t)
        api = None
        if system.has_bulk_api:  # cml-jobs: bus.schedule_tasks, one call for all
            ids = [f"ea{i}" for i in range(sizes.e_backlog)]
            t = time.perf_counter()
            await system.schedule_once(ids, due, bulk="api")
            api = len(ids) / (time.perf_counter() - t)
    finally:
        await system.close()
    return {
        "schedule_single_per_s": single,
        "schedule_bulk_per_s": bulk,
        "schedule_api_per_s": api,
    }


async def recovery(system: System, sizes: Sizes, per_task_ms: float) -> dict[str, Any]:
    bench, n = system.bench, sizes.e_backlog
    ids = [f"r{i}" for i in range(n)]
    await system.open()
    try:
        t = time.perf_counter()
        await system.schedule_backlog(ids, outage_ms=600_000, interval_ms=60_000)
        scheduled_s = time.perf_counter() - t
        workers = await started(system, ready=False)
        spawned = now_ms()
        try:
            deadline = time.monotonic() + sizes.timeout_s
            caught_up: dict[str, int] = {}
            while time.monotonic() < deadline:
                if await bench.recorded(system.record_key) >= n:
                    records = await bench.records(system.record_key)
                    caught_up = {}
                    for task, occurrence, start in records:
                        if occurrence <= spawned:
                            caught_up[task] = min(start, caught_up.get(task, start))
                    if len(caught_up) >= n:
                        break
                await asyncio.sleep(0.25)
            records = await bench.records(system.record_key)
        finally:
            workers.stop()
    finally:
        await system.close()
    catch_up = [r for r in records if r[1] <= spawned]
    done = len(caught_up) >= n
    return {
        "recovery_s": (max(caught_up.values()) - spawned) / 1000 if done else None,
        "recovered": len({task for task, _, _ in catch_up}),
        "backlog": n,
        "catch_up_duplicates": duplicates(catch_up),
        "catch_up_runs_per_task": len(catch_up) / n,
        "backlog_scheduled_in_s": scheduled_s,
        **workers.rss_figures(),
    }
