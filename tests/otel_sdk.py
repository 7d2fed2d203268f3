"""The OpenTelemetry SDK for the telemetry tests, installed once per session.

Global providers can be set only once per process, so the first use installs a tracer
provider with an in-memory span exporter and a meter provider with an in-memory metric
reader; ``fresh_sdk`` also clears the spans, for each test. Metrics are cumulative: tests
compare what changed across the code they run (``delta``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

Key = tuple[str, frozenset[tuple[str, Any]]]


@dataclass
class Sdk:
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader

    def metrics(self) -> dict[str, Any]:
        """Every cml_jobs metric by name (the SDK's Metric objects)."""
        data = self.reader.get_metrics_data()
        if data is None:  # nothing recorded yet
            return {}
        return {
            metric.name: metric
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            if scope.scope.name == "cml_jobs"
            for metric in scope.metrics
        }

    def points(self) -> dict[Key, float]:
        """Sum, count (histograms) or value (gauges) of every point, by name and attributes."""
        found: dict[Key, float] = {}
        for name, metric in self.metrics().items():
            for point in metric.data.data_points:
                key = (name, frozenset(dict(point.attributes or {}).items()))
                if isinstance(point, HistogramDataPoint):
                    found[key] = point.count
                else:
                    assert isinstance(point, NumberDataPoint)
                    found[key] = point.value
        return found


def delta(before: dict[Key, float], after: dict[Key, float]) -> dict[Key, float]:
    """What changed between two ``Sdk.points`` readings (zero changes left out)."""
    changed = {key: value - before.get(key, 0) for key, value in after.items()}
    return {key: value for key, value in changed.items() if value}


def attrs(**values: Any) -> frozenset[tuple[str, Any]]:
    """Metric attributes from keywords; ``__`` stands for ``.`` (messaging__system)."""
    return frozenset((name.replace("__", "."), value) for name, value in values.items())


@functools.cache
def _installed() -> Sdk:
    """Install the SDK as the global providers, the first time only."""
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    trace.set_tracer_provider(tracer_provider)
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    return Sdk(spans, reader)


def fresh_sdk() -> Sdk:
    """The session's SDK (installed on first use), with no spans from earlier tests."""
    sdk = _installed()
    sdk.spans.clear()
    return sdk
