"""The SQLAlchemy 2.0 engine and sessions, for SQLite (embedded) and PostgreSQL, and the
one dialect-aware INSERT."""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import Connection, Engine, Table, create_engine, event
from sqlalchemy import exc as db_errors
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str, *, timeout: float = 5.0, **kwargs: Any) -> Engine:
    """An engine for `url`. SQLite gets WAL, foreign keys and a busy timeout, so several
    processes (gateway workers, the indexer) can share one file. PostgreSQL gets
    `timeout` seconds to connect and to hand out a pooled connection (a database that is
    down fails a call fast instead of holding its thread), and every pooled connection
    is pinged before use, so one dropped by a restart is replaced, not used."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # autocommit off in the driver's own sense: SQLAlchemy issues BEGIN itself
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # Transactions take the write lock up front (no read-then-upgrade deadlocks
            # between writers); plain reads run in autocommit and take no lock at all.
            if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
                return
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    connect_args = {"connect_timeout": max(1, math.ceil(timeout))}
    return create_engine(
        url, pool_pre_ping=True, pool_timeout=timeout, connect_args=connect_args, **kwargs
    )


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the database cannot be reached (down, restarting, the pool
    exhausted, a connection cut), which a retry cures: not a deadlock, a timeout of a
    statement or a missing table, which are bugs or load to see in the logs."""
    if isinstance(exc, db_errors.TimeoutError | db_errors.DisconnectionError):
        return True
    if not isinstance(exc, db_errors.DBAPIError):
        return False
    if exc.connection_invalidated or isinstance(exc, db_errors.InterfaceError):
        return True
    original = exc.orig
    # psycopg raises its base OperationalError, not a subclass, when it cannot connect
    if type(original).__name__ == "OperationalError" and type(original).__module__.startswith(
        "psycopg"
    ):
        return True
    # SQLite past its busy timeout: another writer holds the file
    return isinstance(exc, db_errors.OperationalError) and "database is locked" in str(original)


def read_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions for single reads: autocommit, no transaction, no lock (a request's key
    and listing lookups)."""
    return sessionmaker(
        engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False
    )


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions bound to `engine` that keep loaded objects usable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


def insert(session: Session | Connection, table: Any) -> Any:
    """An INSERT for the dialect of `session` (PostgreSQL's or SQLite's), so callers can
    add `ON CONFLICT` clauses, which SQLAlchemy's generic insert lacks."""
    dialect = (
        session.get_bind().dialect.name if isinstance(session, Session) else session.dialect.name
    )
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def core_table(entity: Any) -> Table:
    """The Core Table of a mapped class, for Core statements on hot paths."""
    table = entity.__table__
    assert isinstance(table, Table)
    return table
