"""An APScheduler 3 worker process: ``python -m benchmarks.aps_worker``.

One ``AsyncIOScheduler`` over the run's ``RedisJobStore`` (``benchmarks.aps_jobs``), run
until SIGTERM. Environment: ``BENCH_APS_REDIS_URL``, ``BENCH_APS_PREFIX`` (the run's keys),
``BENCH_APS_HEALTH_KEY`` (set once the scheduler has started: the harness waits for it, as
it waits for arq's health-check key), and the recorder's ``BENCH_RECORD_*``.

APScheduler 3 reads its job store when it wakes up and then sleeps until the earliest next
run time it saw: jobs that another process adds later are not seen until then (or ever,
when the store was empty). So the harness stores a workload's jobs before this process
starts.
"""

from __future__ import annotations

import asyncio
import os
import signal

import redis.asyncio as aioredis

from benchmarks import aps_jobs, recorder


async def main() -> None:
    url, prefix = os.environ["BENCH_APS_REDIS_URL"], os.environ["BENCH_APS_PREFIX"]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    scheduler = aps_jobs.scheduler(url, prefix, listen=True)
    scheduler.start()
    async with aioredis.Redis.from_url(url) as client:
        await client.set(os.environ["BENCH_APS_HEALTH_KEY"], "started", ex=3600)
    await stop.wait()
    scheduler.shutdown(wait=False)
    await asyncio.sleep(0)  # AsyncIOScheduler shuts down in a loop callback
    await recorder.flush()


if __name__ == "__main__":
    asyncio.run(main())
