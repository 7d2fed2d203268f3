"""A PostgreSQL cluster of the test's own: ``initdb`` into a temporary directory, then
``pg_ctl`` starts and stops it on a free port, as often as the scenario asks.

PostgreSQL refuses to run as root, so as root every command runs as the ``postgres``
user (``runuser``), and the directory is handed to that user.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import asyncpg

from tests.reliability.conftest import unavailable

#: Where Debian's postgresql-15 puts initdb and pg_ctl (they are not on PATH there).
BIN = Path(os.environ.get("CML_JOBS_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """A throwaway cluster on 127.0.0.1 (trust auth, user ``postgres``)."""

    def __init__(self) -> None:
        if not (BIN / "initdb").exists() or not (BIN / "pg_ctl").exists():
            unavailable(f"needs PostgreSQL's initdb and pg_ctl in {BIN} (CML_JOBS_TEST_PG_BIN)")
        self.root = Path(tempfile.mkdtemp(prefix="cml-jobs-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                unavailable("running as root needs a 'postgres' user to run PostgreSQL as")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [*self._as_user, str(BIN / tool), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"{tool} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")

    async def start(self, timeout: float = 60) -> None:
        """Start the cluster and wait until it accepts connections."""
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root}"
        log = str(self.root / "server.log")
        await asyncio.to_thread(
            self._run, "pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "start"
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                conn = await asyncpg.connect(self.url, timeout=2)
                await conn.close()
                return
            except (OSError, asyncio.TimeoutError, asyncpg.PostgresError):
                if time.monotonic() > deadline:
                    raise AssertionError(f"PostgreSQL did not start:\n{self.log()}") from None
                await asyncio.sleep(0.1)

    def stop(self, mode: str = "immediate") -> None:
        """Stop the cluster: ``immediate`` is a crash (recovery from the WAL on start),
        ``fast`` a clean shutdown."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def close(self) -> None:
        """Stop the cluster if it runs, and delete its directory."""
        if (self.data / "postmaster.pid").exists():
            try:
                self.stop()
            except AssertionError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)
