"""An API app in the test process (no server, no worker, no inference) with one project key, for edge tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastapi.testclient import TestClient

from app.core.settings import Settings
from app.db.migrate import upgrade
from app.main import create_app
from app.usecases.keys import create_key


@dataclass
class LocalApp:
    client: TestClient
    headers: dict[str, str]
    data_dir: Path

    def temp_files(self) -> list[Path]:
        """Upload temp files still on disk (a finished or aborted upload leaves none)."""
        return sorted((self.data_dir / "blobs" / "incoming").glob("*"))

    def stored_files(self) -> list[Path]:
        return sorted((self.data_dir / "blobs" / "objects").rglob("*"))


def local_app(data_dir: Path, **overrides: object) -> LocalApp:
    settings = Settings(data_dir=data_dir, embedded_worker=False, embedded_inference=False, **overrides)  # type: ignore[arg-type]
    upgrade(settings.resolved_database_url)
    app = create_app(settings)
    with app.state.tuneforge.db.session() as session:
        secret = create_key(session, "alpha").secret
    client = TestClient(app, raise_server_exceptions=False)
    return LocalApp(client, {"authorization": f"Bearer {secret}"}, data_dir)
