"""How an occurrence ended: the one vocabulary of runs, shared by the engine, the stores,
telemetry and events."""

from __future__ import annotations

import enum

__all__ = ["Outcome"]


class Outcome(str, enum.Enum):
    """How an occurrence ended.

    ``coalesced`` appears only in run history: occurrences folded into one catch-up run
    (``coalesce=True``), which metrics and counts report as ``missed``.
    """

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    MISSED = "missed"
    SKIPPED = "skipped"
    COALESCED = "coalesced"
    STOPPED = "stopped"
    CANCELLED = "cancelled"
    PARKED = "parked"
