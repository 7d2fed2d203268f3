"""What the PostgreSQL store does beyond the store contract: its schema and migrations,
an unreachable server, wake-ups over LISTEN/NOTIFY, and writes in an app's transaction.

Each test has a schema of its own (``postgres_url``), dropped afterwards.
"""

from __future__ import annotations

import asyncio
import socket
from datetime import datetime, timedelta, timezone

import asyncpg
import pytest

from cml_jobs.exceptions import ConfigurationError, StoreUnavailableError, TaskExistsError
from cml_jobs.stores import ClaimStatus, Decision, NewTask, TransactionalStore, WakeupSource
from cml_jobs.stores.postgres import SCHEMA_VERSION, PostgresScheduleStore, open_postgres_store

pytestmark = pytest.mark.postgres

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)


def new(task_id: str = "t1", text: str = '{"v": 1}') -> NewTask:
    return NewTask(task_id, text, T0, T0)


def schema_of(url: str) -> str:
    return url.rsplit("schema=", 1)[1]


async def test_the_store_creates_its_schema_and_records_its_version(postgres_url: str) -> None:
    """Opening the store creates its tables in the URL's schema and records the version."""
    async with open_postgres_store(postgres_url) as store:
        assert store.schema == schema_of(postgres_url)
        await store.add(new(), replace=False)
    conn = await asyncpg.connect(postgres_url.split("?")[0])
    try:
        meta = f'"{store.schema}".meta'
        version = await conn.fetchval(f"SELECT value FROM {meta} WHERE name = 'schema_version'")
        assert version == str(SCHEMA_VERSION)
        assert await conn.fetchval(f'SELECT count(*) FROM "{store.schema}".tasks') == 1
    finally:
        await conn.close()


async def test_reopening_keeps_the_tasks_and_the_generation(postgres_url: str) -> None:
    """A second open (another process, a restart) migrates nothing and loses nothing."""
    async with open_postgres_store(postgres_url) as store:
        await store.add(new(), replace=False)
        first = (await store.poll(T0, 10)).generation
    async with open_postgres_store(postgres_url) as store:
        assert [s.task_id for s in await store.list()] == ["t1"]
        assert (await store.poll(T0, 10)).generation == first != ""


async def test_a_dropped_schema_is_made_again_with_a_new_generation(postgres_url: str) -> None:
    """When the store's tables vanish under a running process (a dropped schema, a restore
    from before it), the next call makes them again, and the new generation tells the
    dispatchers that the tasks stored before were lost."""
    async with open_postgres_store(postgres_url) as store:
        await store.add(new(), replace=False)
        before = (await store.poll(T0, 10)).generation
        conn = await asyncpg.connect(postgres_url.split("?")[0])
        try:
            await conn.execute(f'DROP SCHEMA "{store.schema}" CASCADE')
        finally:
            await conn.close()
        after = await store.poll(T0, 10)
        assert after.tasks == [] and after.generation not in ("", before)
        await store.add(new(), replace=False)
        assert [s.task_id for s in await store.list()] == ["t1"]


async def test_processes_opening_at_once_migrate_once(postgres_url: str) -> None:
    """Five stores opened together on a new schema all start; the schema is made once."""
    opened = [open_postgres_store(postgres_url) for _ in range(5)]
    stores = await asyncio.gather(*(o.__aenter__() for o in opened))
    try:
        generations = {(await store.poll(T0, 1)).generation for store in stores}
        assert len(generations) == 1
    finally:
        for o in opened:
            await o.__aexit__(None, None, None)


async def test_a_database_newer_than_the_code_is_refused_clearly(postgres_url: str) -> None:
    """A schema at a version this code does not know stops the store from opening."""
    async with open_postgres_store(postgres_url) as store:
        async with store._pool.acquire() as conn:  # as a newer cml-jobs would leave it
            await conn.execute(
                f"UPDATE \"{store.schema}\".meta SET value = '{SCHEMA_VERSION + 1}' "
                "WHERE name = 'schema_version'"
            )
    with pytest.raises(ConfigurationError, match="newer than this cml-jobs knows") as raised:
        async with open_postgres_store(postgres_url):
            pass
    assert f"version {SCHEMA_VERSION + 1}" in str(raised.value)
    assert "upgrade cml-jobs" in str(raised.value)


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("redis://127.0.0.1:6379/0", "not a PostgreSQL URL"),
        ("postgresql://127.0.0.1/test?schema=Bad-Name", "'Bad-Name'"),
        ("postgresql://127.0.0.1/test?schema=1st", "'1st'"),
    ],
)
async def test_a_bad_url_or_schema_is_refused_before_connecting(url: str, named: str) -> None:
    """The error names the bad value and what is expected."""
    with pytest.raises(ConfigurationError, match=named):
        async with open_postgres_store(url):
            pass


async def test_an_unreachable_server_raises_store_unavailable_for_an_app() -> None:
    """With nothing listening, opening fails fast with StoreUnavailableError, naming where."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql://app:s3cret@127.0.0.1:{port}/test"
    with pytest.raises(StoreUnavailableError, match=f"127.0.0.1:{port}/test") as raised:
        async with asyncio.timeout(30), open_postgres_store(url):
            pass
    assert "s3cret" not in str(raised.value)
    assert "store_url" in str(raised.value)


async def _notified(event: asyncio.Event, what: str) -> None:
    try:
        await asyncio.wait_for(event.wait(), 10)
    except asyncio.TimeoutError:
        raise AssertionError(f"no wake-up within 10 s: {what}") from None
    event.clear()


async def test_scheduling_in_one_process_wakes_the_dispatchers_of_another(
    postgres_url: str,
) -> None:
    """A task added, or resumed, through one store calls the wake-up of every other."""
    woken = asyncio.Event()
    async with open_postgres_store(postgres_url) as app, open_postgres_store(postgres_url) as wk:
        assert isinstance(wk, WakeupSource)
        async with wk.wakeups(woken.set):
            await _notified(woken, "the first call, on connecting")
            await app.add(new(), replace=False)
            await _notified(woken, "a task was added")
            await app.set_paused("t1", paused=True, due_at=None, ready_at=None)
            await app.set_paused("t1", paused=False, due_at=T0, ready_at=T0)
            await _notified(woken, "a task was resumed")


async def test_wakeups_survive_a_lost_connection(postgres_url: str) -> None:
    """When its connection is killed the listener connects again, calls the wake-up (it
    may have missed some), and later tasks wake it as before."""
    woken = asyncio.Event()
    async with open_postgres_store(postgres_url) as app, open_postgres_store(postgres_url) as wk:
        async with wk.wakeups(woken.set):
            await _notified(woken, "the first call, on connecting")
            async with app._pool.acquire() as conn:
                killed = await conn.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE query LIKE 'LISTEN %' AND datname = current_database() "
                    "AND pid <> pg_backend_pid()"
                    " AND query LIKE $1",
                    f"%{wk.schema}_wakeup%",
                )
            assert killed == 1
            await _notified(woken, "the call after connecting again")
            await app.add(new(), replace=False)
            await _notified(woken, "a task added after the reconnection")


async def test_within_writes_in_the_apps_transaction(postgres_store: PostgresScheduleStore) -> None:
    """A task added on the app's connection exists only once its transaction commits, and
    never when it rolls back."""
    assert isinstance(postgres_store, TransactionalStore)
    async with postgres_store._pool.acquire() as conn:
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await postgres_store.within(conn).add(new("rolled"), replace=False)
                raise RuntimeError("the app's own work failed")
        tx = conn.transaction()
        await tx.start()
        await postgres_store.within(conn).add(new("kept"), replace=False)
        assert await postgres_store.get("kept") is None  # not committed yet
        await tx.commit()
    assert [s.task_id for s in await postgres_store.list()] == ["kept"]


async def test_a_refused_write_in_the_apps_transaction_leaves_it_usable(
    postgres_store: PostgresScheduleStore,
) -> None:
    """TaskExistsError inside the app's transaction undoes only the store's write (a
    savepoint): the app may catch it and commit the rest."""
    await postgres_store.add(new("t1", '{"v": 1}'), replace=False)
    async with postgres_store._pool.acquire() as conn, conn.transaction():
        with pytest.raises(TaskExistsError):
            await postgres_store.within(conn).add(new("t1", '{"v": 2}'), replace=False)
        await postgres_store.within(conn).add(new("t2"), replace=False)
    assert [s.task_id for s in await postgres_store.list()] == ["t1", "t2"]


async def test_within_refuses_what_is_not_an_asyncpg_connection(
    postgres_store: PostgresScheduleStore,
) -> None:
    """A connection of another driver is refused, naming its type and what to pass."""
    with pytest.raises(ConfigurationError, match="'str' is not an asyncpg connection"):
        postgres_store.within("postgresql://not-a-connection")


async def test_a_connection_to_a_database_without_the_tables_is_refused_clearly(
    postgres_url: str,
) -> None:
    """A connection where the store's schema does not exist (another database) gets a
    ConfigurationError that says which connection to pass, not a driver error."""
    async with open_postgres_store(postgres_url) as store:
        elsewhere = PostgresScheduleStore(store._pool, schema="cmljobs_nowhere")
        async with store._pool.acquire() as conn, conn.transaction():
            with pytest.raises(ConfigurationError, match="no cml-jobs tables in schema"):
                await elsewhere.within(conn).add(new(), replace=False)


async def test_times_before_the_epoch_and_far_ahead_round_trip(
    postgres_store: PostgresScheduleStore,
) -> None:
    """Any aware datetime a task may be due at is stored and read back to the ms."""
    for i, at in enumerate([T0 - timedelta(days=365 * 80), T0 + timedelta(days=365 * 500)]):
        await postgres_store.add(NewTask(f"t{i}", "{}", at, at), replace=False)
        state = await postgres_store.get(f"t{i}")
        assert state is not None and state.due_at == at


async def test_concurrent_claims_from_many_processes_hand_out_each_occurrence_once(
    postgres_url: str,
) -> None:
    """Five stores (five pools, as five worker processes) claim the same 40 due tasks at
    once, each in its own order: every occurrence becomes exactly one run, the others
    race; then three reclaim the expired runs at once: each is re-issued exactly once."""
    ids = [f"t{i:02}" for i in range(40)]
    opened = [open_postgres_store(postgres_url) for _ in range(5)]
    stores = [await o.__aenter__() for o in opened]
    try:
        for task_id in ids:
            await stores[0].add(new(task_id), replace=False)
        decisions = [Decision(i, T0, T0, T0 + timedelta(minutes=1)) for i in ids]
        batches = await asyncio.gather(
            *(
                store.claim(decisions[k:] + decisions[:k], lease_until=T0 + timedelta(seconds=5))
                for k, store in zip(range(0, 40, 8), stores, strict=True)
            )
        )
        claimed = [r.task_id for batch in batches for r in batch if r.run is not None]
        assert sorted(claimed) == ids
        assert {r.status for batch in batches for r in batch} <= {
            ClaimStatus.CLAIMED,
            ClaimStatus.RACED,
        }
        later = T0 + timedelta(seconds=10)
        reissued = await asyncio.gather(
            *(s.reclaim_expired(now=later, lease_until=later, limit=40) for s in stores[:3])
        )
        again = [c.run.task_id for batch in reissued for c in batch]
        assert sorted(again) == ids
        assert all(c.run.attempt == 2 for batch in reissued for c in batch)
    finally:
        for o in opened:
            await o.__aexit__(None, None, None)
