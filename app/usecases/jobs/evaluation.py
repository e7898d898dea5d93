"""The engine's evaluation events as job events and the job's `evaluation` summary (an extension)."""

from __future__ import annotations

from typing import Any

from engine.events import BaseEvaluationEvent, EvaluationSummary, MessageEvent, Pair

# Fields of an engine message event that may reach tenants: codes, steps, counts and figures, never paths.
MESSAGE_DATA_KEYS = frozenset({"code", "step", "count", "lines", "file", "base", "tuned"})
BASE_KEYS = ("valid_loss", "valid_mean_token_accuracy", "generation", "preference", "probes")


def message_data(event: MessageEvent) -> dict[str, Any]:
    """The tenant-visible data of an engine message event."""
    return event.model_dump(mode="json", include=set(MESSAGE_DATA_KEYS), exclude_none=True)


def base_figures(event: BaseEvaluationEvent) -> dict[str, Any]:
    """The starting model's figures as the job stores them (null where not measured)."""
    sent = event.model_dump(mode="json", exclude_unset=True)
    return {k: sent.get(k) for k in BASE_KEYS}


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{float(value):.{digits}f}"


def base_message(event: BaseEvaluationEvent) -> str:
    """`Base model before training: validation loss=..., ...`"""
    parts = []
    if event.valid_loss is not None:
        parts.append(f"validation loss={_fmt(event.valid_loss)}")
    if event.generation is not None:
        parts.append(f"answer token F1={_fmt(event.generation.token_f1)} on {event.generation.n} examples")
    if event.preference is not None:
        parts.append(f"preference accuracy={_fmt(event.preference.accuracy)}")
    if event.probes is not None:
        parts.append(f"general-text loss={_fmt(event.probes.text_loss)}")
        if event.probes.skills_mean is not None:
            parts.append(f"skill probes={_fmt(event.probes.skills_mean, 2)} (chance 0.25)")
    return "Base model before training: " + (", ".join(parts) if parts else "no validation data or probes")


def _change(name: str, pair: Pair[float] | None, digits: int = 3) -> str | None:
    if pair is None or pair.base is None or pair.tuned is None:
        return None
    return f"{name} {_fmt(pair.base, digits)} -> {_fmt(pair.tuned, digits)}"


def summary_message(summary: EvaluationSummary) -> str:
    """`Evaluation of step N (best checkpoint): validation loss 3.1 -> 1.2, ...`"""
    generation, preference, forgetting = summary.generation, summary.preference, summary.forgetting
    parts = [
        _change("validation loss", summary.valid_loss),
        _change("answer token F1", Pair[float](base=generation.base, tuned=generation.tuned) if generation else None),
        _change("preference accuracy", preference.accuracy if preference else None),
        _change("general-text loss", Pair[float](base=forgetting.base, tuned=forgetting.tuned) if forgetting else None),
        _change("skill probes", forgetting.skills if forgetting else None, 2),
    ]
    how = "best checkpoint" if summary.checkpoint_selection == "best" else "last step"
    head = f"Evaluation of step {summary.selected_step} ({how}), base -> tuned: "
    return head + (", ".join(p for p in parts if p) or "nothing to compare")


def summary_for_job(summary: EvaluationSummary) -> dict[str, Any]:
    """The `evaluation` object stored on the job (everything the engine sent, sample answers included)."""
    return summary.model_dump(mode="json")
