"""`tuneforge` command line: the composition root that wires API, worker and inference together."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from app.core.settings import Settings, get_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

cli = typer.Typer(help="TuneForge: self-hosted, OpenAI-compatible fine-tuning.", no_args_is_help=True)
keys_cli = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Data directory (also TUNEFORGE_DATA_DIR; default ./data).")
]


def load_settings(data_dir: Path | None = None) -> Settings:
    """Settings from the environment; --data-dir wins and is exported so child processes agree."""
    if data_dir is not None:
        os.environ["TUNEFORGE_DATA_DIR"] = str(data_dir.expanduser().resolve())
    get_settings.cache_clear()
    try:
        return get_settings()
    except Exception as exc:  # pydantic's message names the bad variable
        typer.echo(f"invalid settings: {exc}", err=True)
        raise typer.Exit(2) from exc


def prepare(settings: Settings) -> None:
    """Create folders and bring the schema to head."""
    from app.db.migrate import upgrade

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)


@contextmanager
def database_session(data_dir: Path | None) -> Iterator[Session]:
    """A committed-on-success session on the migrated database, for one-shot commands."""
    from app.db.session import Database

    settings = load_settings(data_dir)
    prepare(settings)
    db = Database(settings.resolved_database_url)
    try:
        with db.session() as session:
            yield session
    finally:
        db.dispose()


@cli.command()
def migrate(data_dir: DataDir = None) -> None:
    """Apply database migrations (Alembic) to TUNEFORGE_DATABASE_URL."""
    settings = load_settings(data_dir)
    prepare(settings)
    typer.echo(f"database at head: {_redact(settings.resolved_database_url)}")


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Run the API on the embedded default: SQLite, local blobs, no other server needed."""
    import uvicorn

    from app.core.storage import BlobStore
    from app.main import create_app

    settings = load_settings(data_dir)
    prepare(settings)
    BlobStore(settings.resolved_storage_dir).sweep_incoming()
    host = host or settings.host
    port = port or settings.port
    app = create_app(settings)
    if settings.embedded_inference:
        from tuneforge.embedded import mount_inference

        mounted = mount_inference(app, settings)
        typer.echo(f"inference in-process for: {', '.join(mounted) or '(none)'}")
    embedded_worker = None
    if settings.embedded_worker:
        from tuneforge.embedded_worker import EmbeddedWorker

        embedded_worker = EmbeddedWorker(settings)
    typer.echo(f"TuneForge listening on http://{host}:{port}  (OpenAI base_url: http://{host}:{port}/v1)")
    typer.echo(f"data dir: {settings.data_dir}  database: {_redact(settings.resolved_database_url)}")
    typer.echo(f"create an API key:  tuneforge keys create --project demo --data-dir {settings.data_dir}")
    sys.stdout.flush()
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        if embedded_worker is not None:
            embedded_worker.stop()


@cli.command()
def worker(
    queue: Annotated[str, typer.Option(help="Celery queue to consume.")] = "tuneforge.jobs",
    concurrency: Annotated[int | None, typer.Option(help="Jobs run at once (default: settings).")] = None,
    pool: Annotated[str, typer.Option(help="Celery pool: threads (default), prefork or solo.")] = "threads",
    reaper: Annotated[bool, typer.Option(help="Also run the reaper loop in this process.")] = True,
    data_dir: DataDir = None,
) -> None:
    """Run a job worker: a Celery worker with early ack and prefetch 1 that runs jobs in child processes."""
    settings = load_settings(data_dir)
    if settings.database_url is None:
        prepare(settings)  # embedded default: make sure the SQLite schema exists
    from worker.celery_app import app
    from worker.reaper import start_reaper_thread
    from worker.runtime import runtime

    if reaper:
        start_reaper_thread(runtime())
    app.worker_main(
        [
            "worker", "-Q", queue, "-c", str(concurrency or settings.worker_concurrency), "-P", pool,
            "--prefetch-multiplier", "1", "-O", "fair", "--without-gossip", "--without-mingle",
            "--without-heartbeat", "-l", "INFO", "-n", f"tuneforge-{os.getpid()}@%h",
        ]
    )


@cli.command("reaper")
def reaper_command(data_dir: DataDir = None) -> None:
    """Run only the reaper loop: re-queue runs whose lease expired, re-send lost doorbells."""
    import threading

    from worker.reaper import reap_forever
    from worker.runtime import runtime

    load_settings(data_dir)
    typer.echo("reaper running; Ctrl-C to stop")
    reap_forever(runtime(), threading.Event())


@cli.command()
def api(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Uvicorn worker processes.")] = 1,
) -> None:
    """Run only the HTTP API (cluster mode: Postgres, Redis, separate workers)."""
    import uvicorn

    settings = load_settings()
    typer.echo(f"TuneForge API on http://{host}:{port}  database: {_redact(settings.resolved_database_url)}")
    uvicorn.run("app.main:create_app", factory=True, host=host, port=port, workers=workers, log_level="info")


@cli.command()
def inference(
    base_model: Annotated[str, typer.Option("--base-model", help="Base model name or local dir.")],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8001,
    data_dir: DataDir = None,
) -> None:
    """Run one inference process for a base model (cluster mode); the API forwards to it by model id."""
    import uvicorn

    from serve.app import create_app as create_inference_app
    from tuneforge.embedded import serve_settings

    settings = load_settings(data_dir)
    source = settings.base_model_map.get(base_model, base_model)
    app = create_inference_app(source, settings.data_dir, settings=serve_settings(settings, settings.inference_api_key))
    typer.echo(f"TuneForge inference for {base_model} on http://{host}:{port}/v1")
    uvicorn.run(app, host=host, port=port, log_level="info")


@keys_cli.command("create")
def keys_create(
    project: Annotated[str, typer.Option("--project", help="Project name; created if missing.")],
    data_dir: DataDir = None,
) -> None:
    """Create a key; the secret is printed once, alone on the last line."""
    from app.usecases.keys import create_key

    with database_session(data_dir) as session:
        created = create_key(session, project)
    typer.echo(f"project {created.project_name} ({created.project_id}), key id {created.key_id}")
    typer.echo("store this key now; it is shown only once:")
    typer.echo(created.secret)


@keys_cli.command("list")
def keys_list(
    project: Annotated[str | None, typer.Option("--project", help="Only this project's keys.")] = None,
    data_dir: DataDir = None,
) -> None:
    """List keys (ids and masked secrets, never the secrets)."""
    from app.usecases.keys import list_keys

    with database_session(data_dir) as session:
        for key, proj in list_keys(session, project):
            status = "revoked" if key.revoked_ns else "active"
            typer.echo(f"{key.id}\t{proj.name}\t{key.display}\t{status}")


@keys_cli.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="Key id as shown by `keys list`.")],
    data_dir: DataDir = None,
) -> None:
    """Revoke a key; the next request with it gets 401."""
    from app.core.errors import TuneForgeError
    from app.usecases.keys import revoke_key

    try:
        with database_session(data_dir) as session:
            revoke_key(session, key_id)
    except TuneForgeError as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"revoked {key_id}")


def _redact(url: str) -> str:
    """Hide a password in a database URL before printing it."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in creds else url
    return url


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
