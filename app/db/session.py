"""Engine and session factory for SQLite (embedded) or Postgres (cluster)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str, connect_timeout_s: float = 5.0) -> Engine:
    """Create an engine; SQLite gets WAL and a busy timeout so API, worker and CLI share one file.

    Postgres connects with a timeout and waits at most that long for a pooled connection, so a request
    during a database outage fails in seconds (a 503) instead of hanging.
    """
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=20,
        pool_timeout=connect_timeout_s,
        connect_args={"connect_timeout": max(1, round(connect_timeout_s))},
    )


class Database:
    """Owns one engine and hands out short-lived sessions."""

    def __init__(self, url: str, connect_timeout_s: float = 5.0) -> None:
        self.url = url
        self.engine = make_engine(url, connect_timeout_s)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on any error."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    def uptime_seconds(self) -> float | None:
        """Seconds since the database server started (Postgres); None where it has no such notion (SQLite)."""
        if not self.url.startswith("postgresql"):
            return None
        with self.engine.connect() as conn:
            value = conn.execute(text("SELECT EXTRACT(EPOCH FROM now() - pg_postmaster_start_time())")).scalar()
        return float(value) if value is not None else None

    def dispose(self) -> None:
        self.engine.dispose()
