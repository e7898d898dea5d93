"""The FastAPI application factory (entry point for uvicorn: `app.main:create_app`)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, FastAPI

from app.console import install_console
from app.core.queue import broker_reachable
from app.core.settings import Settings, get_settings
from app.core.storage import BlobStore
from app.db.session import Database
from app.gateway.backends import BackendRegistry
from app.gateway.limits import KeyConcurrency
from app.http.access_log import quiet_polling
from app.http.body_guard import BodyLimits
from app.http.errors import install_error_handlers
from app.http.middleware import BodyLimitMiddleware, RequestIdMiddleware
from app.http.openapi import install_openapi
from app.http.routes import files, health, inference, jobs, model_upload, models
from app.http.state import AppState

API_DESCRIPTION = """OpenAI-compatible fine-tuning API.

Extensions beyond OpenAI's API: `GET /v1/files/{id}/report` returns the dataset check of a fine-tune file
(format, example count, per-line errors with line numbers and codes, duplicates, statistics).
"""


def create_app(settings: Settings | None = None, extra_routers: list[APIRouter] | None = None) -> FastAPI:
    settings = settings or get_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per forwarded call is noise
    quiet_polling(not settings.log_polling_requests)  # successful GETs (clients polling jobs) are noise too
    db = Database(settings.resolved_database_url, settings.database_timeout_s)
    storage = BlobStore(settings.resolved_storage_dir)
    state = AppState(
        settings=settings,
        db=db,
        storage=storage,
        backends=BackendRegistry(settings),
        inference_limits=KeyConcurrency(settings.max_concurrent_requests_per_key),
    )
    state.ready_checks.append(lambda: ("queue", broker_reachable(settings)))

    # docs_url/redoc_url off: install_console serves /docs and /redoc with local assets (no CDN)
    app = FastAPI(title="TuneForge", version="0.1.0", description=API_DESCRIPTION, docs_url=None, redoc_url=None)
    app.state.tuneforge = state
    install_error_handlers(app)
    install_openapi(app, settings.list_limit_max)
    app.include_router(health.router)
    app.include_router(files.router)
    app.include_router(jobs.router)
    app.include_router(models.router)
    app.include_router(model_upload.router)  # POST /v1/models: upload an existing adapter
    app.include_router(inference.router)
    install_console(app)  # the web console at / and the offline /docs, /redoc
    for router in extra_routers or []:
        app.include_router(router)
    app.add_middleware(BodyLimitMiddleware, limits=BodyLimits.from_settings(settings))
    app.add_middleware(RequestIdMiddleware)
    return app
