"""How an occurrence ended: the one vocabulary of runs, shared by the engine, the stores,
telemetry and events."""

from __future__ import annotations

import enum

__all__ = ["Outcome"]


class Outcome(str, enum.Enum):
    """How an occurrence ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    MISSED = "missed"
    SKIPPED = "skipped"
    STOPPED = "stopped"
    CANCELLED = "cancelled"
    PARKED = "parked"
