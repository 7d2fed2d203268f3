"""A Redis Sentinel group of the test's own: a primary, a replica and three Sentinels,
each a ``redis-server`` on a free port with its files in the test's temporary directory.

The Sentinels monitor the primary as ``mymaster`` with quorum 2, call it down after 1 s
without an answer, and give a failover 5 s. ``start`` returns once the replica is in
sync and every Sentinel knows the replica and the two other Sentinels: only then can a
failover happen (a Sentinel learns of the replica from the primary's INFO, of the other
Sentinels from their hello messages every 2 s).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import redis.asyncio as aioredis

from tests.reliability.conftest import RedisServer, _free_port
from tests.workers import until

SERVICE = "mymaster"
QUORUM = 2
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


class Node(RedisServer):
    """A ``redis-server`` with extra arguments, its files (the replication RDB) kept in
    ``workdir`` rather than in the current directory."""

    def __init__(self, port: int, workdir: Path, extra: list[str] | None = None) -> None:
        super().__init__(port)
        self.workdir = workdir
        self.extra = extra or []

    def _args(self) -> list[str]:
        # Diskless replication without the default 5 s delay: the replica syncs at once.
        tuning = ["--dir", str(self.workdir), "--repl-diskless-sync-delay", "0"]
        return [*super()._args(), *tuning, *self.extra]


class SentinelNode(RedisServer):
    """``redis-server <conf> --sentinel``: a Sentinel rewrites its configuration file, so
    each has its own, in ``workdir``."""

    def __init__(self, port: int, workdir: Path, primary_port: int) -> None:
        super().__init__(port)
        self.conf = workdir / f"sentinel-{port}.conf"
        self.conf.write_text(
            f"port {port}\n"
            "bind 127.0.0.1\n"
            f"dir {workdir}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} {QUORUM}\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
        )

    def _args(self) -> list[str]:
        return ["redis-server", str(self.conf), "--sentinel"]


class SentinelGroup:
    """A primary, a replica of it, and three Sentinels watching them."""

    def __init__(self, workdir: Path) -> None:
        self.primary = Node(_free_port(), workdir)
        primary_port = str(self.primary.port)
        self.replica = Node(_free_port(), workdir, ["--replicaof", "127.0.0.1", primary_port])
        self.sentinels = [SentinelNode(_free_port(), workdir, self.primary.port) for _ in "abc"]

    @property
    def url(self) -> str:
        """The ``redis+sentinel://`` URL cml-jobs is given."""
        hosts = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    async def start(self) -> None:
        """Start every server; return once a failover can happen."""
        await self.primary.start()
        await self.replica.start()
        await self._each(self.replica, _in_sync, "the replica is in sync with the primary")
        for sentinel in self.sentinels:
            await sentinel.start()
        for sentinel in self.sentinels:
            await self._each(sentinel, _knows_everyone, "each Sentinel knows the whole group")

    async def primary_port(self) -> int:
        """The port of the primary as the first Sentinel names it now."""
        client = aioredis.Redis(port=self.sentinels[0].port, socket_connect_timeout=2)
        try:
            _, port = await client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
            return int(port)
        finally:
            await client.aclose()

    def close(self) -> None:
        """Kill every server of the group."""
        for server in [*self.sentinels, self.replica, self.primary]:
            server.close()

    @staticmethod
    async def _each(
        server: RedisServer, check: Callable[[aioredis.Redis], Awaitable[bool]], what: str
    ) -> None:
        client = aioredis.Redis(port=server.port, socket_connect_timeout=2)
        try:
            await until(lambda: check(client), what, timeout=60, every=0.1)
        finally:
            await client.aclose()


async def _in_sync(client: aioredis.Redis) -> bool:
    info = await client.info("replication")
    return bool(info.get("master_link_status") == "up")


async def _knows_everyone(client: aioredis.Redis) -> bool:
    replicas = await client.execute_command("SENTINEL", "REPLICAS", SERVICE)
    others = await client.execute_command("SENTINEL", "SENTINELS", SERVICE)
    return len(replicas) == 1 and len(others) == 2
