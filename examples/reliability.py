"""Reliability: a run may come twice for one occurrence (its worker was lost mid-run and
the lease expired), so a job with effects keys them on the occurrence.

python examples/reliability.py
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any

from cml_jobs import RecurrentBackgroundJob, RunContext, backgroundjob

PAID: dict[tuple[str, datetime], int] = {}  # stands in for a table with a unique key


@backgroundjob(task_type="recurrent")
class PayoutJob(RecurrentBackgroundJob):
    def __init__(self, merchant_id: str) -> None:
        self.merchant_id = merchant_id

    async def run_every(self, *args: Any, **kwargs: Any) -> None:
        key = (self.context.task_id, self.context.occurrence_at)  # the same on a re-run
        if key in PAID:
            return  # a re-run of an occurrence already paid: nothing to do
        PAID[key] = 100  # INSERT ... ON CONFLICT DO NOTHING, in the same transaction


async def main() -> None:
    occurrence = datetime(2030, 1, 1, tzinfo=timezone.utc)
    for attempt in (1, 2):  # the first run's worker died after paying; the re-run comes
        job = PayoutJob(merchant_id="m-1")
        job.context = RunContext("payout-m-1", "PayoutJob", occurrence, attempt)
        await job.run_every()
    assert list(PAID.values()) == [100]  # paid once


if __name__ == "__main__":
    asyncio.run(main())
