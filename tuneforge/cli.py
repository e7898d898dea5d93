"""`tuneforge` command line: the composition root that wires API, worker and inference together."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from app.core.settings import Settings, get_settings
from tuneforge.client import register as register_user_commands

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

cli = typer.Typer(help="TuneForge: self-hosted, OpenAI-compatible fine-tuning.", no_args_is_help=True)
keys_cli = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")
register_user_commands(cli)  # files, jobs, models, chat: clients of the public /v1 API

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
    db = Database(settings.resolved_database_url, settings.database_timeout_s)
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
    from app.core.storage import BlobStore
    from app.main import create_app
    from serve.runner import server_for

    settings = load_settings(data_dir)
    prepare(settings)
    BlobStore(settings.resolved_storage_dir).sweep_incoming()
    host = host or settings.host
    port = port or settings.port
    app = create_app(settings)
    before_shutdown: list[Callable[[], None]] = []
    if settings.embedded_inference:
        from tuneforge.embedded import mount_inference, stop_inference

        mounted = mount_inference(app, settings)
        typer.echo(f"inference in-process for: {', '.join(mounted) or '(none)'}")
        before_shutdown.append(lambda: stop_inference(app))
    embedded_worker = None
    if settings.embedded_worker:
        from tuneforge.embedded_worker import EmbeddedWorker

        embedded_worker = EmbeddedWorker(settings)
        # uvicorn re-raises the signal once it has shut down, so the `finally` below may never run: stop the
        # worker (it terminates its children) from the shutdown hooks, which always do.
        before_shutdown.append(embedded_worker.stop)
    typer.echo(f"TuneForge listening on http://{host}:{port}  (OpenAI base_url: http://{host}:{port}/v1)")
    typer.echo(f"data dir: {settings.data_dir}  database: {_redact(settings.resolved_database_url)}")
    typer.echo(f"create an API key:  tuneforge keys create --project demo --data-dir {settings.data_dir}")
    sys.stdout.flush()
    try:
        # one SIGTERM stops it: in-process generation ends first, then open requests get graceful_shutdown_s
        server_for(app, host, port, grace_s=settings.graceful_shutdown_s, before_shutdown=before_shutdown).run()
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
            "worker",
            "-Q",
            queue,
            "-c",
            str(concurrency or settings.worker_concurrency),
            "-P",
            pool,
            "--prefetch-multiplier",
            "1",
            "-O",
            "fair",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "INFO",
            "-n",
            f"tuneforge-{os.getpid()}@%h",
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
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        timeout_graceful_shutdown=math.ceil(settings.graceful_shutdown_s),  # forwarded streams must not hold SIGTERM
    )


@cli.command()
def inference(
    base_model: Annotated[str, typer.Option("--base-model", help="Base model name or local dir.")],
    host: Annotated[
        str, typer.Option(help="Interface to listen on; off loopback it needs TUNEFORGE_INFERENCE_API_KEY.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8001,
    data_dir: DataDir = None,
) -> None:
    """Run one inference process for a base model (cluster mode); the API forwards to it by model id."""
    from serve.runner import hooks_of, server_for
    from serve.settings import exposure_problem

    settings = load_settings(data_dir)
    problem = exposure_problem(host, settings.inference_api_key)
    if problem is not None:  # before loading the model: fail in a second, not after minutes
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(2)
    from serve.app import create_app as create_inference_app
    from tuneforge.embedded import serve_settings

    source = settings.base_model_map.get(base_model, base_model)
    app = create_inference_app(
        source, settings.data_dir, settings=serve_settings(settings, settings.inference_api_key), name=base_model
    )
    # The same body caps and read/idle timeouts as the API: the inference port takes bodies from the network too.
    from app.http.body_guard import BodyLimits
    from app.http.middleware import BodyLimitMiddleware

    app.add_middleware(BodyLimitMiddleware, limits=BodyLimits.from_settings(settings))
    typer.echo(f"TuneForge inference for {base_model} on http://{host}:{port}/v1")
    server_for(app, host, port, grace_s=settings.graceful_shutdown_s, before_shutdown=hooks_of(app)).run()


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
