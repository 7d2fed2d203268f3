"""cml-jobs on the PostgreSQL store (``cmlpg``): the same workers, jobs and bus as
``cml``, with ``CML_JOBS_STORE_URL`` / ``store_url`` naming a schema of the run's own in
the benchmark database (dropped when the run closes). arq and the recorder still use the
benchmark Redis, so Redis command counts show only what is left there (arq's health key,
the recorder's flushes: none of the scheduling).
"""

from __future__ import annotations

import os
from typing import Any

import asyncpg

from benchmarks.harness import ARQ, Bench, CmlJobs, Workers

__all__ = ["CmlJobsPostgres"]


class CmlJobsPostgres(CmlJobs):
    name = "cmlpg"
    label = "cml-jobs on PostgreSQL"

    def __init__(
        self, bench: Bench, run_id: str, worker_env: dict[str, str], postgres_url: str
    ) -> None:
        super().__init__(bench, run_id, worker_env)
        self.postgres_url = postgres_url
        self.schema = f"bench_cmlpg_{os.getpid()}_{run_id}"
        self.store_url = f"{postgres_url}?schema={self.schema}"

    def workers(self) -> Workers:
        workers = super().workers()
        env = {**workers.env, "CML_JOBS_STORE_URL": self.store_url}
        return Workers([str(ARQ), "cml_jobs.WorkerSettings"], env, workers.health_key)

    def _configure(self, clock: Any = None) -> Any:
        from cml_jobs import BackgroundTaskScheduler

        return BackgroundTaskScheduler.configure(
            modules=["benchmarks.jobs"],
            redis_url=self.bench.url,
            store_url=self.store_url,
            key_prefix=self.prefix,
            queue_name=self.queue,
            run_worker=False,
            clock=clock,
        )

    async def close(self) -> None:
        await super().close()
        conn = await asyncpg.connect(self.postgres_url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        finally:
            await conn.close()
