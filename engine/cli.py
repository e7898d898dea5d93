"""`python -m engine train SPEC.json [--control-dir DIR]`: JSON-line events on stdout, logs on stderr."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TextIO

from engine.events import EngineEvent, RunError
from engine.result import TrainResult
from engine.spec import SpecError, load_spec


def _event_stream() -> TextIO:
    """Keep a private handle on the real stdout for events; route fd 1 and sys.stdout to stderr."""
    events = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # anything a library prints (progress bars, warnings) cannot corrupt the event stream
    sys.stdout = sys.stderr
    return events


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code of the contract."""
    parser = argparse.ArgumentParser(prog="python -m engine")
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="run one training job from a JSON spec")
    p_train.add_argument("spec")
    p_train.add_argument("--control-dir", default=None)
    p_build = sub.add_parser("build-tiny-chat", help="build (pretrain) tiny-chat under DATA_DIR/models")
    p_build.add_argument("data_dir")
    p_build.add_argument("--steps", type=int, default=None, help="pretraining steps (default: the recipe's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")

    if args.command == "build-tiny-chat":
        from dataclasses import replace

        from engine.models import ensure_base_model
        from engine.tinychat import Recipe

        recipe = Recipe() if args.steps is None else replace(Recipe(), steps=args.steps)
        print(ensure_base_model("tiny-chat", args.data_dir, recipe=recipe), file=sys.stderr)
        return 0

    out = _event_stream()

    def emit(event: EngineEvent) -> None:
        out.write(event.to_line() + "\n")
        out.flush()

    try:
        spec = load_spec(args.spec)
    except (SpecError, OSError) as err:
        res = TrainResult(
            status="failed", output_dir="", error=RunError(code="invalid_spec", message=str(err)), invalid=True
        )
        emit(res.to_event())
        return res.exit_code

    from engine.control import Control
    from engine.trainer import train

    control = Control(args.control_dir)
    control.install_signal_handlers()
    return train(spec, events=emit, control=control).exit_code
