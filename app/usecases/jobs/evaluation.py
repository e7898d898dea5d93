"""The engine's evaluation events as job events and the job's `evaluation` summary (an extension)."""

from __future__ import annotations

from typing import Any

# Keys of an engine message event that may reach tenants: codes, steps, counts and figures, never paths.
MESSAGE_DATA_KEYS = ("code", "step", "count", "lines", "file", "base", "tuned")


def message_data(event: dict[str, Any]) -> dict[str, Any]:
    """The tenant-visible data of an engine message event."""
    return {k: event[k] for k in MESSAGE_DATA_KEYS if event.get(k) is not None}


def _fmt(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{float(value):.{digits}f}"


def base_message(event: dict[str, Any]) -> str:
    """`Base model before training: validation loss=..., ...`"""
    parts = []
    if event.get("valid_loss") is not None:
        parts.append(f"validation loss={_fmt(event['valid_loss'])}")
    generation = event.get("generation") or {}
    if generation.get("token_f1") is not None:
        parts.append(f"answer token F1={_fmt(generation['token_f1'])} on {generation.get('n', 0)} examples")
    preference = event.get("preference") or {}
    if preference.get("accuracy") is not None:
        parts.append(f"preference accuracy={_fmt(preference['accuracy'])}")
    probes = event.get("probes") or {}
    if probes.get("text_loss") is not None:
        parts.append(f"general-text loss={_fmt(probes['text_loss'])}")
    if probes.get("skills_mean") is not None:
        parts.append(f"skill probes={_fmt(probes['skills_mean'], 2)} (chance 0.25)")
    return "Base model before training: " + (", ".join(parts) if parts else "no validation data or probes")


def _change(name: str, pair: dict[str, Any] | None, digits: int = 3) -> str | None:
    if not pair or pair.get("base") is None or pair.get("tuned") is None:
        return None
    return f"{name} {_fmt(pair['base'], digits)} -> {_fmt(pair['tuned'], digits)}"


def summary_message(summary: dict[str, Any]) -> str:
    """`Evaluation of step N (best checkpoint): validation loss 3.1 -> 1.2, ...`"""
    generation = summary.get("generation") or {}
    preference = summary.get("preference") or {}
    forgetting = summary.get("forgetting") or {}
    parts = [
        _change("validation loss", summary.get("valid_loss")),
        _change("answer token F1", {"base": generation.get("base"), "tuned": generation.get("tuned")}),
        _change("preference accuracy", preference.get("accuracy")),
        _change("general-text loss", {"base": forgetting.get("base"), "tuned": forgetting.get("tuned")}),
        _change("skill probes", forgetting.get("skills"), 2),
    ]
    how = "best checkpoint" if summary.get("checkpoint_selection") == "best" else "last step"
    head = f"Evaluation of step {summary.get('selected_step')} ({how}), base -> tuned: "
    return head + (", ".join(p for p in parts if p) or "nothing to compare")


def summary_for_job(summary: dict[str, Any]) -> dict[str, Any]:
    """The `evaluation` object stored on the job (everything the engine sent, sample answers included)."""
    return dict(summary)
