"""`python -m serve --base-model tiny-chat --data-dir DIR [--served-model-name NAME] [--adapters-root DIR] ...`."""

from __future__ import annotations

import argparse

from serve.app import create_app
from serve.runner import DEFAULT_GRACE_S, hooks_of, server_for
from serve.settings import ServeSettings, exposure_problem


def main(argv: list[str] | None = None) -> None:
    """Run one inference process under uvicorn."""
    parser = argparse.ArgumentParser(prog="python -m serve")
    parser.add_argument("--base-model", required=True, help="a model name (tiny-chat) or a local directory")
    parser.add_argument("--served-model-name", default=None, help="the name it answers to (default: --base-model)")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--adapters-root", default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--max-concurrent-per-key", type=int, default=ServeSettings().max_concurrent_per_key)
    parser.add_argument("--max-loaded-full-models", type=int, default=ServeSettings().max_loaded_full_models)
    parser.add_argument("--max-full-models-memory-mib", type=int, default=ServeSettings().max_full_models_memory_mib)
    parser.add_argument("--graceful-shutdown-s", type=float, default=DEFAULT_GRACE_S)
    args = parser.parse_args(argv)
    settings = ServeSettings(
        api_key=args.api_key,
        max_concurrent_per_key=args.max_concurrent_per_key,
        max_loaded_full_models=args.max_loaded_full_models,
        max_full_models_memory_mib=args.max_full_models_memory_mib,
    )
    problem = exposure_problem(args.host, settings.api_key)
    if problem is not None:
        parser.exit(2, f"error: {problem} (here: --api-key)\n")
    app = create_app(args.base_model, args.data_dir, args.adapters_root, settings, name=args.served_model_name)
    server_for(app, args.host, args.port, grace_s=args.graceful_shutdown_s, before_shutdown=hooks_of(app)).run()


if __name__ == "__main__":
    main()
