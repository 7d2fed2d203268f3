"""Security beside the reliability scenarios: TLS, passwords and the minimal Redis ACL.

- A ``rediss://`` URL verifies the server's certificate *and hostname* by default; the
  URL's query can relax it. Proven on settings, and against a TLS ``redis-server`` of the
  test's own (a throw-away CA made with ``openssl``).
- No password appears in a worker's log, in an error message or in a repr: a worker
  process, an app and a store are pointed at a Redis with an ACL user and a password,
  right and wrong, up and down, and their output is searched for the password.
- A worker process and an app run a 1 s task once per occurrence under exactly the ACL
  line ``docs/security.md`` documents, with no command or key denied.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from arq.connections import create_pool

from cml_jobs import (
    BackgroundTaskScheduler,
    RecurrentTaskDescriptor,
    ScheduledTaskDescriptor,
    worker_settings,
)
from cml_jobs._config import Settings
from cml_jobs._timing import to_ms
from cml_jobs.exceptions import ConfigurationError, StoreAccessError, StoreUnavailableError
from cml_jobs.stores.redis import RedisScheduleStore, redis_client, tls_options
from cml_jobs.worker._arq import redis_settings
from tests.reliability.conftest import (
    INTERVAL_MS,
    RedisServer,
    _free_port,
    needs_redis_server,
    per_occurrence,
    stay_alive,
    unavailable,
)
from tests.workers import WorkerFleet

pytestmark = [pytest.mark.reliability, pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cret-Pa55"
USER = "cml-worker"

#: The minimal ACL of a cml-jobs worker (and app) with the default key prefix and queue,
#: exactly as docs/security.md gives it.
MINIMAL_ACL = (
    "resetkeys resetchannels -@all "
    "+ping +select +info +dbsize "
    "+evalsha +script|load "
    "+get +set +psetex +del +exists +expire +incr +incrby "
    "+hget +hgetall +hmget +hset +hdel +hexists +hincrby +hkeys +type "
    "+zadd +zrem +zrange +zrangebyscore +zscore +zcard "
    "+lpush +ltrim +lrange +pexpire +persist "
    "+scan +xadd +watch +unwatch +multi +exec +discard "
    "~cml:* ~cml_jobs:* ~arq:job:cml:* ~arq:in-progress:cml:* ~arq:retry:cml:* "
    "~arq:result:cml:* ~arq:abort"
)
#: Commands the worker tries but does without: redis-py's CLIENT SETINFO on connect
#: (Redis >= 7.2; errors ignored).
OPTIONAL_COMMANDS = {"client|setinfo"}

#: What OpenSSL says when the certificate does not name the host connected to.
MISMATCH = "mismatch|doesn't match|not valid for"


@pytest.fixture
def openssl() -> None:
    """``openssl`` on PATH, to make a throw-away CA."""
    if shutil.which("openssl") is None:
        unavailable("needs openssl on PATH (apt-get install openssl)")


needs_openssl = pytest.mark.usefixtures("openssl")


def _url(port: int, password: str = SECRET, user: str = USER) -> str:
    return f"redis://{user}:{password}@127.0.0.1:{port}/0"


async def _acl_user(admin: aioredis.Redis, rules: str, password: str = SECRET) -> None:
    await admin.execute_command(
        "ACL", "SETUSER", USER, "reset", "on", f">{password}", *rules.split()
    )
    await admin.execute_command("ACL", "LOG", "RESET")


async def _denials(admin: aioredis.Redis) -> list[dict[str, Any]]:
    entries = await admin.execute_command("ACL", "LOG")
    found = []
    for entry in entries:
        fields = (
            entry if isinstance(entry, dict) else dict(zip(entry[::2], entry[1::2], strict=True))
        )
        found.append({_text(k): _text(v) for k, v in fields.items()})
    return found


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _app(url: str) -> BackgroundTaskScheduler:
    return BackgroundTaskScheduler.configure(
        redis_url=url,
        modules=["tests.fixtures.recording"],
        key_prefix="cml:",
        queue_name="cml_jobs:queue",
    )


def _fleet(url: str, record_url: str, **settings: str) -> WorkerFleet:
    """Workers with the default key prefix and queue, so the ACL is the documented one;
    the jobs record their runs through ``record_url`` (the admin user)."""
    return WorkerFleet(
        redis_url=url,
        prefix="cml:",
        settings={
            "CML_JOBS_QUEUE": "cml_jobs:queue",
            "CML_JOBS_TEST_RECORD_URL": record_url,
            **settings,
        },
    )


async def _wait_records(workers: WorkerFleet, admin: aioredis.Redis, task: str, count: int) -> None:
    async def enough() -> bool:
        return len(per_occurrence(await workers.records(admin), task)) >= count

    await workers.until(enough, f"{count} occurrences of {task!r} ran")


# -- TLS: settings ------------------------------------------------------------------------


def test_rediss_url_verifies_certificate_and_hostname_by_default() -> None:
    settings = redis_settings("rediss://cache.internal:6380/0")
    assert settings.ssl is True
    assert settings.ssl_check_hostname is True  # arq's own default is False
    assert settings.ssl_cert_reqs == "required"
    assert tls_options("rediss://cache.internal:6380/0") == {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
    }


@pytest.mark.parametrize(
    ("query", "cert_reqs", "check_hostname"),
    [
        ("ssl_cert_reqs=none", "none", False),
        ("ssl_check_hostname=false", "required", False),
        ("ssl_cert_reqs=optional", "optional", True),
        ("ssl_cert_reqs=required&ssl_check_hostname=true", "required", True),
    ],
)
def test_the_url_query_can_relax_tls_verification(
    query: str, cert_reqs: str, check_hostname: bool
) -> None:
    settings = redis_settings(f"rediss://cache.internal:6380/0?{query}")
    assert (settings.ssl_cert_reqs, settings.ssl_check_hostname) == (cert_reqs, check_hostname)
    assert tls_options(f"rediss://cache.internal:6380/0?{query}") == {
        "ssl_cert_reqs": cert_reqs,
        "ssl_check_hostname": check_hostname,
    }


def test_the_url_query_names_ca_and_client_certificate() -> None:
    settings = redis_settings(
        "rediss://h:6380/3?ssl_ca_certs=/etc/ca.pem&ssl_certfile=/etc/c.pem&ssl_keyfile=/etc/c.key"
    )
    assert (settings.ssl_ca_certs, settings.ssl_certfile, settings.ssl_keyfile) == (
        "/etc/ca.pem",
        "/etc/c.pem",
        "/etc/c.key",
    )
    assert settings.database == 3
    assert settings.ssl_check_hostname is True


@pytest.mark.parametrize(
    "url",
    [
        f"redis://u:{SECRET}@h:6379/0?ssl_cert_reqs=required",  # TLS options without TLS
        f"rediss://u:{SECRET}@h:6380/0?ssl_cert_reqs=maybe",
        f"rediss://u:{SECRET}@h:6380/0?ssl_cert_reqs=none&ssl_check_hostname=true",
    ],
)
def test_bad_tls_options_are_refused_without_showing_the_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        redis_settings(url)
    assert SECRET not in str(raised.value)


def test_plain_redis_url_has_no_tls() -> None:
    settings = redis_settings("redis://h:6379/0")
    assert settings.ssl is False
    assert tls_options("redis://h:6379/0") == {}


def test_percent_encoded_credentials_are_decoded() -> None:
    """A password with ``@ : /`` must be percent-encoded in a URL; arq sends it as written."""
    settings = redis_settings("redis://us%40er:p%40ss%3A%2Fword@h:6379/0")
    assert (settings.username, settings.password) == ("us@er", "p@ss:/word")


# -- No password in a repr ----------------------------------------------------------------


def test_redis_settings_repr_hides_the_password() -> None:
    settings = redis_settings(f"rediss://{USER}:{SECRET}@h:6380/0")
    assert settings.password == SECRET
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)
    assert "password=***" in repr(settings)


def test_worker_settings_class_attributes_show_no_password() -> None:
    cls = worker_settings(redis_url=f"redis://{USER}:{SECRET}@h:6379/0")
    shown = {
        name: repr(value)
        for name, value in vars(cls).items()
        if not name.startswith("__") and name != "cml_jobs_settings"
    }
    assert shown["redis_settings"].startswith("RedisSettings(")
    leaking = [name for name, text in shown.items() if SECRET in text]
    assert leaking == []


def test_settings_repr_shows_no_password() -> None:
    """The settings a worker is built from print the Redis URL without its password."""
    cls = worker_settings(redis_url=f"redis://{USER}:{SECRET}@h:6379/0")
    assert SECRET not in repr(cls.cml_jobs_settings)  # type: ignore[attr-defined]


# -- No password in errors and logs -------------------------------------------------------


async def test_store_unavailable_error_shows_no_password() -> None:
    port = _free_port()  # nothing listens there
    client = aioredis.Redis.from_url(_url(port), socket_connect_timeout=0.5)
    try:
        with pytest.raises(StoreUnavailableError) as raised:
            await RedisScheduleStore(client, prefix="cml:").get("any")
    finally:
        await client.aclose()
    message = str(raised.value)
    assert f"127.0.0.1:{port}/0" in message and SECRET not in message


#: What Redis may refuse a worker, and the ACL rules that make it refuse: a wrong password,
#: keys outside the user's patterns, a command missing from its rules (met at start-up: the
#: poll script, the worker registry; or only once a task is due: the claim).
REFUSALS: dict[str, tuple[str, str, str]] = {  # case -> (rules, password given, command)
    "wrong password": (MINIMAL_ACL, "n0t-The-Pa55", "AUTH"),
    "no key access": (MINIMAL_ACL.replace("~cml:*", "~other:*"), SECRET, "EVALSHA (poll)"),
    "no evalsha": (MINIMAL_ACL.replace("+evalsha", ""), SECRET, "EVALSHA (poll)"),
    "no hset": (MINIMAL_ACL.replace("+hset ", ""), SECRET, "HSET (the worker registry)"),
    "no zadd": (MINIMAL_ACL.replace("+zadd ", ""), SECRET, "EVALSHA (claim)"),
}


@needs_redis_server
@pytest.mark.parametrize("case", sorted(REFUSALS))
async def test_a_worker_that_redis_refuses_exits_at_once_naming_user_and_command(
    server_factory: Any, client_factory: Any, case: str
) -> None:
    """Refusals are not transient: the worker exits non-zero within 10 s of its start, with
    a message naming the user and the refused command, and no retry loop; an app is told
    the same with StoreAccessError. The password shows in no output."""
    rules, password, command = REFUSALS[case]
    server: RedisServer = server_factory()
    await server.start()
    admin = client_factory(server.url)
    await _acl_user(admin, rules)
    if case == "no zadd":  # a task due at once: the claim is what the user may not do
        await _schedule_as_admin(server.url)
    workers = _fleet(_url(server.port, password=password), server.url)
    [process] = workers.start()
    started = time.monotonic()
    try:
        code = await asyncio.to_thread(process.wait, 30)
        took = time.monotonic() - started
        stderr = workers.stderr(process)
    finally:
        workers.stop(timeout=20)
    with pytest.raises(StoreAccessError) as raised:
        async with _app(_url(server.port, password=password)) as app:
            await app.bus.schedule_task(
                RecurrentTaskDescriptor(id="x", name="RecordingJob", interval=1)
            )
    print(f"{case}: exit {code} after {took:.1f} s; last line: {stderr.splitlines()[-1][:160]}")
    assert code not in (0, None) and took < 10, (code, took, stderr[-2000:])
    refused = [line for line in stderr.splitlines() if "CRITICAL" in line]
    assert len(refused) == 1, stderr[-3000:]
    assert f"user {USER!r}" in refused[0] and command in refused[0], refused[0]
    assert "retries remaining" not in stderr and "retrying in" not in stderr, stderr[-2000:]
    assert f"user {USER!r}" in str(raised.value)
    assert password not in stderr and password not in str(raised.value)


async def _schedule_as_admin(url: str) -> None:
    async with _app(url) as app:
        await app.bus.schedule_task(
            RecurrentTaskDescriptor(id="due", name="RecordingJob", interval=1)
        )


@pytest.mark.parametrize("query", ["password=hunter2", "username=cml&password=hunter2"])
def test_credentials_in_the_url_query_are_refused_everywhere_without_showing_them(
    query: str,
) -> None:
    """``?password=`` would be read by the app's redis-py and ignored by arq: it is refused,
    by the settings, the worker's settings, every connection and cml-jobs check, with a
    message that shows no password."""
    url = f"redis://127.0.0.1:6379/0?{query}"
    attempts = {
        "Settings": lambda: Settings(redis_url=url),
        "worker_settings": lambda: worker_settings(redis_url=url),
        "redis_settings": lambda: redis_settings(url),
        "redis_client": lambda: redis_client(url, patient=False),
    }
    for name, attempt in attempts.items():
        with pytest.raises(ConfigurationError, match="query") as raised:
            attempt()
        assert "hunter2" not in str(raised.value), name
    check = subprocess.run(
        [str(Path(sys.executable).with_name("cml-jobs")), "check", "--redis-url", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 1 and "query" in check.stderr, check.stdout + check.stderr
    assert "hunter2" not in check.stdout + check.stderr


def test_a_password_with_an_unencoded_at_sign_never_shows() -> None:
    """``redis://user:p@ss@host``: no part of the password shows in the settings' repr."""
    shown = repr(Settings(redis_url="redis://cml:tail-p@ss-word@h:6379/0"))
    assert "tail" not in shown and "ss-word" not in shown and "cml:***@h:6379/0" in shown


@needs_redis_server
@pytest.mark.parametrize("dispatch", ["local", "queue"])
async def test_worker_runs_once_per_occurrence_under_the_minimal_acl(
    server_factory: Any, client_factory: Any, dispatch: str
) -> None:
    """Two workers and an app, all as an ACL user with exactly the documented rules: a 1 s
    task runs once per occurrence, a one-time task once, no command or key is denied, and
    no log line — also while Redis is down — shows the password."""
    assert MINIMAL_ACL in " ".join((ROOT / "docs" / "security.md").read_text().split())
    server: RedisServer = server_factory()
    await server.start()
    admin = client_factory(server.url)
    await _acl_user(admin, MINIMAL_ACL)
    url = _url(server.port)
    workers = _fleet(url, server.url, CML_JOBS_DISPATCH=dispatch)
    workers.start(2)
    try:
        await workers.wait_ready(admin)
        async with _app(url) as app:
            info = await app.bus.schedule_task(
                RecurrentTaskDescriptor(id="tick", name="RecordingJob", interval=1)
            )
            first = to_ms(info.next_run_time)  # type: ignore[arg-type]
            at = datetime.now(timezone.utc) + timedelta(seconds=1)
            await app.bus.schedule_task(
                ScheduledTaskDescriptor(id="once", name="RecordingOnceJob", scheduled_at=at)
            )
            await _wait_records(workers, admin, "tick", 4)
            await _wait_records(workers, admin, "once", 1)
            assert {task.id for task in await app.list_tasks()} >= {"tick"}
            await app.bus.cancel_task("tick")
        # No condition marks "every command after the cancel has been tried": this is the
        # time in which a denial would show; none may.
        await stay_alive(workers, 0.5)
        records = await workers.records(admin)
        denied = await _denials(admin)
        if dispatch == "local":  # Redis goes away: the workers warn, without the password
            before = {p.pid: len(workers.stderr(p)) for p in workers.processes}
            server.kill()

            async def all_warned() -> bool:
                logs = [workers.stderr(p)[before[p.pid] :] for p in workers.processes]
                return all("Connection refused" in log or "unavailable" in log for log in logs)

            await workers.until(all_warned, "every worker logged that Redis is unavailable")
        stderr = "".join(workers.stderr(process) for process in workers.processes)
    finally:
        # A worker waits for Redis for as long as it takes, on SIGTERM too: with Redis
        # gone, only SIGKILL ends it.
        workers.stop(signal.SIGKILL if dispatch == "local" else signal.SIGTERM, timeout=20)

    runs = per_occurrence(records, "tick")
    assert set(runs.values()) == {1}, f"duplicates: {[o for o, n in runs.items() if n > 1]}"
    assert sorted(runs) == list(range(first, max(runs) + 1, INTERVAL_MS)), "missing occurrence"
    assert per_occurrence(records, "once") and set(per_occurrence(records, "once").values()) == {1}
    unexpected = [d for d in denied if d.get("object") not in OPTIONAL_COMMANDS]
    assert unexpected == [], f"denied under the minimal ACL: {unexpected}"
    assert "NOPERM" not in stderr and "no permissions" not in stderr, stderr[-3000:]
    assert SECRET not in stderr


# -- TLS: a real TLS redis-server ---------------------------------------------------------


class TlsRedisServer(RedisServer):
    """A ``redis-server`` that speaks only TLS, with a certificate for ``localhost`` only."""

    def __init__(self, port: int, certs: Path) -> None:
        super().__init__(port)
        self.certs = certs

    @property
    def url(self) -> str:  # the admin (default user) URL
        return f"rediss://localhost:{self.port}/0?ssl_ca_certs={self.certs / 'ca.pem'}"

    def _args(self) -> list[str]:
        return [
            "redis-server", "--port", "0", "--tls-port", str(self.port),
            "--bind", "127.0.0.1",
            "--tls-cert-file", str(self.certs / "server.pem"),
            "--tls-key-file", str(self.certs / "server.key"),
            "--tls-ca-cert-file", str(self.certs / "ca.pem"),
            "--tls-auth-clients", "no",
            "--save", "", "--appendonly", "no",
        ]  # fmt: skip


def _make_certs(where: Path) -> None:
    """A throw-away CA and a server certificate for DNS:localhost (not for 127.0.0.1)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=where, check=True, capture_output=True)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=cml-jobs test CA")  # fmt: skip
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (where / "san.cnf").write_text("subjectAltName=DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2",
            "-extfile", "san.cnf")  # fmt: skip


@pytest.fixture
async def tls_server(
    redis_server_binary: tuple[int, ...], openssl: None, tmp_path: Path
) -> AsyncIterator[TlsRedisServer]:
    """A TLS-only ``redis-server`` (>= 6, built with TLS, as Debian's is)."""
    _make_certs(tmp_path)
    server = TlsRedisServer(_free_port(), tmp_path)
    try:
        await server.start()
    except AssertionError as exc:
        server.close()
        unavailable(f"this redis-server does not speak TLS (built without it?): {exc}")
    yield server
    server.close()


@needs_openssl
async def test_tls_verifies_the_hostname_against_a_real_server(tls_server: TlsRedisServer) -> None:
    """The certificate names ``localhost``: reaching the same server as ``127.0.0.1`` is
    refused by default, and allowed only when the URL relaxes the check."""
    ca = tls_server.certs / "ca.pem"
    port = tls_server.port

    async def ping(url: str) -> bool:
        settings = redis_settings(url)
        settings.conn_retries = 0  # one attempt: no retries, no waiting for a fix
        settings.retry, settings.retry_on_error = None, None
        pool = await create_pool(settings)
        try:
            return bool(await pool.ping())
        finally:
            await pool.aclose()

    assert await ping(f"rediss://localhost:{port}/0?ssl_ca_certs={ca}")
    with pytest.raises(Exception, match=MISMATCH):
        await ping(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}")
    assert await ping(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}&ssl_check_hostname=false")
    with pytest.raises(Exception, match="certificate verify failed"):
        await ping(f"rediss://localhost:{port}/0")  # the system CAs do not know the test CA
    assert await ping(f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=none")

    # tls_options gives a plain redis-py client the same defaults.
    mismatch = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}"
    client = aioredis.Redis.from_url(mismatch, retry_on_error=[], **tls_options(mismatch))
    try:
        with pytest.raises(Exception, match=MISMATCH):
            await client.ping()
    finally:
        await client.aclose()


@needs_openssl
async def test_worker_runs_over_tls_with_acl_and_refuses_a_wrong_hostname(
    tls_server: TlsRedisServer,
) -> None:
    """A worker with ``rediss://user:password@localhost`` runs a 1 s task once per
    occurrence; a worker given ``127.0.0.1`` (not in the certificate) connects to nothing
    and says why. Neither prints the password."""
    admin = aioredis.Redis.from_url(tls_server.url)
    ca = tls_server.certs / "ca.pem"
    port = tls_server.port
    good = _fleet(f"rediss://{USER}:{SECRET}@localhost:{port}/0?ssl_ca_certs={ca}", tls_server.url)
    bad = _fleet(f"rediss://{USER}:{SECRET}@127.0.0.1:{port}/0?ssl_ca_certs={ca}", tls_server.url)
    try:
        await _acl_user(admin, MINIMAL_ACL)
        good.start()
        bad.start()
        await good.wait_ready(admin)
        async with _app(f"rediss://{USER}:{SECRET}@localhost:{port}/0?ssl_ca_certs={ca}") as app:
            await app.bus.schedule_task(
                RecurrentTaskDescriptor(id="tls", name="RecordingJob", interval=1)
            )
            await _wait_records(good, admin, "tls", 2)
            await app.bus.cancel_task("tls")

        async def bad_says_why() -> str | None:
            log = bad.stderr(bad.processes[0])
            return log if re.search(MISMATCH, log) else None

        stderr_bad = await bad.until(bad_says_why, "the wrong-hostname worker logged why")
        good_pid = good.processes[0].pid
        records = await good.records(admin)
        stderr_good = good.stderr(good.processes[0])
    finally:
        good.stop(timeout=20)
        bad.stop(timeout=20)
        await admin.aclose()
    runs = per_occurrence(records, "tls")
    assert set(runs.values()) == {1}
    assert {record["pid"] for record in records} == {good_pid}
    assert SECRET not in stderr_good and SECRET not in stderr_bad
