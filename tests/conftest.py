"""Shared fixtures: real servers on loopback, on SQLite (embedded) and on Postgres + Redis (cluster)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.model_cache import CACHE_ENV, seed_tiny_chat

REPO = Path(__file__).resolve().parents[1]
# Under pytest-xdist (`make test` runs two workers) each worker is "gw0", "gw1", ...; empty in a plain run.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))


def _worker_redis(url: str) -> str:
    """Each xdist worker its own db index on the shared Redis: two servers on one queue would take each
    other's jobs (Postgres needs nothing: every database the suite makes has a random name)."""
    if not XDIST_WORKER[2:].isdigit():
        return url
    scheme, _, rest = url.partition("://")
    host, _, db = rest.partition("/")
    return f"{scheme}://{host}/{(int(db or 0) + int(XDIST_WORKER[2:])) % 16}"


POSTGRES_URL = os.environ.get("TUNEFORGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = _worker_redis(os.environ.get("TUNEFORGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
REQUIRE_SERVICES = os.environ.get("TUNEFORGE_REQUIRE_SERVICES") == "1"


def pytest_configure(config: pytest.Config) -> None:
    """One tiny-chat build per run (tests/model_cache.py), in a fresh folder unless the caller chose one."""
    if not os.environ.get(CACHE_ENV):
        # The controller makes the folder before it starts the workers, so they share it (and one build).
        os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="tf-model-cache-")
    if XDIST_WORKERS > 1:
        # One torch thread per worker and per child it starts: the workers already use every core.
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(name, "1")


# Under xdist (`make test`: `-n 2 --dist loadfile`, one module per worker) these run first, longest first, so
# that the two workers finish together (measured with --durations on 2 cores); the rest keep collection order.
# (Not `--dist loadgroup`: with pytest 9 xdist 3.8 cannot tag node ids, and every test would be its own group.)
HEAVY_FIRST = (
    "tests/jobs/test_jobs_redis.py",
    "tests/jobs/test_jobs_control.py",
    "tests/e2e/test_finetune_and_chat.py",
    "tests/e2e/test_evaluation.py",
    "tests/jobs/test_jobs_outage.py",
    "tests/console/test_console.py",
    "tests/cli/test_user_cli.py",
)


def _rank(item: pytest.Item) -> int:
    module = item.nodeid.split("::", 1)[0]
    return HEAVY_FIRST.index(module) if module in HEAVY_FIRST else len(HEAVY_FIRST)


@pytest.hookimpl(hookwrapper=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> Iterator[None]:
    """Under xdist, the heavy modules first (a stable sort: pytest's fixture-aware order is kept inside each)."""
    yield
    if XDIST_WORKERS > 1:
        items.sort(key=_rank)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Under xdist, undo the module-level torch.set_num_threads(2) of some test modules (see pytest_configure)."""
    if XDIST_WORKERS > 1 and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _reachable(url: str, default_port: int) -> bool:
    rest = url.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
    host, _, port = rest.partition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port or default_port)), timeout=2):
            return True
    except OSError:
        return False


def require_service(name: str, url: str, default_port: int) -> None:
    """Skip with a visible reason when a server is missing; in CI (TUNEFORGE_REQUIRE_SERVICES=1) fail."""
    if _reachable(url, default_port):
        return
    message = f"{name} not reachable at {url}; start it (see .ci/run) to run this half of the suite"
    if REQUIRE_SERVICES:
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_url() -> str:
    require_service("Postgres", POSTGRES_URL, 5432)
    return POSTGRES_URL


@pytest.fixture(scope="session")
def redis_url() -> str:
    require_service("Redis", REDIS_URL, 6379)
    return REDIS_URL


@pytest.fixture(scope="session")
def fresh_postgres_db(postgres_url: str) -> Iterator[str]:
    """A throwaway database on the test server, dropped afterwards."""
    yield from _fresh_postgres(postgres_url)


def _fresh_postgres(admin_url: str) -> Iterator[str]:
    import sqlalchemy as sa

    name = f"tf_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    base = admin_url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(
                sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                {"n": name},
            )
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def tuneforge_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tuneforge", *args]


@dataclass
class Server:
    """A real `tuneforge serve` process on loopback."""

    base_url: str
    data_dir: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log_path: Path
    keys: dict[str, str] = field(default_factory=dict)

    def create_key(self, project: str) -> str:
        out = subprocess.run(
            tuneforge_cmd("keys", "create", "--project", project, "--data-dir", str(self.data_dir)),
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        return out.stdout.strip().splitlines()[-1]

    def key(self, project: str) -> str:
        if project not in self.keys:
            self.keys[project] = self.create_key(project)
        return self.keys[project]

    def openai(self, project: str = "alpha", **kwargs: object):  # type: ignore[no-untyped-def]
        from openai import OpenAI

        return OpenAI(base_url=f"{self.base_url}/v1", api_key=self.key(project), **kwargs)  # type: ignore[arg-type]

    def peak_rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise RuntimeError("no VmHWM")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_server(
    data_dir: Path, extra_env: dict[str, str] | None = None, args: tuple[str, ...] = (), *, seed_model: bool = True
) -> Server:
    port = free_port()
    if seed_model:
        seed_tiny_chat(data_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_") or k.startswith("TUNEFORGE_TEST")}
    env.update({"TUNEFORGE_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"})
    env.update(extra_env or {})
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "server.log"
    log = open(log_path, "wb")  # noqa: SIM115  (the child owns it)
    process = subprocess.Popen(
        tuneforge_cmd("serve", "--host", "127.0.0.1", "--port", str(port), *args),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=str(data_dir),
    )
    server = Server(f"http://127.0.0.1:{port}", data_dir, env, process, log_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{server.base_url}/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"server did not start:\n{log_path.read_text()}")


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Settings for each way to run: the embedded default, and Postgres + Redis."""
    if request.param == "sqlite":
        yield {}
        return
    pg = request.getfixturevalue("postgres_url")
    redis = request.getfixturevalue("redis_url")
    for db_url in _fresh_postgres(pg):
        yield {"TUNEFORGE_DATABASE_URL": db_url, "TUNEFORGE_BROKER_URL": redis}


@pytest.fixture(scope="session")
def server(backend: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    handle = start_server(tmp_path_factory.mktemp("server"), backend)
    yield handle
    handle.stop()
