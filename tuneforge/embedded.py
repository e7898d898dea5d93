"""Composition of the embedded default: inference apps mounted in the API process, one per base model."""

from __future__ import annotations

import functools

import httpx
from fastapi import FastAPI

from app.core.settings import Settings
from app.gateway.asgi_transport import StreamingASGITransport
from app.http.state import AppState


def serve_settings(settings: Settings, api_key: str | None = None):  # type: ignore[no-untyped-def]
    """The inference process's limits, taken from the one TuneForge settings object."""
    from serve.settings import ServeSettings

    return ServeSettings(
        max_prompt_tokens=settings.max_prompt_tokens,
        max_output_tokens=settings.max_output_tokens,
        # The gateway enforces the per-key limit with the caller's real key; in-process calls all share one.
        max_concurrent_per_key=max(settings.max_batch_size, settings.max_concurrent_requests_per_key),
        max_loaded_adapters=settings.max_loaded_adapters,
        max_loaded_full_models=settings.max_loaded_full_models,
        max_full_models_memory_mib=settings.max_full_models_memory_mib,
        max_batch_size=settings.max_batch_size,
        api_key=api_key,
    )


def _in_process_backend(name: str, source: str, settings: Settings, built: list[FastAPI]) -> httpx.AsyncClient:
    """The inference app of base model `name`, loaded from source (a name or a local directory) and named `name`."""
    from serve.app import create_app as create_inference_app

    inference_app = create_inference_app(source, settings.data_dir, settings=serve_settings(settings), name=name)
    built.append(inference_app)
    return httpx.AsyncClient(
        transport=StreamingASGITransport(inference_app),
        base_url="http://inference.local",
        timeout=httpx.Timeout(settings.inference_timeout_s, connect=5.0),
    )


def mount_inference(app: FastAPI, settings: Settings) -> list[str]:
    """Register an in-process backend (built on first use) for every base model no remote URL serves."""
    state: AppState = app.state.tuneforge
    remote = settings.inference_url_map
    mounted = []
    built: list[FastAPI] = []
    app.state.inference_apps = built  # stop_inference reaches the engines through it
    for name, source in settings.base_model_map.items():
        if name in remote:
            continue
        state.backends.register_lazy(name, functools.partial(_in_process_backend, name, source, settings, built))
        mounted.append(name)
    return mounted


def stop_inference(app: FastAPI) -> None:
    """Stop every in-process engine built so far: at shutdown, running requests end instead of being waited on."""
    for inference_app in list(getattr(app.state, "inference_apps", [])):
        inference_app.state.before_shutdown()
