"""One settings object for every process, read from TUNEFORGE_* environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class Settings(BaseSettings):
    """All knobs and limits; invalid values fail at start-up, not at first use."""

    model_config = SettingsConfigDict(env_prefix="TUNEFORGE_", extra="ignore", validate_default=True)

    data_dir: Path = Field(
        default=Path("./data"), description="Root of the embedded database, blobs and models."
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default is SQLite under data_dir. Postgres: postgresql+psycopg://...",
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker URL; default is a serverless filesystem transport under data_dir.",
    )
    storage_dir: Path | None = Field(default=None, description="Blob storage root; default data_dir/blobs.")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    organization_id: str = Field(default="org-tuneforge", min_length=1)

    # Upload and dataset-check limits.
    max_upload_bytes: int = Field(default=512 * MiB, ge=1, description="Largest accepted file upload.")
    upload_drain_bytes: int = Field(
        default=64 * MiB,
        ge=0,
        description="After the cap, read and discard this much before dropping the connection.",
    )
    max_line_bytes: int = Field(default=MiB, ge=64, description="Longest accepted JSONL line.")
    max_report_errors: int = Field(
        default=100, ge=1, le=10_000, description="Errors listed in a dataset report."
    )
    min_examples: int = Field(default=10, ge=1, description="Fewest examples a training file may have.")
    max_json_body_bytes: int = Field(default=4 * MiB, ge=1024, description="Largest JSON request body.")
    list_limit_max: int = Field(default=10_000, ge=1)

    @field_validator("database_url", "broker_url")
    @classmethod
    def _blank_is_default(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sqlite", "postgresql")):
            raise ValueError("database_url must be a sqlite:// or postgresql+psycopg:// URL")
        return value

    @model_validator(mode="after")
    def _absolute_paths(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        if self.storage_dir is not None:
            self.storage_dir = self.storage_dir.expanduser().resolve()
        return self

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'tuneforge.db'}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def resolved_storage_dir(self) -> Path:
        return self.storage_dir or self.data_dir / "blobs"

    @property
    def queue_dir(self) -> Path:
        """Folder of the serverless filesystem broker (embedded default)."""
        return self.data_dir / "queue"

    @property
    def is_embedded_queue(self) -> bool:
        return self.resolved_broker_url.startswith("filesystem")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
