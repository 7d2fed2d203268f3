"""cml-jobs telemetry: metrics on a Prometheus /metrics endpoint, traces on the console.

pip install "cml-jobs[prometheus]", then: python examples/telemetry/app.py --seconds 30
and open http://localhost:9464/metrics while it runs.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from prometheus_client import start_http_server

from cml_jobs import (
    BackgroundTaskScheduler,
    RecurrentBackgroundJob,
    RecurrentTaskDescriptor,
    backgroundjob,
)


def install_telemetry(port: int) -> TracerProvider:
    """The app's choice of SDK and exporters; cml-jobs itself uses the API only."""
    resource = Resource.create({"service.name": "cml-jobs-telemetry-example"})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(tracer_provider)
    reader = PrometheusMetricReader()
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))
    start_http_server(port)  # serves /metrics from prometheus_client's default registry
    return tracer_provider


@backgroundjob(task_type="recurrent")
class PingJob(RecurrentBackgroundJob):
    def __init__(self, target: str) -> None:
        self.target = target

    async def run_every(self, *args: Any, **kwargs: Any) -> None:
        await asyncio.sleep(0.01)  # your work here; its own spans nest under the run's


@backgroundjob(task_type="recurrent")
class FlakyJob(RecurrentBackgroundJob):
    async def run_every(self, *args: Any, **kwargs: Any) -> None:
        if self.context.occurrence_at.second % 4 == 0:
            raise RuntimeError("flaky dependency")


async def main(port: int, seconds: float) -> None:
    tracer_provider = install_telemetry(port)
    print(f"metrics on http://localhost:{port}/metrics", flush=True)
    scheduler = BackgroundTaskScheduler.configure(modules=[__name__])  # memory://, in-process
    async with scheduler:
        bus = scheduler.bus
        await bus.schedule_task(
            RecurrentTaskDescriptor(id="ping", name="PingJob", data={"target": "db"}, interval=1)
        )
        await bus.schedule_task(RecurrentTaskDescriptor(id="flaky", name="FlakyJob", interval=2))
        for _ in range(int(seconds)):
            await asyncio.sleep(1)
            await scheduler.list_tasks()  # also refreshes the cml_jobs.tasks gauge
    tracer_provider.shutdown()  # print the spans still buffered


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=9464)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    asyncio.run(main(args.port, args.seconds))
