"""The deployment files in examples/deploy/ (shown in docs/deployment.md) follow the
rules the guide states: the platform's grace period exceeds the drain timeout, the
liveness probe is `cml-jobs check`, and every CML_JOBS_* value is one a worker accepts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from cml_jobs._config import ENVIRONMENT, Settings

DEPLOY = Path(__file__).resolve().parent.parent / "examples" / "deploy"
MARGIN = 10  # seconds a worker needs beyond its drain timeout to release and exit


def systemd_environment(text: str) -> dict[str, str]:
    """The unit's Environment= lines, as a mapping."""
    return dict(re.findall(r"^Environment=(\w+)=(.*)$", text, flags=re.M))


def kubernetes_container() -> dict[str, Any]:
    """The worker container of the Deployment."""
    deployment = yaml.safe_load((DEPLOY / "kubernetes.yaml").read_text())
    assert deployment["kind"] == "Deployment"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def settings_of(environment: dict[str, str]) -> Settings:
    """What a worker makes of these variables (the container is not imported here)."""
    known = {name: value for name, value in environment.items() if name != "CML_JOBS_CONTAINER"}
    assert set(environment) <= set(ENVIRONMENT), set(environment) - set(ENVIRONMENT)
    return Settings.from_env(known)


def test_systemd_gives_a_stopping_worker_more_than_its_drain_timeout() -> None:
    """TimeoutStopSec exceeds CML_JOBS_DRAIN_TIMEOUT by the margin, and SIGTERM stops it."""
    unit = (DEPLOY / "cml-jobs-worker@.service").read_text()
    settings = settings_of(systemd_environment(unit))
    stop = re.search(r"^TimeoutStopSec=(\d+)$", unit, flags=re.M)
    assert stop is not None
    assert float(stop[1]) >= settings.drain_timeout.total_seconds() + MARGIN
    assert "KillSignal=SIGTERM" in unit
    assert "ExecStart=/srv/myapp/.venv/bin/arq cml_jobs.WorkerSettings" in unit


def test_compose_gives_a_stopping_worker_more_than_its_drain_timeout() -> None:
    """stop_grace_period exceeds the drain timeout; the health check is `cml-jobs check`."""
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    worker = compose["services"]["worker"]
    settings = settings_of(worker["environment"])
    grace = float(worker["stop_grace_period"].removesuffix("s"))
    assert grace >= settings.drain_timeout.total_seconds() + MARGIN
    assert worker["healthcheck"]["test"] == ["CMD", "cml-jobs", "check", "--liveness"]
    assert worker["command"] == ["arq", "cml_jobs.WorkerSettings"]
    assert "--appendonly" in compose["services"]["redis"]["command"]


def test_kubernetes_probes_liveness_with_cml_jobs_check() -> None:
    """The Deployment's liveness probe runs `cml-jobs check`, and its grace period exceeds
    the drain timeout."""
    deployment = yaml.safe_load((DEPLOY / "kubernetes.yaml").read_text())
    spec = deployment["spec"]["template"]["spec"]
    container = kubernetes_container()
    plain = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    settings = settings_of(plain)
    assert spec["terminationGracePeriodSeconds"] >= settings.drain_timeout.total_seconds() + MARGIN
    assert container["livenessProbe"]["exec"]["command"] == ["cml-jobs", "check", "--liveness"]
    secret = {item["name"] for item in container["env"] if "valueFrom" in item}
    assert secret == {"CML_JOBS_REDIS_URL", "CML_JOBS_SIGNING_KEY"}  # never in plain text


@pytest.mark.parametrize("name", ["compose.yaml", "kubernetes.yaml", "cml-jobs-worker@.service"])
def test_every_deployment_sets_lease_and_max_jobs(name: str) -> None:
    """Each file states the lease and the worker's room, the settings the guide discusses."""
    text = (DEPLOY / name).read_text()
    for variable in ("CML_JOBS_LEASE", "CML_JOBS_MAX_JOBS", "CML_JOBS_DRAIN_TIMEOUT"):
        assert variable in text
