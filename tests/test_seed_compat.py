"""Code written against the seed runs on cml-jobs with only the differences that
docs/guides/seed.md lists: the container by position, the seed's store settings."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from cml_jobs import BackgroundTaskScheduler, ConfigurationError
from tests.fixtures import seed_snippets

ROOT = Path(__file__).resolve().parent.parent
SNIPPETS = ROOT / "tests/fixtures/seed_snippets.py"


@pytest.fixture
async def seed_store(redis_url: str, key_prefix: str) -> AsyncIterator[dict[str, Any]]:
    """The seed's store settings, pointing at the test Redis, with this test's key prefix."""
    url = redis.asyncio.connection.parse_url(redis_url)
    yield {
        "redis_host": url["host"],
        "redis_port": url.get("port", 6379),
        "redis_db": url.get("db", 0),
        "key_prefix": key_prefix,
    }


@pytest.mark.redis
async def test_the_seeds_snippets_schedule_into_redis(seed_store: dict[str, Any]) -> None:
    """The seed's configure(builder, ...), store settings, jobs, schedule_task, monitoring
    and list_tasks run against Redis with the marked differences only."""
    jobs = await seed_snippets.main(seed_store)
    assert {job.id: job.descriptor and job.descriptor.data for job in jobs} == {
        "unique-job-id": {"worker_id": "worker-123"},
        "monitor-worker-456": {"worker_id": "worker-456"},
    }
    for job in jobs:
        assert job.descriptor is not None and job.next_run_time is not None
        assert job.descriptor.interval == timedelta(seconds=300)


def test_every_difference_from_the_seed_is_marked_and_documented() -> None:
    """Each line of the seed's code changed for cml-jobs says so, and the guide lists each
    kind of difference."""
    code = SNIPPETS.read_text().split("[start:seed]")[1].split("[end:seed]")[0]
    reasons = re.findall(r"# differs: (.*)", code)
    assert len(reasons) >= 10
    guide = (ROOT / "docs" / "guides" / "seed.md").read_text()
    for topic in ("await", "application.services", "redis_host", "HostedService", "builder"):
        assert topic in guide, topic


def test_configure_takes_the_container_by_position() -> None:
    """configure(builder, modules=[...]) as in the seed: the first argument is the container."""
    container = seed_snippets.Container()
    scheduler = BackgroundTaskScheduler.configure(container, modules=[])
    assert scheduler.settings.container is container


@pytest.mark.parametrize(
    ("store", "url"),
    [
        ({"redis_host": "redis", "redis_port": 6379, "redis_db": 1}, "redis://redis:6379/1"),
        ({"redis_host": "cache.internal"}, "redis://cache.internal:6379/0"),
        ({"redis_db": 3}, "redis://localhost:6379/3"),
    ],
)
def test_the_seeds_store_settings_become_a_redis_url(store: dict[str, Any], url: str) -> None:
    """redis_host, redis_port and redis_db map to redis_url, with Redis' defaults."""
    assert BackgroundTaskScheduler.configure(**store).settings.redis_url == url


@pytest.mark.parametrize(
    ("store", "shown"),
    [
        (
            {"redis_url": "redis://a:6379/0", "redis_host": "b"},
            ["redis_url='redis://a:6379/0'", "['redis_host']", "redis_url='redis://b:6379/0'"],
        ),
        ({"redis_port": "6379"}, ["redis_port='6379'", "whole numbers", "redis_url="]),
        (
            {"mongo_uri": "mongodb://m:27017", "mongo_db": "jobs"},
            ["no MongoDB store", "['mongo_db', 'mongo_uri']", 'redis_url="redis://'],
        ),
    ],
    ids=["both-url-and-host", "port-as-text", "mongodb"],
)
def test_store_settings_that_cannot_be_used_are_refused_saying_what_to_write(
    store: dict[str, Any], shown: list[str]
) -> None:
    """A store given twice, a port as text or a MongoDB store raise ConfigurationError
    with the redis_url to write instead."""
    with pytest.raises(ConfigurationError) as caught:
        BackgroundTaskScheduler.configure(**store)
    for text in shown:
        assert text in str(caught.value)
