"""The inference process: an OpenAI-compatible ASGI app over one base model, its LoRA adapters and full fine-tunes."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from engine.inference.loading import LoadedBase, load_base
from serve.errors import install_error_handlers
from serve.routes import router
from serve.service import InferenceService
from serve.settings import ServeSettings


def create_app(
    base_model: str,
    data_dir: str | Path,
    adapters_root: str | Path | None = None,
    settings: ServeSettings | None = None,
    *,
    loaded: LoadedBase | None = None,
    name: str | None = None,
) -> FastAPI:
    """Load base_model (a name like tiny-chat or a local path) and return the app; adapters load on first use.

    name: the public name the base model answers to (the operator's `name=/local/dir`); default base_model.
    adapters_root, when given, serves <adapters_root>/<model id> for any model id not registered otherwise.
    `/v1/load_lora_adapter` loads only directories under data_dir or adapters_root: PEFT adapters, or full
    fine-tunes (config.json, safetensors and a `full` manifest), each then served on its own engine.
    """
    settings = settings or ServeSettings()
    base = loaded or load_base(base_model, data_dir, name=name)
    roots = Path(adapters_root) if adapters_root is not None else None
    service = InferenceService(base, settings, roots, Path(data_dir))
    app = FastAPI(title="TuneForge inference", docs_url=None, redoc_url=None)
    app.state.service = service
    app.state.before_shutdown = service.shutdown  # the runner calls it when SIGTERM arrives
    install_error_handlers(app)
    app.include_router(router)
    return app
