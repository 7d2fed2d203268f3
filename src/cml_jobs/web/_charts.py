"""A task's runs as a small inline SVG chart: lateness and duration per run, drawn on
the server (no JavaScript, no chart library)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["RunPoint", "runs_chart"]

_WIDTH, _HEIGHT, _PAD = 640, 160, 24


@dataclass(frozen=True)
class RunPoint:
    """One run on the chart: a label (its occurrence), two values in seconds, and
    whether it succeeded (failed runs' bars are drawn in red)."""

    label: str
    lateness: float | None
    duration: float | None
    ok: bool = True


def runs_chart(points: Sequence[RunPoint]) -> str:
    """An SVG with two bars per run, oldest on the left: lateness (how long after its
    occurrence the run started) and duration. Empty when there is nothing to draw."""
    if not points:
        return ""
    values = [v for p in points for v in (p.lateness, p.duration) if v is not None]
    top = max([*values, 0.001])
    slot = (_WIDTH - 2 * _PAD) / len(points)
    bar = max(slot / 2 - 1, 1)
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {_WIDTH} {_HEIGHT}" '
        f'width="{_WIDTH}" height="{_HEIGHT}" xmlns="http://www.w3.org/2000/svg">',
        "<title>lateness and duration of the latest runs</title>",
        f'<text x="{_PAD}" y="14" class="axis">max {top:.3f} s</text>',
        f'<line x1="{_PAD}" y1="{_HEIGHT - _PAD}" x2="{_WIDTH - _PAD}" '
        f'y2="{_HEIGHT - _PAD}" class="axis"/>',
    ]
    for i, point in enumerate(points):
        x = _PAD + i * slot
        for offset, value, kind in ((0, point.lateness, "late"), (bar, point.duration, "took")):
            if value is None:
                continue
            height = (_HEIGHT - 2 * _PAD) * max(value, 0) / top
            tip = escape(f"{point.label}: {kind} {value:.3f} s")
            css = kind if point.ok else f"{kind} failed"
            parts.append(
                f'<rect class="{css}" x="{x + offset:.1f}" y="{_HEIGHT - _PAD - height:.1f}" '
                f'width="{bar:.1f}" height="{height:.1f}"><title>{tip}</title></rect>'
            )
    legend_y = _HEIGHT - 6
    parts += [
        f'<rect class="late" x="{_PAD}" y="{legend_y - 8}" width="8" height="8"/>',
        f'<text x="{_PAD + 12}" y="{legend_y}" class="axis">lateness</text>',
        f'<rect class="took" x="{_PAD + 80}" y="{legend_y - 8}" width="8" height="8"/>',
        f'<text x="{_PAD + 92}" y="{legend_y}" class="axis">duration</text>',
        "</svg>",
    ]
    return "".join(parts)
