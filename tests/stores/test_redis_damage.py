"""Every Redis store script against every wrong type it can meet (data written around
cml-jobs): a damaged shared key stops the script before its first write, with an error
naming the key; a damaged task is parked whole or left as it was, and never keeps the
script from doing its work for the other tasks. "No partial write" is checked on a dump
of every key under the test's prefix.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis.asyncio
from tests.stores.test_contract import LEASE, MINUTE, PLAIN, SEC, T0, decision

from cml_jobs.exceptions import StoreError
from cml_jobs.stores import ClaimStatus, Finish, Outcome, Run, RunRecord
from cml_jobs.stores.redis import RedisScheduleStore

pytestmark = pytest.mark.redis

Store = RedisScheduleStore
Client = redis.asyncio.Redis


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


async def dump(client: Client, prefix: str) -> dict[str, Any]:
    """Every key under ``prefix``, as its type and contents."""
    found: dict[str, Any] = {}
    async for raw in client.scan_iter(match=f"{prefix}*"):
        found[raw.decode()] = await _contents(client, raw.decode())
    return found


async def _contents(client: Client, key: str) -> tuple[str, Any]:
    kind = (await client.type(key)).decode()
    read: dict[str, Callable[[], Awaitable[Any]]] = {
        "string": lambda: client.get(key),
        "hash": lambda: client.hgetall(key),
        "list": lambda: client.lrange(key, 0, -1),
        "set": lambda: client.smembers(key),
        "zset": lambda: client.zrange(key, 0, -1, withscores=True),
        "stream": lambda: client.xrange(key),
    }
    return kind, await read[kind]()


async def _healthy(store: Store) -> Run:
    """Tasks "a" (claimed once: a run under way, lease ended at T0 + LEASE) and "c" (due)."""
    for task_id in "ac":
        await store.add(PLAIN.new(task_id), replace=False)
    [result] = await store.claim([decision("a")], lease_until=T0 + LEASE)
    assert result.run is not None
    return result.run


# -- the shared keys -------------------------------------------------------------------

SHARED_DAMAGE: dict[str, tuple[str, Callable[[Client, str], Awaitable[Any]]]] = {
    "due is a string": ("due", lambda c, p: c.set(f"{p}due", "x")),
    "runs is a hash": ("runs", lambda c, p: c.hset(f"{p}runs", "f", "v")),
    "fence is not a number": ("fence", lambda c, p: c.set(f"{p}fence", "many")),
    "fence is a list": ("fence", lambda c, p: c.rpush(f"{p}fence", "1")),
    "generation is a set": ("generation", lambda c, p: c.sadd(f"{p}generation", "g")),
}


def _calls(run: Run) -> dict[str, Callable[[Store], Awaitable[Any]]]:
    """One call of each writing script (the operations' ones too)."""
    return {
        "add": lambda s: s.add(PLAIN.new("d", version=2), replace=True),
        "remove": lambda s: s.remove("c"),
        "set_paused": lambda s: s.set_paused("c", paused=True, due_at=None, ready_at=None),
        "poll": lambda s: s.poll(T0, 10),
        "claim": lambda s: s.claim([decision("c")], lease_until=T0 + LEASE),
        "reclaim": lambda s: s.reclaim_expired(now=T0 + LEASE, lease_until=T0 + MINUTE, limit=9),
        "extend": lambda s: s.extend([run], lease_until=T0 + MINUTE),
        "finish": lambda s: s.finish([Finish(run, Outcome.SUCCEEDED)]),
        "add_runs": lambda s: s.add_runs("c", [T0], max_instances=1, now=T0),
        "unpark": lambda s: s.unpark("c", due_at=T0, ready_at=T0),
        "update": lambda s: s.update("c", PLAIN.text("c", 2), due_at=T0, ready_at=T0),
        "set_note": lambda s: s.set_note("c", "a note"),
        "record": lambda s: s.record([RunRecord("c", T0, Outcome.MISSED, T0)]),
    }


@pytest.mark.parametrize("damage", sorted(SHARED_DAMAGE))
@pytest.mark.parametrize("script", sorted(_calls(Run("a", 1, T0))))
async def test_a_damaged_shared_key_stops_every_script_before_its_first_write(
    redis_client: Client, key_prefix: str, script: str, damage: str
) -> None:
    """StoreError naming the key and what it holds; every key exactly as it was."""
    store = RedisScheduleStore(redis_client, prefix=key_prefix)
    run = await _healthy(store)
    await store.poll(T0, 10)  # the generation exists
    name, spoil = SHARED_DAMAGE[damage]
    await redis_client.delete(f"{key_prefix}{name}")
    await spoil(redis_client, key_prefix)
    before = await dump(redis_client, key_prefix)
    with pytest.raises(StoreError, match=f"{key_prefix}{name}") as raised:
        await _calls(run)[script](store)
    assert "damaged" in str(raised.value) and "backup" in str(raised.value)
    assert await dump(redis_client, key_prefix) == before


# -- a task key that holds no hash -------------------------------------------------------

NOT_A_HASH: dict[str, Callable[[Client, str], Awaitable[Any]]] = {
    "string": lambda c, k: c.set(k, "x"),
    "list": lambda c, k: c.rpush(k, "x"),
    "set": lambda c, k: c.sadd(k, "x"),
    "zset": lambda c, k: c.zadd(k, {"x": 1}),
    "stream": lambda c, k: c.xadd(k, {"x": "y"}),
}


@pytest.mark.parametrize("kind", sorted(NOT_A_HASH))
async def test_a_task_key_of_another_type_is_no_task_to_any_script(
    redis_client: Client, key_prefix: str, kind: str
) -> None:
    """Task "b" holds a {kind}, listed as due and with a lease: poll drops it and names
    it once; claim says GONE for it alone; reclaim drops its lease; extend and finish
    refuse its run; pause finds no task; get is None; the key itself is never changed."""
    store = RedisScheduleStore(redis_client, prefix=key_prefix)
    run = await _healthy(store)
    key = f"{key_prefix}task:b"
    await NOT_A_HASH[kind](redis_client, key)
    await redis_client.zadd(f"{key_prefix}due", {"b": _ms(T0)})
    await redis_client.zadd(f"{key_prefix}runs", {f"{9:016d}|b": _ms(T0)})
    kept = (await dump(redis_client, key_prefix))[key]
    stranger = Run("b", 9, T0)

    polled = await store.poll(T0, 10)
    assert ([t.task_id for t in polled.tasks], polled.unreadable) == (["c"], ("b",))
    assert (await store.poll(T0, 10)).unreadable == ()  # reported once
    results = await store.claim([decision("b"), decision("c")], lease_until=T0 + LEASE)
    assert [r.status for r in results] == [ClaimStatus.GONE, ClaimStatus.CLAIMED]
    reissued = await store.reclaim_expired(now=T0 + LEASE, lease_until=T0 + MINUTE, limit=9)
    assert sorted(r.run.task_id for r in reissued) == ["a", "c"]
    assert await redis_client.zscore(f"{key_prefix}runs", f"{9:016d}|b") is None
    assert await store.extend([stranger, run], lease_until=T0 + MINUTE) == [False, False]
    assert await store.finish([Finish(stranger, Outcome.SUCCEEDED)]) == [False]
    assert not await store.set_paused("b", paused=True, due_at=None, ready_at=None)
    assert await store.get("b") is None
    assert [s.task_id for s in await store.list()] == ["a", "c"]
    assert (await dump(redis_client, key_prefix))[key] == kept


# -- a task hash whose fields cannot be used ---------------------------------------------


async def parked_whole(client: Client, prefix: str, task_id: str, *words: str) -> str:
    """Assert the task is parked with every trace of a run gone; return the reason."""
    stored = await client.hgetall(f"{prefix}task:{task_id}")
    fields = {k.decode(): v.decode() for k, v in stored.items()}
    leases = [m.decode() for m in await client.zrange(f"{prefix}runs", 0, -1)]
    assert "parked" in fields, fields
    assert all(word in fields["parked"] for word in words), fields["parked"]
    assert fields["running"] == "0" and fields["last_outcome"] == "parked"
    assert [f for f in fields if f.startswith("r:")] == []
    assert [m for m in leases if m.endswith(f"|{task_id}")] == []
    assert await client.zscore(f"{prefix}due", task_id) is None
    return fields["parked"]


@pytest.mark.parametrize("value", ["soon", "inf", "nan", "1e400", "12.5", ""])
async def test_poll_parks_a_task_whose_due_at_is_no_whole_number(
    redis_client: Client, key_prefix: str, value: str
) -> None:
    """due_at = {value!r}: parked with the value in its reason; the others are returned."""
    store = RedisScheduleStore(redis_client, prefix=key_prefix)
    for task_id in "abc":
        await store.add(PLAIN.new(task_id), replace=False)
    await redis_client.hset(f"{key_prefix}task:b", "due_at", value)
    polled = await store.poll(T0, 10)
    assert [t.task_id for t in polled.tasks] == ["a", "c"]
    await parked_whole(redis_client, key_prefix, "b", "due_at", value)


@pytest.mark.parametrize("field", ["running", "n:skipped", "n:missed"])
@pytest.mark.parametrize("value", ["lots", "1.5", "inf", "-"])
async def test_claim_parks_a_task_whose_counts_are_no_whole_numbers(
    redis_client: Client, key_prefix: str, field: str, value: str
) -> None:
    """{field} = {value!r}: that task is parked whole, with the field in its reason; the
    rest of the batch is claimed."""
    store = RedisScheduleStore(redis_client, prefix=key_prefix)
    for task_id in "abc":
        await store.add(PLAIN.new(task_id), replace=False)
    await redis_client.hset(f"{key_prefix}task:b", field, value)
    results = await store.claim([decision(t) for t in "abc"], lease_until=T0 + LEASE)
    assert [r.status for r in results] == [
        ClaimStatus.CLAIMED,
        ClaimStatus.PARKED,
        ClaimStatus.CLAIMED,
    ]
    reason = await parked_whole(redis_client, key_prefix, "b", field)
    assert results[1].reason == reason


@pytest.mark.parametrize("field", ["running", "n:succeeded"])
async def test_finish_parks_a_task_whose_counts_are_no_whole_numbers(
    redis_client: Client, key_prefix: str, field: str
) -> None:
    """{field} = "lots" when a run of the task finishes: the task is parked whole (its run
    released), and the other finish of the batch is recorded."""
    store = RedisScheduleStore(redis_client, prefix=key_prefix)
    for task_id in "ab":
        await store.add(PLAIN.new(task_id), replace=False)
    results = await store.claim([decision("a"), decision("b")], lease_until=T0 + LEASE)
    runs = [r.run for r in results if r.run is not None]
    await redis_client.hset(f"{key_prefix}task:b", field, "lots")
    assert await store.finish([Finish(run, Outcome.SUCCEEDED) for run in runs]) == [True, True]
    await parked_whole(redis_client, key_prefix, "b", field, "lots")
    state = await store.get("a")
    assert state is not None and state.counts == {"succeeded": 1}


@pytest.mark.parametrize("value", ["soon|1", "garbage", "inf|2", "|"])
async def test_reclaim_parks_a_task_whose_run_cannot_be_read(
    redis_client: Client, key_prefix: str, value: str
) -> None:
    """A run field of "b" rewritten to {value!r}: when its lease ends, "b" is parked whole
    instead of re-issued with a time that is no time; "a" is re-issued."""
    store = RedisScheduleStore(redis_client, prefix=key_prefix)
    for task_id in "ab":
        await store.add(PLAIN.new(task_id), replace=False)
    results = await store.claim([decision("a"), decision("b")], lease_until=T0 + LEASE)
    run_b = results[1].run
    assert run_b is not None
    await redis_client.hset(f"{key_prefix}task:b", f"r:{run_b.fence}", value)
    reissued = await store.reclaim_expired(now=T0 + LEASE, lease_until=T0 + MINUTE, limit=9)
    assert [r.run.task_id for r in reissued] == ["a"]
    await parked_whole(redis_client, key_prefix, "b", "stored run", value)


async def test_a_run_field_without_a_fence_never_breaks_remove_replace_or_park(
    redis_client: Client, key_prefix: str
) -> None:
    """A field "r:abc" (no fence) on tasks: replacing, parking and removing them work."""
    store = RedisScheduleStore(redis_client, prefix=key_prefix)
    for task_id in "abc":
        await store.add(PLAIN.new(task_id), replace=False)
        await redis_client.hset(f"{key_prefix}task:{task_id}", "r:abc", f"{_ms(T0)}|1")
    assert await store.add(PLAIN.new("a", version=2), replace=True) is True
    await redis_client.hset(f"{key_prefix}task:b", "due_at", "soon")
    assert [t.task_id for t in (await store.poll(T0, 10)).tasks] == ["a", "c"]
    await parked_whole(redis_client, key_prefix, "b", "due_at")
    assert await store.remove("c") == 1
    assert await store.get("c") is None


async def test_a_lease_score_of_infinity_does_not_break_poll(
    redis_client: Client, key_prefix: str
) -> None:
    """A due index score set to +inf reads as the latest time there is."""
    store = RedisScheduleStore(redis_client, prefix=key_prefix)
    await store.add(PLAIN.new("a"), replace=False)
    await redis_client.zadd(f"{key_prefix}due", {"a": float("inf")})
    polled = await store.poll(T0, 10)
    assert polled.tasks == [] and polled.next_ready_at is not None
    assert polled.next_ready_at - T0 > timedelta(days=365 * 7000)


async def test_a_parked_finish_keeps_its_own_reason_over_a_damaged_count(
    redis_client: Client, key_prefix: str
) -> None:
    """n:parked = "lots" when a run finishes as parked: the task is parked with the run's
    reason, not the count's."""
    store = RedisScheduleStore(redis_client, prefix=key_prefix)
    await store.add(PLAIN.new("a"), replace=False)
    [result] = await store.claim([decision("a")], lease_until=T0 + LEASE)
    assert result.run is not None
    await redis_client.hset(f"{key_prefix}task:a", "n:parked", "lots")
    finished = Finish(result.run, Outcome.PARKED, "job class removed")
    assert await store.finish([finished]) == [True]
    assert await parked_whole(redis_client, key_prefix, "a") == "job class removed"


async def test_a_history_key_of_another_type_keeps_no_row_and_breaks_nothing(
    redis_client: Client, key_prefix: str
) -> None:
    """A task's history key holding a STRING: its run finishes and is counted (no row, the
    STRING untouched); a batch of history rows for it and another task keeps the other's."""
    store = RedisScheduleStore(redis_client, prefix=key_prefix)
    for task_id in "ab":
        await store.add(PLAIN.new(task_id), replace=False)
    await redis_client.set(f"{key_prefix}history:a", "not a list")
    [result] = await store.claim([decision("a")], lease_until=T0 + LEASE)
    assert result.run is not None
    row = RunRecord("a", T0, Outcome.SUCCEEDED, T0 + SEC)
    assert await store.finish([Finish(result.run, Outcome.SUCCEEDED, history=row)]) == [True]
    state = await store.get("a")
    assert state is not None and state.counts == {"succeeded": 1} and state.running == 0
    await store.record([row, RunRecord("b", T0, Outcome.MISSED, T0 + SEC)])
    assert await redis_client.get(f"{key_prefix}history:a") == b"not a list"
    assert [r.task_id for r in await store.history("b", 10)] == ["b"]
