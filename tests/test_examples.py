"""The examples and the README run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def test_the_readme_shows_the_quickstart_example_verbatim() -> None:
    """The README's Redis example is examples/quickstart.py, so a test runs what users read."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert (EXAMPLES / "quickstart.py").read_text() in blocks


def test_the_readme_quick_start_is_two_commands() -> None:
    """The quick start is exactly two commands: the demo, and the tests."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in section.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]


def test_the_demo_runs_every_task_kind_without_a_redis_server() -> None:
    """`python -m cml_jobs demo` on memory:// runs all three tasks and exits 0."""
    result = subprocess.run(
        [sys.executable, "-m", "cml_jobs", "demo", "--seconds", "7"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for task in ("heartbeat", "cleanup", "report"):
        assert re.search(rf"{task}\s+[1-9]\d* run\(s\) succeeded, 0 failed", result.stdout)


@pytest.mark.redis
def test_the_quickstart_schedules_into_redis_and_a_worker_runs_it(redis_url: str) -> None:
    """examples/quickstart.py schedules; `arq cml_jobs.WorkerSettings` runs the job."""
    env = {
        "CML_JOBS_REDIS_URL": redis_url,
        "CML_JOBS_MODULES": "quickstart",
        "CML_JOBS_CONTAINER": "quickstart:Container",
        "CML_JOBS_KEY_PREFIX": "example:",
        "CML_JOBS_QUEUE": "example:queue",
        "PATH": str(Path(sys.executable).parent),
    }
    try:
        app = subprocess.run(
            [sys.executable, "-c", _APP.format(url=redis_url)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=EXAMPLES,
        )
        assert app.returncode == 0, app.stderr[-2000:]
        assert "metrics-worker-456 next run at" in app.stdout
        worker = subprocess.Popen(
            [str(Path(sys.executable).with_name("arq")), "cml_jobs.WorkerSettings"],
            cwd=EXAMPLES,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            output, _ = worker.communicate(timeout=8)
        except subprocess.TimeoutExpired:
            worker.terminate()
            output, _ = worker.communicate(timeout=15)
        assert "worker-456 is running" in output, output[-3000:]
    finally:
        with redis.Redis.from_url(redis_url) as client:
            keys = list(client.scan_iter(match="example:*"))
            if keys:
                client.delete(*keys)


# The example with its key prefix and queue set, so the test keeps to its own keys.
_APP = """
import asyncio, quickstart
from cml_jobs import BackgroundTaskScheduler
original = BackgroundTaskScheduler.configure
BackgroundTaskScheduler.configure = classmethod(
    lambda cls, **kw: original(key_prefix="example:", queue_name="example:queue", **kw))
asyncio.run(quickstart.main("{url}"))
"""


def test_the_operations_example_runs_an_extra_run_and_a_backfill() -> None:
    """examples/operations/app.py (memory://): one triggered run and four backfilled ones
    end in the history; the worker and the pause note are shown."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "operations" / "app.py")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(re.findall(r"^\d\d:\d\d succeeded \S+:\d+$", result.stdout, re.M)) == 5
    assert "workers: [(" in result.stdout and "note: account migration" in result.stdout
