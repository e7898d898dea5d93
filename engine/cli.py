"""`python -m engine train SPEC.json [--control-dir DIR]`: JSON-line events on stdout, logs on stderr.

`python -m engine export ARTIFACT_DIR OUT_DIR --format adapter|merged --base BASE`: one JSON line on stdout.
"""

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
    p_export = sub.add_parser("export", help="write a model's Hugging Face folder (adapter or merged weights)")
    p_export.add_argument("artifact_dir")
    p_export.add_argument("out_dir")
    p_export.add_argument("--format", choices=["adapter", "merged"], required=True)
    p_export.add_argument("--base", required=True, help="base model: a name (tiny-chat, hub id) or a local dir")
    p_export.add_argument("--data-dir", default="./data", help="where tiny-chat and stored base models live")
    p_export.add_argument("--model-id", default=None, help="the model's public id, for the model card")
    p_export.add_argument("--max-memory-mb", type=int, default=None, help="refuse a merge estimated above this")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")

    if args.command == "build-tiny-chat":
        from dataclasses import replace

        from engine.models import ensure_base_model
        from engine.tinychat import Recipe

        recipe = Recipe() if args.steps is None else replace(Recipe(), steps=args.steps)
        print(ensure_base_model("tiny-chat", args.data_dir, recipe=recipe), file=sys.stderr)
        return 0

    if args.command == "export":
        return _export(args)

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


def _export(args: argparse.Namespace) -> int:
    """Run engine.export; its result (or refusal) is the one line on stdout."""
    from engine.export import EXIT_FAILED, EXIT_OK, EXIT_REFUSED, ExportRefused, ExportResult, export, peak_rss_mb

    out = _event_stream()
    model_id = args.model_id or os.path.basename(os.path.normpath(args.out_dir))
    try:
        res = export(
            args.artifact_dir,
            args.out_dir,
            args.format,
            base=args.base,
            data_dir=args.data_dir,
            model_id=model_id,
            max_memory_mb=args.max_memory_mb,
        )
        code = EXIT_OK
    except ExportRefused as err:
        res = ExportResult("refused", args.format, code=err.code, message=err.message, peak_rss_mb=peak_rss_mb())
        code = EXIT_REFUSED
    except Exception:  # the traceback (which may name paths) goes to stderr only
        logging.getLogger("engine.export").exception("export of %s failed", model_id)
        res = ExportResult(
            "failed",
            args.format,
            code="export_failed",
            message=f"Export of `{model_id}` failed.",
            peak_rss_mb=peak_rss_mb(),
        )
        code = EXIT_FAILED
    out.write(res.to_line() + "\n")
    out.flush()
    return code
