"""Job servers on both backends (fresh database and private Redis each) with short lease/reaper periods."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Server, _fresh_postgres, start_server
from tests.jobs.helpers import FAST_ENV
from tests.jobs.redis_server import PrivateRedis

MakeServer = Callable[..., Server]
_redis_dbs = itertools.count(1)


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def job_backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        request.getfixturevalue("postgres_url")
    return str(request.param)


@pytest.fixture(scope="session")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    handle = PrivateRedis(tmp_path_factory.mktemp("redis"))
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def make_server(
    job_backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MakeServer]:
    """Start servers on this module's backend; each gets its own data dir, database and Redis db."""
    started: list[tuple[Server, Iterator[str] | None]] = []

    def make(extra_env: dict[str, str] | None = None, redis_handle: PrivateRedis | None = None) -> Server:
        env = dict(FAST_ENV)
        dbs: Iterator[str] | None = None
        if job_backend == "postgres":
            dbs = _fresh_postgres(request.getfixturevalue("postgres_url"))
            handle = redis_handle or request.getfixturevalue("private_redis")
            env.update(TUNEFORGE_DATABASE_URL=next(dbs), TUNEFORGE_BROKER_URL=handle.url(next(_redis_dbs) % 16))
        env.update(extra_env or {})
        server = start_server(Path(tmp_path_factory.mktemp("jobs")), env)
        started.append((server, dbs))
        return server

    yield make
    for server, dbs in started:
        server.stop()
        if dbs is not None:
            for _ in dbs:  # drops the database
                pass


@pytest.fixture(scope="module")
def jobs_server(make_server: MakeServer) -> Server:
    """`tuneforge serve` with its embedded worker: nothing else is started."""
    return make_server()
