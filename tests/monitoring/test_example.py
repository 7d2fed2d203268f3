"""The worker-monitoring example runs with its one documented command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_example_polls_two_workers_then_ends_the_terminated_ones_task() -> None:
    """Against its own moto server: two workers polled, one terminated, its task gone, exit 0."""
    env = {k: v for k, v in os.environ.items() if k != "CML_MONITOR_INSTANCE_IDS"}
    result = subprocess.run(
        [sys.executable, "examples/worker_monitoring/app.py"],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "discovered and started monitoring: ['worker-1', 'worker-2']" in out
    assert out.count(" running ") == 2
    assert "tasks left: ['monitor-worker-1']" in out
    assert out.rstrip().splitlines()[-1].split()[2] == "terminated"
