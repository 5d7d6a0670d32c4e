"""Which indexer process works: leader election through PostgreSQL, nothing home-made.

The leader holds a session-level advisory lock on a connection of its own for as long
as it leads. PostgreSQL releases it when that connection ends, and a killed process's
connection ends with it (the kernel closes the socket), so a standby polling every
interval takes over within about one interval. SQLite is the single-process embedded
default: there every indexer leads.

The lock decides who does the work, not what is correct: each pass also takes the
transaction-level lock (`follow.LOCK_KEY`) and every event is recorded once by its
(tx hash, log index), so two processes that both believe they lead (a network
partition, for as long as the old leader's connection takes to fail) index nothing twice.
"""

from __future__ import annotations

import logging
import os
import socket

from sqlalchemy import Connection, Engine, text

log = logging.getLogger("modelmarket.indexer")

LEADER_KEY = 0x6D6D6B7432  # "mmkt2": held by the one working indexer


class Leadership:
    """This process's claim to be the working indexer of one database."""

    def __init__(self, engine: Engine, key: int = LEADER_KEY) -> None:
        self.engine = engine
        self.key = key
        self.holder = f"{socket.gethostname()[:40]}:{os.getpid()}"
        self._conn: Connection | None = None

    @property
    def elected(self) -> bool:
        """Whether an election happens at all (PostgreSQL); SQLite always leads."""
        return self.engine.dialect.name == "postgresql"

    def ensure(self) -> bool:
        """Lead if possible: True while this process holds (or just took) the lock."""
        if not self.elected:
            return True
        if self._conn is not None:
            try:
                self._conn.exec_driver_sql("SELECT 1")
                self._conn.rollback()
                return True
            except Exception:  # the connection broke: the server has let the lock go
                log.warning("lost the indexer leadership (its connection failed)")
                self._drop()
        conn = self.engine.connect()
        try:
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key})
            taken = bool(got.scalar())
            conn.rollback()  # end the transaction; a session-level lock outlives it
        except Exception:
            conn.close()
            raise
        if not taken:
            conn.close()
            return False
        self._conn = conn
        log.info("this indexer (%s) leads", self.holder)
        return True

    def release(self) -> None:
        """Step down (the process is stopping): a standby takes over at once."""
        if self._conn is None:
            return
        try:
            self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            self._conn.rollback()
        except Exception:
            log.warning("could not unlock the leadership; closing its connection", exc_info=True)
        self._drop()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.invalidate()  # never back to the pool: it may hold the lock
            finally:
                conn.close()
