"""Dataset loading for training: JSONL lines -> tokenized SFT examples or DPO pairs, with a report."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.formats.fitting import Fitted, fit_pair, fit_sft, prompt_completion_messages


class DatasetError(ValueError):
    """The dataset cannot be used for this method (bad JSON, wrong format, nothing to train on)."""


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; raises ValueError naming the line on bad input."""
    from engine.formats import iter_examples

    return iter_examples(path)


def _format_of(obj: dict[str, Any]) -> str:
    from engine.formats import detect_format

    return str(detect_format(obj).value)


@dataclass
class Example:
    """One tokenized sequence and its 0/1 loss mask."""

    ids: list[int]
    mask: list[int]
    line: int

    @property
    def n_trainable(self) -> int:
        return sum(self.mask[1:])


@dataclass
class Pair:
    """A DPO preference pair sharing one prompt."""

    chosen: Example
    rejected: Example
    line: int


@dataclass
class LoadReport:
    """What happened to the lines while tokenizing; surfaced as message events before training."""

    n_lines: int = 0
    truncated_lines: list[int] = field(default_factory=list)  # oldest turns dropped to fit
    dropped_lines: list[int] = field(default_factory=list)  # too long even with only the last exchange
    untrainable_lines: list[int] = field(default_factory=list)


def _example(fitted: Fitted, side: int, line: int) -> Example:
    return Example(ids=fitted.ids[side], mask=fitted.masks[side], line=line)


def _tally(fitted: Fitted, line: int, report: LoadReport) -> bool:
    """Record what fitting did to a line; True when it is kept for training."""
    if fitted.outcome == "dropped":
        report.dropped_lines.append(line)
        return False
    if fitted.outcome == "truncated":
        report.truncated_lines.append(line)
    if fitted.n_trainable == 0 or not all(sum(mask[1:]) for mask in fitted.masks):
        report.untrainable_lines.append(line)
        return False
    return True


def _sft_messages(obj: dict[str, Any], fmt: str, line: int) -> list[dict[str, Any]]:
    if fmt == "chat":
        msgs = obj.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise DatasetError(f"line {line}: 'messages' must be a non-empty list")
        return msgs
    if fmt == "prompt_completion":
        return prompt_completion_messages(obj)
    raise DatasetError(f"line {line}: a {fmt} line cannot be used for supervised fine-tuning")


def load_sft(
    path: str | Path, tokenizer: Any, *, max_seq_length: int, train_on_inputs: bool
) -> tuple[list[Example], LoadReport]:
    """Tokenize a chat or prompt/completion JSONL file, fitting each example into max_seq_length.

    Over-long conversations lose their oldest turns (engine.formats.fitting); examples that cannot fit, or have
    no trainable token, are left out and listed in the report.
    """
    report = LoadReport()
    out: list[Example] = []
    try:
        for line, obj in iter_jsonl(path):
            report.n_lines += 1
            msgs = _sft_messages(obj, _format_of(obj), line)
            fitted = fit_sft(tokenizer, msgs, max_seq_length, train_on_inputs=train_on_inputs)
            if _tally(fitted, line, report):
                out.append(_example(fitted, 0, line))
    except (ValueError, TypeError) as err:  # bad JSON or a template failure both name the line
        raise DatasetError(str(err)) from None
    return out, report


def _pref_messages(obj: dict[str, Any], line: int) -> tuple[list[Any], Any, Any]:
    inp = obj.get("input")
    msgs = inp.get("messages") if isinstance(inp, dict) else None
    pref, non = obj.get("preferred_output"), obj.get("non_preferred_output")
    if not isinstance(msgs, list) or not isinstance(pref, list) or not isinstance(non, list) or not pref or not non:
        raise DatasetError(
            f"line {line}: a preference line needs input.messages, preferred_output and non_preferred_output"
        )
    return msgs, pref[-1], non[-1]


def load_dpo(path: str | Path, tokenizer: Any, *, max_seq_length: int) -> tuple[list[Pair], LoadReport]:
    """Tokenize a preference JSONL file into (chosen, rejected) sequences, loss mask on the completion only."""
    report = LoadReport()
    out: list[Pair] = []
    try:
        for line, obj in iter_jsonl(path):
            report.n_lines += 1
            if _format_of(obj) != "preference":
                raise DatasetError(f"line {line}: DPO needs the preference format (input, preferred_output, ...)")
            msgs, pref, non = _pref_messages(obj, line)
            fitted = fit_pair(tokenizer, msgs, pref, non, max_seq_length)
            if _tally(fitted, line, report):
                out.append(Pair(chosen=_example(fitted, 0, line), rejected=_example(fitted, 1, line), line=line))
    except (ValueError, TypeError) as err:
        raise DatasetError(str(err)) from None
    return out, report
