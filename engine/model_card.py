"""The README.md (Hugging Face model card) of a downloaded model, generated from its manifest (torch-free)."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import JsonValue

from engine.events import EvaluationSummary, Pair
from engine.manifest import ArtifactManifest

ExportFormat = Literal["adapter", "merged"]


def _value(value: JsonValue) -> str:
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(rows: list[tuple[str, str]], head: tuple[str, str] = ("name", "value")) -> list[str]:
    out = [f"| {head[0]} | {head[1]} |", "|---|---|"]
    out += [f"| {k} | {_cell(v)} |" for k, v in rows]
    return out


def _num(value: float | int | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _pair_rows(name: str, pair: Pair[float] | None) -> list[str]:
    return [] if pair is None else [f"| {name} | {_num(pair.base)} | {_num(pair.tuned)} |"]


def _evaluation(ev: EvaluationSummary) -> list[str]:
    """Base versus tuned figures, as far as the run measured them."""
    rows = ["| metric | base | tuned |", "|---|---|---|"]
    rows += _pair_rows("validation loss", ev.valid_loss)
    rows += _pair_rows("validation token accuracy", ev.valid_mean_token_accuracy)
    if ev.generation is not None:
        rows.append(f"| generation {ev.generation.metric} | {_num(ev.generation.base)} | {_num(ev.generation.tuned)} |")
        rows += _pair_rows("generation exact match", ev.generation.exact_match)
    if ev.preference is not None:
        rows += _pair_rows("preference accuracy", ev.preference.accuracy)
        rows += _pair_rows("reward margin", ev.preference.reward_margin)
    if ev.forgetting is not None:
        rows.append(
            f"| forgetting: {ev.forgetting.metric} | {_num(ev.forgetting.base)} | {_num(ev.forgetting.tuned)} |"
        )
        rows += _pair_rows("forgetting: skill probes", ev.forgetting.skills)
    out = [
        "## Evaluation",
        "",
        f"Published step {ev.selected_step} of {ev.last_step} (checkpoint selection: {ev.checkpoint_selection}).",
        "",
        *rows,
    ]
    if ev.full_valid_loss is not None:
        out += ["", f"Loss on the whole validation file: {_num(ev.full_valid_loss)}."]
    if ev.helped is not None:
        out += ["", f"Fine-tuning helped: {'yes' if ev.helped else 'no'}."]
    out += [f"- warning `{w.code}`: {w.message}" for w in ev.warnings]
    return out


def _loading(fmt: ExportFormat, base_model: str) -> list[str]:
    if fmt == "adapter":
        code = [
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'base = AutoModelForCausalLM.from_pretrained("{base_model}")  # or a local copy of the base',
            'model = PeftModel.from_pretrained(base, "path/to/this/folder")',
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
        ]
    else:
        code = [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")',
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
        ]
    return ["## Loading", "", "```python", *code, "```"]


def _training(manifest: ArtifactManifest) -> list[str]:
    spec = manifest.spec
    rows = [("base model", f"`{manifest.base_model}`"), ("base model sha256", f"`{manifest.base_model_sha256}`")]
    if spec is None:  # an uploaded adapter: TuneForge did not train it and knows nothing of how it was
        return [
            "## Training",
            "",
            "Uploaded to TuneForge as an existing adapter; no training facts.",
            "",
            *_table(rows),
        ]
    rows += [
        ("method", spec.method),
        ("tuning", manifest.kind),
        ("step", str(manifest.step)),
        ("trained tokens", str(manifest.trained_tokens)),
        ("seed", str(spec.seed)),
    ]
    return [
        "## Training",
        "",
        *_table(rows),
        "",
        "### Tuning",
        "",
        *_table([(k, _value(v)) for k, v in sorted(spec.tuning.items())]),
        "",
        "### Hyperparameters",
        "",
        *_table([(k, _value(v)) for k, v in sorted(spec.hyperparameters.items())]),
        "",
        "## Data",
        "",
        *_table(
            [
                ("training file sha256", f"`{manifest.training_file_sha256 or '-'}`"),
                ("validation file sha256", f"`{manifest.validation_file_sha256 or '-'}`"),
            ]
        ),
    ]


def model_card(model_id: str, manifest: ArtifactManifest, fmt: ExportFormat) -> str:
    """Markdown with Hugging Face front matter: base model, method, hyperparameters, data hashes, evaluation."""
    spec = manifest.spec
    library = "peft" if fmt == "adapter" else "transformers"
    methods = {"supervised": "supervised fine-tuning (SFT)", "dpo": "direct preference optimisation (DPO)"}
    tuning = "LoRA adapter" if manifest.kind == "lora" else "full fine-tuning"
    what = {
        "adapter": "a PEFT LoRA adapter; load it on top of the base model",
        "merged": "complete weights" + (" (the LoRA adapter merged into the base)" if manifest.kind == "lora" else ""),
    }[fmt]
    how = f"{methods[spec.method]}, {tuning}" if spec is not None else f"uploaded {tuning}"
    lines = [
        "---",
        f"base_model: {json.dumps(manifest.base_model)}",
        f"library_name: {library}",
        "pipeline_tag: text-generation",
        "tags:",
        "- tuneforge",
        *([f"- {spec.method}"] if spec is not None else []),
        f"- {manifest.kind}",
        "---",
        "",
        f"# {model_id}",
        "",
        f"Fine-tuned from `{manifest.base_model}` with TuneForge: {how}.",
        f"This folder holds {what}.",
        "",
        *_training(manifest),
        "",
    ]
    if manifest.metrics:
        lines += ["## Metrics at this step", "", *_table([(k, _num(v)) for k, v in sorted(manifest.metrics.items())])]
        lines.append("")
    if manifest.evaluation is not None:
        lines += [*_evaluation(manifest.evaluation), ""]
    lines += [*_loading(fmt, manifest.base_model), ""]
    lines += [
        "`manifest.json` pins what this model was trained with (base and tokenizer hashes, chat template, stop "
        "tokens, resolved spec).",
        "",
    ]
    return "\n".join(lines)
