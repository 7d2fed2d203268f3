"""How fast one client schedules and cancels many tasks: ``python -m benchmarks.bulk_rate
[N]`` (default 100,000) on a private redis-server.

The descriptors (recurrent, every 60 s) are built before the timing; one
``bus.schedule_tasks`` call stores them all, then one ``bus.cancel_tasks`` call removes
them. Prints tasks/s for each and the client's CPU seconds.
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import timedelta

from benchmarks.harness import Bench, CmlJobs, at, now_ms
from benchmarks.runner import start_private_redis


async def measure(n: int) -> None:
    from cml_jobs import RecurrentTaskDescriptor

    server, url = start_private_redis()
    bench = Bench(url)
    system = CmlJobs(bench, "bulk", {})
    try:
        await bench.reset()
        await system.open()
        first = now_ms() + 3_600_000
        descriptors = [
            RecurrentTaskDescriptor(
                id=f"t{i}", name="BenchEveryJob", interval=timedelta(seconds=60), start_at=at(first)
            )
            for i in range(n)
        ]
        bus = system.scheduler.bus
        wall, cpu = time.perf_counter(), time.process_time()
        result = await bus.schedule_tasks(descriptors)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(
            f"schedule_tasks: {len(result.scheduled):,} tasks in {wall:.2f} s "
            f"({n / wall:,.0f}/s), client CPU {cpu:.2f} s"
        )
        wall = time.perf_counter()
        removed = await bus.cancel_tasks([d.id for d in descriptors])
        wall = time.perf_counter() - wall
        gone = sum(1 for count in removed.values() if count is not None)
        print(f"cancel_tasks: {gone:,} tasks in {wall:.2f} s ({n / wall:,.0f}/s)")
    finally:
        await system.close()
        await bench.admin.aclose()
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    asyncio.run(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000))
