"""Service plumbing: probes, request ids, the 500 envelope, settings, keys CLI, migrations."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.testclient import TestClient

from app.core.settings import Settings
from app.db.migrate import upgrade
from app.main import create_app
from tests.conftest import Server, tuneforge_cmd


def _local_app(tmp_path: Path, **overrides: object) -> TestClient:
    settings = Settings(data_dir=tmp_path, **overrides)  # type: ignore[arg-type]
    upgrade(settings.resolved_database_url)
    boom = APIRouter()

    @boom.post("/v1/boom")
    def explode() -> None:
        raise RuntimeError("secret internals /etc/passwd")

    return TestClient(create_app(settings, extra_routers=[boom]), raise_server_exceptions=False)


def test_health_and_ready_on_a_running_server(server: Server) -> None:
    assert httpx.get(f"{server.base_url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{server.base_url}/ready")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": True, "queue": True}


def test_ready_is_503_when_the_queue_is_unreachable(tmp_path: Path) -> None:
    client = _local_app(tmp_path, broker_url="redis://127.0.0.1:1/0")
    response = client.get("/ready")
    assert response.status_code == 503 and response.json()["checks"]["queue"] is False
    assert client.get("/health").status_code == 200


def test_unexpected_error_is_a_500_envelope_without_traceback(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    client = _local_app(tmp_path)
    with caplog.at_level(logging.ERROR):
        response = client.post("/v1/boom")
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "server_error" and "Traceback" not in response.text and "/etc/passwd" not in response.text
    request_id = response.headers["x-request-id"]
    assert request_id in error["message"] and request_id in caplog.text
    assert response.headers["x-should-retry"] == "false"  # the SDK must not retry a POST that may have committed


def test_json_body_cap_is_a_setting(tmp_path: Path) -> None:
    client = _local_app(tmp_path, max_json_body_bytes=2048)
    response = client.post(
        "/v1/boom", content=b'{"x": "' + b"a" * 4096 + b'"}', headers={"content-type": "application/json"}
    )
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"


def test_invalid_settings_fail_fast(tmp_path: Path) -> None:
    for env in (
        {"TUNEFORGE_MAX_UPLOAD_BYTES": "-5"},
        {"TUNEFORGE_DATABASE_URL": "mysql://x"},
        {"TUNEFORGE_PORT": "notaport"},
    ):
        result = subprocess.run(
            tuneforge_cmd("migrate", "--data-dir", str(tmp_path)),
            env={**_base_env(), **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2, result
        name = next(iter(env)).removeprefix("TUNEFORGE_").lower()
        assert name in result.stderr


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}


def test_keys_cli_create_list_revoke(server: Server) -> None:
    secret = server.create_key("keyproj")
    assert secret.startswith("sk-tf-") and len(secret) > 40
    listing = subprocess.run(
        tuneforge_cmd("keys", "list", "--project", "keyproj", "--data-dir", str(server.data_dir)),
        env=server.env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert secret not in listing and "keyproj" in listing
    key_id = listing.strip().splitlines()[-1].split("\t")[0]
    headers = {"authorization": f"Bearer {secret}"}
    assert httpx.get(f"{server.base_url}/v1/files", headers=headers).status_code == 200
    subprocess.run(
        tuneforge_cmd("keys", "revoke", key_id, "--data-dir", str(server.data_dir)),
        env=server.env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert httpx.get(f"{server.base_url}/v1/files", headers=headers).status_code == 401


def test_keys_are_stored_only_as_hashes(tmp_path: Path) -> None:
    result = subprocess.run(
        tuneforge_cmd("keys", "create", "--project", "p1", "--data-dir", str(tmp_path)),
        env=_base_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    secret = result.stdout.strip().splitlines()[-1]
    raw = (tmp_path / "tuneforge.db").read_bytes()
    assert secret.encode() not in raw and secret[6:].encode() not in raw


def _schema(url: str) -> dict[str, set[str]]:
    engine = sa.create_engine(url)
    inspector = sa.inspect(engine)
    schema = {t: {c["name"] for c in inspector.get_columns(t)} for t in inspector.get_table_names()}
    engine.dispose()
    return schema


def test_migrations_create_the_same_schema_on_sqlite_and_postgres(tmp_path: Path, fresh_postgres_db: str) -> None:
    sqlite_url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(sqlite_url)
    upgrade(fresh_postgres_db)
    sqlite_schema, pg_schema = _schema(sqlite_url), _schema(fresh_postgres_db)
    assert "files" in sqlite_schema and sqlite_schema == pg_schema
    upgrade(fresh_postgres_db)  # idempotent at head
