"""``python -m benchmarks.operations``: how fast operators see 10,000 tasks.

Schedules N tasks (default 10,000) on the real Redis under a key prefix of its own (no
worker: nothing runs), then times:

- the dashboard's tasks page (GET /, first page of 50, sorted by next run), served
  in-process through ASGI: cold (the listing read from Redis) and warm (the dashboard's
  2 s listing cache), and a search that matches 1% of the tasks (cold);
- ``cml-jobs tasks`` as an operator runs it: a new process (interpreter start-up
  included), printing the whole table, and with ``--json``.

Targets (issue 12): tasks page under 1 s, ``cml-jobs tasks`` under 2 s. Every key the
run wrote is deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from cml_jobs import (
    BackgroundTaskScheduler,
    RecurrentBackgroundJob,
    RecurrentTaskDescriptor,
    backgroundjob,
)
from cml_jobs.stores.redis import redis_client
from cml_jobs.web import dashboard

CLI = Path(sys.executable).with_name("cml-jobs")


@backgroundjob(task_type="recurrent")
class QuietJob(RecurrentBackgroundJob):
    """Never runs here (no worker): it only gives the tasks a registered job."""

    def __init__(self, label: str = "") -> None:
        self.label = label

    async def run_every(self, *args: object, **kwargs: object) -> None:
        """Nothing to do."""


async def _timed(call: Callable[[], Awaitable[object]], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        await call()
        times.append(time.perf_counter() - started)
    return times


async def _fill(scheduler: BackgroundTaskScheduler, count: int) -> None:
    bus = scheduler.bus
    for start in range(0, count, 500):
        await asyncio.gather(
            *(
                bus.schedule_task(
                    RecurrentTaskDescriptor(
                        id=f"tenant-{i:05}-sync",
                        name="QuietJob",
                        data={"label": f"tenant {i}"},
                        interval=600 + i % 3000,
                    )
                )
                for i in range(start, min(start + 500, count))
            )
        )


def _cli(env: dict[str, str], *args: str) -> float:
    started = time.perf_counter()
    subprocess.run([str(CLI), "tasks", *args], env=env, capture_output=True, check=True)
    return time.perf_counter() - started


def _line(name: str, times: list[float], target: float) -> str:
    median = statistics.median(times)
    verdict = "ok" if median < target else "OVER TARGET"
    spread = f"min {min(times):.3f} max {max(times):.3f}"
    figures = f"median {median:.3f} s ({spread}; n={len(times)})"
    return f"{name:<44} {figures} target {target} s: {verdict}"


async def run(url: str, count: int, repeats: int) -> list[str]:
    """Fill, measure, clean up; the report's lines."""
    prefix = f"bench-ops:{uuid.uuid4().hex[:8]}:"
    scheduler = BackgroundTaskScheduler.configure(
        modules=[__name__], redis_url=url, key_prefix=prefix
    )
    lines = []
    try:
        async with scheduler:
            started = time.perf_counter()
            await _fill(scheduler, count)
            lines.append(f"scheduled {count} tasks in {time.perf_counter() - started:.1f} s")
            lines += await _page_lines(scheduler, count, repeats)
        env = {**os.environ, "CML_JOBS_REDIS_URL": url, "CML_JOBS_KEY_PREFIX": prefix}
        table = [await asyncio.to_thread(_cli, env) for _ in range(repeats)]
        as_json = [await asyncio.to_thread(_cli, env, "--json") for _ in range(repeats)]
        lines.append(_line("cml-jobs tasks (new process, whole table)", table, 2.0))
        lines.append(_line("cml-jobs tasks --json (new process)", as_json, 2.0))
    finally:
        await _forget(url, prefix)
    return lines


async def _page_lines(scheduler: BackgroundTaskScheduler, count: int, repeats: int) -> list[str]:
    """Cold: a new dashboard per request, so the listing is read from Redis each time."""

    async def get(app: object, params: dict[str, str]) -> None:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://b") as client:
            reply = await client.get("/", params=params)
        assert reply.status_code == 200 and f"of {count} task(s)" in reply.text

    warm_app = dashboard(scheduler)
    await get(warm_app, {})
    return [
        _line(
            "tasks page, cold (read from Redis)",
            await _timed(lambda: get(dashboard(scheduler), {}), repeats),
            1.0,
        ),
        _line(
            "tasks page, warm (listing cached)",
            await _timed(lambda: get(warm_app, {}), repeats),
            1.0,
        ),
        _line(
            "tasks page, search 1% of tasks (cold)",
            await _timed(lambda: get(dashboard(scheduler), {"q": "-001"}), repeats),
            1.0,
        ),
    ]


async def _forget(url: str, prefix: str) -> None:
    client = redis_client(url, patient=False)
    keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
    for start in range(0, len(keys), 1000):
        await client.delete(*keys[start : start + 1000])
    await client.aclose()


def main() -> int:
    """Parse the options, run once, print the figures."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.operations")
    default_url = os.environ.get("CML_JOBS_REDIS_URL", "redis://127.0.0.1:6379/15")
    parser.add_argument("--redis-url", default=default_url)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()
    for line in asyncio.run(run(options.redis_url, options.tasks, options.repeats)):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
