"""The harness: the benchmark Redis database, worker processes, and the three systems."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
ARQ = Path(sys.executable).with_name("arq")
CLK_TCK = os.sysconf("SC_CLK_TCK")
CHUNK = 200  # concurrent calls per asyncio.gather chunk when scheduling in bulk


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, timezone.utc)


class CountingRedis(aioredis.Redis):
    """The harness's own client: counts the commands it sends, so that they can be
    subtracted from ``INFO commandstats`` deltas."""

    sent: Counter[str]

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        self.sent[str(args[0]).lower()] += 1
        return await super().execute_command(*args, **options)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (psutil is not needed)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_kib(pid: int) -> int | None:
    """A live process's peak resident set size (VmHWM, KiB), from /proc."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


@dataclass
class Bench:
    """The benchmark database: one Redis db, flushed before every measured run."""

    url: str
    admin: CountingRedis = field(init=False)

    def __post_init__(self) -> None:
        self.admin = CountingRedis.from_url(self.url, decode_responses=True)
        self.admin.sent = Counter()

    async def reset(self) -> None:
        await self.admin.flushdb()
        self.admin.sent.clear()

    async def commandstats(self) -> Counter[str]:
        """Calls per command, server-wide (``info`` excluded: the harness's own probe)."""
        stats = await self.admin.info("commandstats")
        calls = Counter(
            {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
        )
        calls.pop("info", None)
        return calls

    def harness_sent(self) -> Counter[str]:
        sent = Counter(self.admin.sent)
        sent.pop("info", None)
        return sent

    async def memory_of_db(self) -> tuple[int, int, int]:
        """(sum of MEMORY USAGE over every key in the db, number of keys, and the part of
        the sum taken by cml-jobs' bounded event stream, ``{prefix}events``)."""
        total = keys = stream = 0
        cursor = 0
        while True:
            cursor, batch = await self.admin.scan(cursor, count=1000)
            if batch:
                async with self.admin.pipeline(transaction=False) as pipe:
                    for key in batch:
                        pipe.memory_usage(key, samples=0)
                    sizes = await pipe.execute()
                total += sum(s or 0 for s in sizes)
                pairs = zip(batch, sizes, strict=True)
                stream += sum(size or 0 for key, size in pairs if key.endswith("events"))
                keys += len(batch)
            if cursor == 0:
                return total, keys, stream

    async def used_memory(self) -> int:
        return int((await self.admin.info("memory"))["used_memory"])

    async def records(self, key: str) -> list[tuple[str, int, int]]:
        out = []
        for batch in await self.admin.lrange(key, 0, -1):
            for entry in batch.split(";"):
                task, occurrence, start = entry.rsplit(",", 2)
                out.append((task, int(occurrence), int(start)))
        return out

    async def recorded(self, key: str) -> int:
        return int(await self.admin.get(f"{key}:n") or 0)

    async def wait_recorded(self, key: str, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await self.recorded(key) >= count:
                return True
            await asyncio.sleep(0.05)
        return False


class Workers:
    """Worker subprocesses of one system, cwd = repo root; stderr kept in temp files."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], health_key: str) -> None:
        self.argv = list(argv)
        self.env = env
        self.health_key = health_key
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: list[Any] = []
        self.started_at = 0.0
        self.peak_rss: list[int | None] = []  # KiB per process, read by stop()

    def start(self, count: int) -> None:
        self.started_at = time.time()
        for _ in range(count):
            log = tempfile.TemporaryFile()
            self.logs.append(log)
            self.processes.append(
                subprocess.Popen(
                    self.argv, cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=log
                )
            )

    async def wait_ready(self, bench: Bench, timeout: float = 30) -> None:
        """Until arq's health-check key exists (written once a worker polls its queue)."""
        deadline = time.monotonic() + timeout
        while not await bench.admin.exists(self.health_key):
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers not ready after {timeout} s:\n{self.tail()}")
            await asyncio.sleep(0.05)

    def check_alive(self) -> None:
        for process in self.processes:
            if process.poll() is not None:
                raise RuntimeError(f"a worker exited with {process.returncode}:\n{self.tail()}")

    def tail(self) -> str:
        out = []
        for log in self.logs:
            log.seek(0)
            out.append(log.read().decode(errors="replace")[-2000:])
        return "\n---\n".join(out)

    def cpu(self) -> list[float]:
        return [cpu_seconds(p.pid) for p in self.processes]

    def rss_figures(self) -> dict[str, float | None]:
        """Peak RSS (MiB) of the largest worker, and of all workers together."""
        known = [kib for kib in self.peak_rss if kib is not None]
        if not known or len(known) < len(self.peak_rss):
            return {"worker_rss_peak_mib": None, "worker_rss_peak_sum_mib": None}
        return {
            "worker_rss_peak_mib": max(known) / 1024,
            "worker_rss_peak_sum_mib": sum(known) / 1024,
        }

    def stop(self) -> None:
        # VmHWM is the lifetime peak; read it while the processes are still alive.
        self.peak_rss = [peak_rss_kib(p.pid) for p in self.processes]
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in self.logs:
            log.close()
        self.processes, self.logs = [], []


class System:
    """What a workload needs of a system: workers, and ways to put work in."""

    name: str
    label: str
    # Workers that only see the work stored before they start (APScheduler 3): the
    # workloads store it first, then start them, with a longer lead to the first due time.
    schedules_before_start = False
    # A call that schedules many tasks at once (cml-jobs: bus.schedule_tasks).
    has_bulk_api = False

    def __init__(self, bench: Bench, run_id: str) -> None:
        self.bench = bench
        self.prefix = f"bench:{self.name}:{run_id}:"
        self.record_key = f"{self.prefix}rec"

    def base_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
            "BENCH_RECORD_URL": self.bench.url,
            "BENCH_RECORD_KEY": self.record_key,
        }

    def workers(self) -> Workers:
        raise NotImplementedError

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def schedule_once(
        self, ids: Iterable[str], due_ms: int, *, bulk: bool | str = True
    ) -> None:
        """Schedule one-time tasks: one awaited call each (bulk False), concurrent calls
        (True), or the system's bulk call ("api", where it has one)."""
        raise NotImplementedError

    async def schedule_every(
        self, ids: Sequence[str], interval_ms: int, first_ms: Sequence[int]
    ) -> None:
        raise NotImplementedError

    async def schedule_backlog(self, ids: Sequence[str], outage_ms: int, interval_ms: int) -> int:
        """Tasks scheduled ``outage_ms`` ago whose workers were all down since; returns
        the time (ms) the outage ends (now)."""
        raise NotImplementedError


async def gather_chunks(calls: Iterable[Any], chunk: int = CHUNK) -> None:
    batch: list[Any] = []
    for call in calls:
        batch.append(call)
        if len(batch) >= chunk:
            await asyncio.gather(*batch)
            batch = []
    if batch:
        await asyncio.gather(*batch)


class CmlJobs(System):
    name = "cml"
    label = "cml-jobs"
    has_bulk_api = True

    def __init__(self, bench: Bench, run_id: str, worker_env: dict[str, str]) -> None:
        super().__init__(bench, run_id)
        self.queue = f"{self.prefix}queue"
        self.worker_env = worker_env
        self.scheduler: Any = None

    def workers(self) -> Workers:
        env = {
            **self.base_env(),
            "CML_JOBS_REDIS_URL": self.bench.url,
            "CML_JOBS_MODULES": "benchmarks.jobs",
            "CML_JOBS_KEY_PREFIX": self.prefix,
            "CML_JOBS_QUEUE": self.queue,
            **self.worker_env,
        }
        return Workers([str(ARQ), "cml_jobs.WorkerSettings"], env, f"{self.queue}:health-check")

    def _configure(self, clock: Any = None) -> Any:
        from cml_jobs import BackgroundTaskScheduler

        return BackgroundTaskScheduler.configure(
            modules=["benchmarks.jobs"],
            redis_url=self.bench.url,
            key_prefix=self.prefix,
            queue_name=self.queue,
            run_worker=False,
            clock=clock,
        )

    async def open(self) -> None:
        self.scheduler = self._configure()
        await self.scheduler.start()

    async def close(self) -> None:
        if self.scheduler is not None:
            await self.scheduler.stop()
            self.scheduler = None

    async def schedule_once(
        self, ids: Iterable[str], due_ms: int, *, bulk: bool | str = True
    ) -> None:
        from cml_jobs import ScheduledTaskDescriptor

        when = at(due_ms)
        descriptors = [
            ScheduledTaskDescriptor(id=i, name="BenchOnceJob", scheduled_at=when) for i in ids
        ]
        await self.schedule(descriptors, bulk=bulk)

    async def schedule(
        self, descriptors: Sequence[Any], *, bulk: bool | str, bus: Any = None
    ) -> None:
        bus = bus or self.scheduler.bus
        if bulk == "api":
            await bus.schedule_tasks(descriptors)
        elif bulk:
            await gather_chunks(bus.schedule_task(d) for d in descriptors)
        else:
            for d in descriptors:
                await bus.schedule_task(d)

    async def schedule_every(
        self, ids: Sequence[str], interval_ms: int, first_ms: Sequence[int]
    ) -> None:
        from cml_jobs import RecurrentTaskDescriptor

        interval = timedelta(milliseconds=interval_ms)
        descriptors = [
            RecurrentTaskDescriptor(
                id=i, name="BenchEveryJob", interval=interval, start_at=at(first)
            )
            for i, first in zip(ids, first_ms, strict=True)
        ]
        await self.schedule(descriptors, bulk="api")

    async def schedule_backlog(self, ids: Sequence[str], outage_ms: int, interval_ms: int) -> int:
        # Honest past: the tasks are scheduled through the bus as they would have been
        # before the outage, by a scheduler whose clock reads outage_ms ago (ManualClock);
        # due times are computed by cml-jobs itself. Default policy: coalesce=True,
        # misfire_grace_time=60 s.
        from cml_jobs import RecurrentTaskDescriptor
        from cml_jobs.testing import ManualClock

        end = now_ms()
        clock = ManualClock(at(end - outage_ms))
        interval = timedelta(milliseconds=interval_ms)
        descriptors = [
            RecurrentTaskDescriptor(id=i, name="BenchEveryJob", interval=interval) for i in ids
        ]
        past = self._configure(clock)
        await past.start()
        try:
            await self.schedule(descriptors, bulk=True, bus=past.bus)
        finally:
            await past.stop()
        return end


class RawArq(System):
    name = "arq"
    label = "arq 0.28"

    def __init__(self, bench: Bench, run_id: str, max_jobs: int | None) -> None:
        super().__init__(bench, run_id)
        self.queue = f"{self.prefix}queue"
        self.max_jobs = max_jobs
        self.pool: Any = None

    def workers(self) -> Workers:
        env = {
            **self.base_env(),
            "BENCH_ARQ_REDIS_URL": self.bench.url,
            "BENCH_ARQ_QUEUE": self.queue,
        }
        if self.max_jobs:
            env["BENCH_ARQ_MAX_JOBS"] = str(self.max_jobs)
        return Workers(
            [str(ARQ), "benchmarks.arq_jobs.WorkerSettings"], env, f"{self.queue}:health-check"
        )

    async def open(self) -> None:
        from arq import create_pool
        from arq.connections import RedisSettings

        self.pool = await create_pool(
            RedisSettings.from_dsn(self.bench.url), default_queue_name=self.queue
        )

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.aclose()
            self.pool = None

    def _once(self, task: str, due_ms: int) -> Any:
        return self.pool.enqueue_job("noop", task, due_ms, _job_id=task, _defer_until=at(due_ms))

    async def schedule_once(
        self, ids: Iterable[str], due_ms: int, *, bulk: bool | str = True
    ) -> None:
        if bulk:
            await gather_chunks(self._once(i, due_ms) for i in ids)
        else:
            for i in ids:
                await self._once(i, due_ms)

    def _tick(self, task: str, first: int, interval_ms: int, catch_up: bool) -> Any:
        return self.pool.enqueue_job(
            "tick",
            task,
            first,
            interval_ms,
            catch_up,
            _job_id=f"{task}:{first}",
            _defer_until=at(first),
        )

    async def schedule_every(
        self, ids: Sequence[str], interval_ms: int, first_ms: Sequence[int]
    ) -> None:
        await gather_chunks(
            self._tick(i, first, interval_ms, False) for i, first in zip(ids, first_ms, strict=True)
        )

    async def schedule_backlog(self, ids: Sequence[str], outage_ms: int, interval_ms: int) -> int:
        # Each task's next occurrence was due one interval after it was scheduled, outage_ms
        # ago: a deferred job now overdue, which runs once and re-enqueues itself at the
        # next grid point after now (catch_up: arq's closest match to coalesce=True).
        end = now_ms()
        first = end - outage_ms + interval_ms
        await gather_chunks(self._tick(i, first, interval_ms, True) for i in ids)
        return end


class ApScheduler3(System):
    """APScheduler 3: an ``AsyncIOScheduler`` with a ``RedisJobStore`` (``benchmarks.aps_jobs``)
    in a worker process of its own. The harness stores jobs through a scheduler started
    paused (it never runs a job) over the same store: that is how APScheduler 3 writes jobs
    to a persistent store without running them."""

    name = "aps"
    label = "APScheduler 3"
    schedules_before_start = True

    def __init__(self, bench: Bench, run_id: str) -> None:
        super().__init__(bench, run_id)
        self.scheduler: Any = None

    def workers(self) -> Workers:
        health = f"{self.prefix}health-check"
        env = {
            **self.base_env(),
            "BENCH_APS_REDIS_URL": self.bench.url,
            "BENCH_APS_PREFIX": self.prefix,
            "BENCH_APS_HEALTH_KEY": health,
        }
        return Workers([sys.executable, "-m", "benchmarks.aps_worker"], env, health)

    async def open(self) -> None:
        from benchmarks.aps_jobs import scheduler

        self.scheduler = scheduler(self.bench.url, self.prefix, listen=False)
        self.scheduler.start(paused=True)

    async def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
            await asyncio.sleep(0)  # AsyncIOScheduler shuts down in a loop callback
            self.scheduler = None

    async def _add(self, jobs: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
        # add_job is synchronous (a blocking Redis client): run it off the event loop,
        # so that systems measured at the same time (--quick) are not held up.
        from benchmarks.aps_jobs import job_options

        def add_all() -> None:
            for task, trigger, trigger_args in jobs:
                self.scheduler.add_job(trigger=trigger, **trigger_args, **job_options(task))

        await asyncio.to_thread(add_all)

    async def schedule_once(
        self, ids: Iterable[str], due_ms: int, *, bulk: bool | str = True
    ) -> None:
        when = at(due_ms)
        await self._add([(i, "date", {"run_date": when}) for i in ids])

    async def schedule_every(
        self, ids: Sequence[str], interval_ms: int, first_ms: Sequence[int]
    ) -> None:
        seconds = interval_ms / 1000
        await self._add(
            [
                (i, "interval", {"seconds": seconds, "start_date": at(first)})
                for i, first in zip(ids, first_ms, strict=True)
            ]
        )
