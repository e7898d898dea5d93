"""`python -m serve --base-model tiny-chat --data-dir DIR [--adapters-root DIR] [--host H] [--port P]`."""

from __future__ import annotations

import argparse

from serve.app import create_app
from serve.runner import DEFAULT_GRACE_S, hooks_of, server_for
from serve.settings import ServeSettings, exposure_problem


def main(argv: list[str] | None = None) -> None:
    """Run one inference process under uvicorn."""
    parser = argparse.ArgumentParser(prog="python -m serve")
    parser.add_argument("--base-model", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--adapters-root", default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--max-concurrent-per-key", type=int, default=ServeSettings().max_concurrent_per_key)
    parser.add_argument("--graceful-shutdown-s", type=float, default=DEFAULT_GRACE_S)
    args = parser.parse_args(argv)
    settings = ServeSettings(api_key=args.api_key, max_concurrent_per_key=args.max_concurrent_per_key)
    problem = exposure_problem(args.host, settings.api_key)
    if problem is not None:
        parser.exit(2, f"error: {problem} (here: --api-key)\n")
    app = create_app(args.base_model, args.data_dir, args.adapters_root, settings)
    server_for(app, args.host, args.port, grace_s=args.graceful_shutdown_s, before_shutdown=hooks_of(app)).run()


if __name__ == "__main__":
    main()
