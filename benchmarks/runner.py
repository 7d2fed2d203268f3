"""The command line: ``python -m benchmarks [--quick] [--only A,B] [--repeats N] ...``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks import workloads
from benchmarks.harness import ROOT, ApScheduler3, Bench, CmlJobs, RawArq, System, now_ms
from benchmarks.report import markdown, summarise

WORKLOADS = "ABCDEF"
DEFAULT_URL = "redis://127.0.0.1:6379/14"
SYSTEMS = ("cml", "arq", "aps", "cmlpg")
DEFAULT_SYSTEMS = ("cml", "arq", "aps")
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
# Workloads a system does not run, and systems that run one worker only (F with more
# workers is skipped): the README says why.
# cmlpg (cml-jobs on the PostgreSQL store) runs A, B and C: D counts Redis memory and
# commands, which it does not use for its tasks; E and F are left for later.
SKIPS = {"aps": "E", "cmlpg": "DEF"}
SINGLE_WORKER = {"aps"}

NOTES = [
    "Workers are real processes (`arq cml_jobs.WorkerSettings`, "
    "`arq benchmarks.arq_jobs.WorkerSettings`, `python -m benchmarks.aps_worker`) at their "
    "defaults unless --worker-env / --arq-max-jobs say otherwise: cml-jobs max_jobs=50, "
    "dispatch=local (a worker runs what it claims), poll_interval=1 s, "
    "queue_poll_delay=0.5 s; arq max_jobs=10, poll_delay=0.5 s, keep_result=3600 s.",
    "Jobs are no-ops that record (task, occurrence, start) in memory, flushed every 100 ms "
    "as one RPUSH + INCRBY (subtracted from command counts). Lateness = start - occurrence.",
    "Raw arq recurring work: self-rescheduling jobs (`_defer_until` = occurrence + interval, "
    "`_job_id` per occurrence), since arq cron jobs cannot be added at run time.",
    "APScheduler 3: `python -m benchmarks.aps_worker`, one AsyncIOScheduler with a "
    "RedisJobStore (its own keys per run); a date job per one-time task, an interval job per "
    "recurrent task, misfire_grace_time=None, coalesce=True, max_instances=1. Its jobs are "
    "stored (by a paused scheduler) before its worker starts, since a running APScheduler 3 "
    "does not see jobs another process adds; so in B and C its first due time is 3 s (quick: "
    "1.5 s) further ahead. It runs A-D and F with one worker (= C2); not E, nor F with more "
    "workers (a RedisJobStore cannot be shared by two schedulers).",
    "C: tasks' phases are spread evenly over one interval (start_at = T0 + i*interval/n); "
    "a run counts as executed if its occurrence falls in the window and it started at "
    "most 2 s (quick: 0.5 s) after the window ends. CPU % = (utime+stime)/wall over the window "
    "from /proc/<pid>/stat, per cent of one core. Redis commands per run: INFO commandstats "
    "deltas over the window (server-wide, commands inside Lua scripts included, the "
    "harness's own and the recorder's flushes subtracted) divided by the runs that started "
    "in the window.",
    "Peak worker RSS: VmHWM from /proc/<pid>/status just before the worker is stopped (the "
    "largest worker's, in MiB).",
    "D: commands per occurrence come from A's drain (INFO commandstats deltas, server-wide, "
    "minus the harness's own commands): enqueue = scheduling the tasks, worker = from worker "
    "start until every run is recorded (start-up and idle polling included). Other clients "
    "of the same Redis would be counted too: run on a quiet Redis. Memory: 10,000 recurrent "
    "tasks (arq: deferred tick jobs) none due for 2 minutes; idle commands/s over 10 s.",
    "E: scheduling calls are timed with descriptors built inside the timing (cml-jobs: "
    "pydantic ScheduledTaskDescriptor, due in 1 h; arq: enqueue_job with _defer_until). "
    "Recovery: recurrent tasks (interval 60 s, default coalesce=True, misfire_grace_time "
    "60 s) scheduled through the bus by a scheduler whose ManualClock reads 10 minutes ago, "
    "so the store holds exactly what it would after a 10-minute outage; handled = every task "
    "ran one catch-up occurrence (≤ worker start). arq: one overdue tick job per task that "
    "re-enqueues itself at the next grid point after now.",
    "F: workload C2 with 1, 2 and 4 worker processes (the 1-worker figure is C2's).",
    "C3: 1,000 and 100,000 recurrent tasks every 60 s, phases spread evenly, one worker, "
    "60 s window (unless the title says otherwise): does lateness, CPU or worker memory grow "
    "with the schedule? Schedule rate = tasks / time to store them all (cml-jobs: "
    "bus.schedule_tasks; APScheduler 3: add_job from a thread; arq: enqueue_job in "
    "asyncio.gather chunks of 200). Redis bytes per task: used_memory delta across that "
    "scheduling, divided by the tasks.",
]


def runs(system: str, key: str) -> bool:
    """Whether a system runs a workload (key: A, B, C1, F2, ...)."""
    if key[0] in SKIPS.get(system, ""):
        return False
    return not (system in SINGLE_WORKER and key[0] == "F" and key != "F1")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--quick", action="store_true", help="~20 s smoke with tiny sizes (CI)")
    p.add_argument("--only", default=WORKLOADS, help="workloads, e.g. A,B (default: all)")
    p.add_argument("--repeats", type=int, default=None, help="repeats (default 3; quick: 1)")
    p.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", DEFAULT_URL))
    p.add_argument(
        "--private-redis",
        action="store_true",
        help="start a throwaway redis-server on a free port (same binary as on PATH) so that "
        "no other client pollutes INFO commandstats; --redis-url is then ignored",
    )
    p.add_argument(
        "--c3-window",
        type=float,
        default=None,
        metavar="SECONDS",
        help="C3's measured window (default 60; quick: 2): shorter for a smoke run",
    )
    p.add_argument("--out", default="benchmarks/results/latest.json")
    p.add_argument(
        "--systems",
        default=",".join(DEFAULT_SYSTEMS),
        help="any of cml,arq,aps,cmlpg (default cml,arq,aps); cmlpg = cml-jobs on the "
        "PostgreSQL store at --postgres-url",
    )
    p.add_argument(
        "--postgres-url",
        default=os.environ.get("BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL),
        help="the database cmlpg keeps its tasks in (a schema of each run's own, dropped "
        f"afterwards; default {DEFAULT_POSTGRES_URL} or $BENCH_POSTGRES_URL)",
    )
    p.add_argument("--arq-max-jobs", type=int, default=None, help="raw arq max_jobs")
    p.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="CML_JOBS_X=V",
        help="extra environment for cml-jobs workers (repeatable)",
    )
    return p.parse_args(argv)


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


async def _meta(bench: Bench, args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    import apscheduler
    import arq.version

    server = await bench.admin.info("server")
    dirty = " (with uncommitted changes)" if _run(["git", "status", "--porcelain"]) else ""
    return {
        "command": shlex.join([Path(sys.executable).name, "-m", "benchmarks", *argv]),
        "mode": "quick" if args.quick else "full",
        "repeats": args.repeats,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "redis_version": server.get("redis_version"),
        "redis_url": args.redis_url,
        "python": platform.python_version(),
        "arq": arq.version.VERSION,
        "apscheduler": apscheduler.__version__,
        "systems": [s.strip() for s in args.systems.split(",") if s.strip()],
        "postgres_url": args.postgres_url if "cmlpg" in args.systems else None,
        "commit": (_run(["git", "rev-parse", "--short", "HEAD"]) or "unknown") + dirty,
    }


class Runner:
    def __init__(self, args: argparse.Namespace, bench: Bench, doc: dict[str, Any]) -> None:
        self.args = args
        self.bench = bench
        self.doc = doc
        self.sizes = workloads.QUICK if args.quick else workloads.FULL
        self.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
        self.per_task_ms: dict[str, float] = {}
        self.worker_env = dict(kv.split("=", 1) for kv in args.worker_env)
        self.counter = 0

    def make(self, name: str) -> System:
        self.counter += 1
        run_id = f"{self.counter}"
        if name == "cml":
            return CmlJobs(self.bench, run_id, self.worker_env)
        if name == "aps":
            return ApScheduler3(self.bench, run_id)
        if name == "cmlpg":
            from benchmarks.postgres import CmlJobsPostgres

            return CmlJobsPostgres(self.bench, run_id, self.worker_env, self.args.postgres_url)
        return RawArq(self.bench, run_id, self.args.arq_max_jobs)

    async def calibrate(self) -> None:
        """Time to schedule one task in bulk, to place B's and C's first due times."""
        for name in self.systems:
            await self.bench.reset()
            system = self.make(name)
            await system.open()
            try:
                t = time.perf_counter()
                await system.schedule_once(
                    [f"k{i}" for i in range(200)], now_ms() + 3_600_000, bulk=True
                )
                self.per_task_ms[name] = (time.perf_counter() - t) * 1000 / 200
            finally:
                await system.close()
        await self.bench.reset()

    async def measure(
        self, key: str, title: str, job: Callable[[System, float], Awaitable[dict[str, Any]]]
    ) -> None:
        entry = self.doc["results"].setdefault(key, {"title": title})
        systems = [n for n in self.systems if runs(n, key)]
        for repeat in range(self.args.repeats):
            order = systems if repeat % 2 == 0 else systems[::-1]
            await self.bench.reset()
            started = time.monotonic()
            if self.args.quick:  # smoke: the systems at once, to fit the time budget
                outcomes = await asyncio.gather(
                    *(job(self.make(n), self.per_task_ms[n]) for n in order)
                )
            else:
                outcomes = []
                for name in order:
                    await self.bench.reset()
                    outcomes.append(await job(self.make(name), self.per_task_ms[name]))
            for name, figures in zip(order, outcomes, strict=True):
                entry.setdefault(name, {"runs": []})["runs"].append(figures)
            print(
                f"  {key} repeat {repeat + 1}/{self.args.repeats}: "
                f"{time.monotonic() - started:.1f} s",
                file=sys.stderr,
                flush=True,
            )
        for name in systems:
            entry[name]["summary"] = summarise(entry[name]["runs"])
        self.save()

    def save(self) -> None:
        out = Path(self.args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.doc, indent=2, default=str) + "\n")
        out.with_suffix(".md").write_text(markdown(self.doc))

    async def run(self, only: str) -> None:
        s = self.sizes
        await self.calibrate()
        self.doc["calibration_ms_per_task"] = self.per_task_ms
        if "A" in only or "D" in only:
            await self.measure("A", "A", lambda sy, k: workloads.drain(sy, s, k))
        if "B" in only:
            await self.measure("B", "B", lambda sy, k: workloads.burst(sy, s, k))
        if "D" in only:
            await self.measure("D", "D", lambda sy, k: workloads.idle(sy, s, k))
        sizes = dict(zip(("C1", "C2"), s.c_sizes, strict=True))
        if "3" in only:
            await self._c3()
        if "C" in only:
            for key, n in sizes.items():
                title = f"{key}. {n:,} recurrent tasks every {s.c_interval_ms / 1000:g} s"
                await self.measure(key, title, lambda sy, k, n=n: workloads.recurrent(sy, s, k, n))
        if "F" in only:
            n = sizes["C2"]
            for count in s.f_workers:
                key = f"F{count}"
                if count == 1 and "C2" in self.doc["results"]:
                    self.doc["results"][key] = {
                        **self.doc["results"]["C2"],
                        "title": "F. C2 with 1 worker",
                    }
                    continue
                await self.measure(
                    key,
                    f"F. C2 with {count} workers",
                    lambda sy, k, c=count: workloads.recurrent(sy, s, k, n, c),
                )
            self.save()
        if "E" in only:  # last: its 100,000-task backlog is the longest part
            await self.measure("E", "E", lambda sy, k: self._e(sy, k))

    async def _c3(self) -> None:
        """C3: the recurrent schedule at C3's sizes (1,000 and 100,000 tasks), interval
        and window: does lateness, CPU or memory grow with the schedule?"""
        s = self.sizes
        window = self.args.c3_window
        duration = int(window * 1000) if window else s.c3_duration_ms
        c3 = replace(s, c_interval_ms=s.c3_interval_ms, c_duration_ms=duration)
        for key, n in zip(("C3a", "C3b"), s.c3_sizes, strict=True):
            title = f"C3. {n:,} recurrent tasks every {c3.c_interval_ms / 1000:g} s"
            if duration != c3.c_interval_ms:
                title += f" ({duration / 1000:g} s window)"
            await self.measure(key, title, lambda sy, k, n=n: workloads.recurrent(sy, c3, k, n))

    async def _e(self, system: System, per_task_ms: float) -> dict[str, Any]:
        rate = await workloads.schedule_rate(system, self.sizes, per_task_ms)
        if not self.args.quick:  # quick runs the systems at once: each keeps its prefix
            await self.bench.reset()
        again = self.make(system.name)
        return {**rate, **await workloads.recovery(again, self.sizes, per_task_ms)}


def start_private_redis() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(100):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return server, f"redis://127.0.0.1:{port}/14"
        time.sleep(0.05)
    server.kill()
    raise SystemExit("redis-server did not start")


async def amain(argv: list[str]) -> int:
    args = parse(argv)
    args.repeats = args.repeats or (1 if args.quick else 3)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not systems or set(systems) - set(SYSTEMS):
        raise SystemExit(f"--systems: choose from {','.join(SYSTEMS)}, got {args.systems!r}")
    # "C3" is a workload of its own (100,000 tasks); every run of all workloads has it.
    parts = [part.strip().upper() for part in args.only.split(",") if part.strip()]
    only = "".join(part for part in parts if part != "C3")
    if "C3" in parts or args.only == WORKLOADS:
        only += "3"
    unknown = set(only) - set(WORKLOADS) - {"3"}
    if unknown:
        raise SystemExit(f"--only: unknown workload(s) {sorted(unknown)}; choose from A-F, C3")
    private = None
    if args.private_redis:
        private, args.redis_url = start_private_redis()
    bench = Bench(args.redis_url)
    try:
        await bench.admin.ping()
    except Exception as exc:
        raise SystemExit(f"cannot reach Redis at {args.redis_url}: {exc}") from exc
    t = time.monotonic()
    doc: dict[str, Any] = {
        "meta": await _meta(bench, args, argv),
        "sizes": vars(workloads.QUICK if args.quick else workloads.FULL),
        "notes": NOTES,
        "results": {},
    }
    runner = Runner(args, bench, doc)
    try:
        await runner.run(only)
    finally:
        doc["meta"]["took_s"] = time.monotonic() - t
        runner.save()
        await bench.reset()
        await bench.admin.aclose()
        if private is not None:
            private.terminate()
            private.wait(10)
    print(Path(args.out).with_suffix(".md").read_text())
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so that workers and a private Redis are stopped on SIGTERM


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    return asyncio.run(amain(sys.argv[1:] if argv is None else argv))
