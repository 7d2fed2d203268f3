"""``redis+sentinel://`` URLs: what they name, and the errors a wrong one gets.

The failover itself, with real Sentinels and workers, is tests/reliability/test_sentinel.py.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

import cml_jobs
from cml_jobs import ConfigurationError, Settings
from cml_jobs._redis_url import parse_sentinel_url
from cml_jobs.exceptions import StoreUnavailableError
from cml_jobs.stores.redis import open_redis_store

URL = "redis+sentinel://app:s%40cret@10.0.0.1:26380,10.0.0.2,[::1]:26381/cml-primary/3"


def test_a_sentinel_url_names_the_sentinels_the_service_the_database_and_the_credentials() -> None:
    """Hosts keep their order, a host without a port gets 26379, credentials are decoded."""
    target = parse_sentinel_url(URL)
    assert target.sentinels == (("10.0.0.1", 26380), ("10.0.0.2", 26379), ("::1", 26381))
    assert target.service_name == "cml-primary"
    assert target.db == 3
    assert (target.username, target.password) == ("app", "s@cret")
    assert "s@cret" not in repr(target)


def test_the_database_defaults_to_0_and_credentials_are_optional() -> None:
    """``.../mymaster`` is database 0 with no user and no password."""
    target = parse_sentinel_url("redis+sentinel://127.0.0.1:26379/mymaster")
    assert (target.db, target.username, target.password) == (0, None, None)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://127.0.0.1:26379", "names no Sentinel service"),
        ("redis+sentinel://127.0.0.1:26379/", "names no Sentinel service"),
        ("redis+sentinel://127.0.0.1:26379/mymaster/one", "'one'"),
        ("redis+sentinel://127.0.0.1:port/mymaster", "'127.0.0.1:port'"),
        ("redis+sentinel://127.0.0.1:70000/mymaster", "'127.0.0.1:70000'"),
        ("redis+sentinel://a:1,,b:2/mymaster", "no host"),
        ("redis+sentinel://a:1/mymaster?ssl_ca_certs=/ca.pem", "'ssl_ca_certs'"),
    ],
)
def test_a_wrong_sentinel_url_is_refused_naming_the_wrong_part(url: str, says: str) -> None:
    """Each error names the part that is wrong and shows the expected form."""
    with pytest.raises(ConfigurationError, match="redis\\+sentinel://") as raised:
        parse_sentinel_url(url)
    assert says in str(raised.value)


def test_a_worker_takes_a_sentinel_url_from_the_environment() -> None:
    """``CML_JOBS_REDIS_URL=redis+sentinel://...`` is a valid worker setting."""
    settings = Settings.from_env({"CML_JOBS_REDIS_URL": URL})
    assert settings.redis_url == URL
    assert "s%40cret" not in repr(settings)


def test_a_wrong_sentinel_url_in_the_environment_is_refused_without_its_password() -> None:
    """The error names the variable and what is wrong, with the password hidden."""
    bad = "redis+sentinel://app:s3cr3t@10.0.0.1:26379"
    with pytest.raises(ConfigurationError, match="CML_JOBS_REDIS_URL") as raised:
        Settings.from_env({"CML_JOBS_REDIS_URL": bad})
    assert "names no Sentinel service" in str(raised.value)
    assert "s3cr3t" not in str(raised.value)


def test_arq_check_asks_the_sentinels_for_the_primary() -> None:
    """The settings ``arq --check`` reads name the Sentinels and the service, never the
    password in their repr; the worker itself runs on a pool that follows failovers."""
    worker = cml_jobs.worker_settings(redis_url=URL, modules=[])
    check = worker.redis_settings  # type: ignore[attr-defined]
    assert check.sentinel is True
    assert check.sentinel_master == "cml-primary"
    assert check.host == [("10.0.0.1", 26380), ("10.0.0.2", 26379), ("::1", 26381)]
    assert (check.database, check.password) == (3, "s@cret")
    assert "s@cret" not in repr(check)
    assert worker.redis_pool.connection_pool.service_name == "cml-primary"  # type: ignore[attr-defined]


async def test_an_app_whose_sentinels_do_not_answer_gets_a_clear_error_soon() -> None:
    """With no Sentinel listening, opening the store fails within seconds with
    ``StoreUnavailableError`` naming the Sentinel service, rather than hanging."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"redis+sentinel://127.0.0.1:{port}/cml-primary/0"
    async with asyncio.timeout(20):
        with pytest.raises(StoreUnavailableError, match="Sentinel service 'cml-primary'"):
            async with open_redis_store(url):
                pass
