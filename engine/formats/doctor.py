"""The dataset doctor: what a dataset will look like to one base model, before any compute is spent.

One pass per file with the model's tokenizer and chat template: tokens per example, what fitting into
max_seq_length does (engine.formats.fitting, the same code training runs), examples with nothing to train on,
exact and near duplicates (MinHash LSH from datasketch), identical answers and, for classification-style data,
the label distribution. Capped by example count and time so a huge file costs a bounded pass.
"""

from __future__ import annotations

import hashlib
import re
import time
from array import array
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from datasketch import LeanMinHash, MinHash, MinHashLSH
from jinja2 import TemplateError

from engine.chat import message_text
from engine.formats.doctor_report import (
    AnswerShare,
    DoctorReport,
    DoctorWarning,
    DuplicateGroups,
    LabelDistribution,
    LineList,
    Overlap,
    TokenStats,
)
from engine.formats.fitting import Fitted, fit_pair, fit_sft, prompt_completion_messages
from engine.formats.framing import LineFramer
from engine.formats.report import DatasetFormat
from engine.formats.rules import RULES, detect_format

_BOM = b"\xef\xbb\xbf"
_CHUNK = 1 << 20
_SCHEME = "affine32"
_WORD = re.compile(r"\w+")
_CLOCK_EVERY = 64  # examples between looks at the clock


@dataclass(frozen=True)
class DoctorLimits:
    """What the doctor measures against, and the caps that bound its cost."""

    max_seq_length: int = 1024
    train_on_inputs: bool = False
    max_examples: int = 50_000
    max_seconds: float = 30.0
    max_line_bytes: int = 1_048_576
    max_listed: int = 50
    near_threshold: float = 0.85
    near_max_examples: int = 20_000
    num_perm: int = 64
    label_max_classes: int = 20
    label_max_chars: int = 64
    skew_ratio: float = 5.0
    identical_answer_share: float = 0.3


@dataclass
class _Lines:
    count: int = 0
    lines: list[int] = field(default_factory=list)

    def add(self, line: int, cap: int) -> None:
        self.count += 1
        if len(self.lines) < cap:
            self.lines.append(line)

    def model(self) -> LineList:
        return LineList(count=self.count, lines=list(self.lines))


def _valid_examples(path: str | Path, max_line_bytes: int) -> Iterator[tuple[int, DatasetFormat, dict[str, Any]]]:
    """(line, format, object) for the lines the format rules accept; the first valid line sets the format."""
    framer = LineFramer(max_line_bytes)
    number = 0
    file_format: DatasetFormat | None = None
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            for raw in framer.feed(chunk) if chunk else framer.finish():
                number += 1
                if raw is None or not raw.strip():
                    continue
                if number == 1 and raw.startswith(_BOM):
                    raw = raw[len(_BOM) :]
                try:
                    obj = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                if not isinstance(obj, dict):
                    continue
                fmt = detect_format(obj)
                if fmt is DatasetFormat.UNKNOWN or (file_format is not None and fmt is not file_format):
                    continue
                if RULES[fmt](obj).issues:
                    continue
                file_format = fmt
                yield number, fmt, obj
            if not chunk:
                return


def _text(message: Mapping[str, Any]) -> str:
    text = message_text(message.get("content"))
    calls = message.get("tool_calls") or message.get("function_call")
    return text + (orjson.dumps(calls, option=orjson.OPT_SORT_KEYS).decode() if calls else "")


@dataclass(frozen=True)
class _Example:
    fitted: Fitted
    answer: str  # the final assistant answer (the chosen one for preference pairs)
    text: str  # the whole example as plain text, for near-duplicate detection


def _prepare(tokenizer: Any, fmt: DatasetFormat, obj: dict[str, Any], limits: DoctorLimits) -> _Example:
    if fmt is DatasetFormat.PREFERENCE:
        prompt = obj["input"]["messages"]
        chosen, rejected = obj["preferred_output"][-1], obj["non_preferred_output"][-1]
        fitted = fit_pair(tokenizer, prompt, chosen, rejected, limits.max_seq_length)
        parts = [_text(m) for m in prompt] + [_text(chosen), _text(rejected)]
        return _Example(fitted, _text(chosen), "\n".join(parts))
    msgs = obj["messages"] if fmt is DatasetFormat.CHAT else prompt_completion_messages(obj)
    fitted = fit_sft(tokenizer, msgs, limits.max_seq_length, train_on_inputs=limits.train_on_inputs)
    answer = next((_text(m) for m in reversed(msgs) if m.get("role") == "assistant"), "")
    return _Example(fitted, answer, "\n".join(_text(m) for m in msgs))


def _shingles(text: str) -> list[str]:
    words = _WORD.findall(text.lower())  # punctuation and spacing do not make two examples different
    if len(words) < 3:
        return [" ".join(words)]
    return [" ".join(words[i : i + 3]) for i in range(len(words) - 2)]


def _hash32(shingle: str) -> int:
    # Python's string hash is salted per process, which is fine: every sketch compared is made in the same
    # process, and it is several times faster than datasketch's default SHA-1 per shingle.
    return hash(shingle) & 0xFFFFFFFF


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        root = self.parent.setdefault(x, x)
        while root != self.parent[root]:
            root = self.parent[root]
        while x != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> list[list[int]]:
        out: dict[int, list[int]] = {}
        for x in self.parent:
            out.setdefault(self.find(x), []).append(x)
        return sorted(sorted(g) for g in out.values() if len(g) > 1)


class Scan:
    """One file's pass; report() turns it into a DoctorReport, overlap() compares a validation scan to it."""

    def __init__(self, tokenizer: Any, limits: DoctorLimits) -> None:
        self.limits = limits
        self._tok = tokenizer
        self.format: DatasetFormat | None = None
        self.examined = 0
        self.complete = True
        self.seconds = 0.0
        self._tokens = array("l")
        self.too_long, self.truncated, self.dropped, self.untrainable = _Lines(), _Lines(), _Lines(), _Lines()
        self.trainable_examples = 0
        self.trainable_tokens = 0
        self._first_line: dict[bytes, int] = {}  # example digest -> first line with it
        self._dup_groups: dict[int, list[int]] = {}
        self._duplicates = 0
        self._answers: Counter[bytes] = Counter()
        self._labels: Counter[str] | None = Counter()
        self._perms: Any = None
        self._minhashes: dict[int, LeanMinHash] = {}
        self.lsh = MinHashLSH(threshold=limits.near_threshold, num_perm=limits.num_perm)
        self._near = _UnionFind()

    # ----- the pass ----------------------------------------------------------------------------------------
    def run(self, path: str | Path) -> Scan:
        start = time.monotonic()
        limits = self.limits
        for line, fmt, obj in _valid_examples(path, limits.max_line_bytes):
            if self.examined >= limits.max_examples or (
                self.examined % _CLOCK_EVERY == 0 and time.monotonic() - start > limits.max_seconds
            ):
                self.complete = False
                break
            self.format = fmt
            self.examined += 1
            try:
                example = _prepare(self._tok, fmt, obj, limits)
            except (ValueError, TypeError, KeyError, IndexError, TemplateError):  # cannot render it: nothing trains
                self.untrainable.add(line, limits.max_listed)
                continue
            self._tally_tokens(line, example.fitted)
            self._tally_content(line, obj, example)
        self.seconds = round(time.monotonic() - start, 3)
        return self

    def _tally_tokens(self, line: int, fitted: Fitted) -> None:
        cap = self.limits.max_listed
        self._tokens.append(fitted.full_tokens)
        if fitted.full_tokens > self.limits.max_seq_length:
            self.too_long.add(line, cap)
        if fitted.outcome == "dropped":
            self.dropped.add(line, cap)
            return
        if fitted.outcome == "truncated":
            self.truncated.add(line, cap)
        if not all(sum(mask[1:]) for mask in fitted.masks):
            self.untrainable.add(line, cap)
            return
        self.trainable_examples += 1
        self.trainable_tokens += fitted.n_trainable

    def _tally_content(self, line: int, obj: dict[str, Any], example: _Example) -> None:
        digest = hashlib.blake2b(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()
        first = self._first_line.setdefault(digest, line)
        if first != line:
            self._duplicates += 1
            self._dup_groups.setdefault(first, [first]).append(line)
        self._answers[hashlib.blake2b(example.answer.strip().encode(), digest_size=16).digest()] += 1
        self._tally_label(example.answer.strip())
        if first == line and len(self._minhashes) < self.limits.near_max_examples:
            minhash = self._minhash(example.text)
            for other in self.lsh.query(minhash):
                if minhash.jaccard(self._minhashes[other]) >= self.limits.near_threshold:
                    self._near.union(other, line)
            self.lsh.insert(line, minhash)
            self._minhashes[line] = minhash

    def _tally_label(self, answer: str) -> None:
        labels = self._labels
        if labels is None:
            return
        if len(answer) > self.limits.label_max_chars or (
            answer not in labels and len(labels) >= self.limits.label_max_classes
        ):
            self._labels = None  # free-form answers: not a classification-style dataset
            return
        labels[answer] += 1

    def _minhash(self, text: str) -> LeanMinHash:
        if self._perms is None:
            self._perms = MinHash(num_perm=self.limits.num_perm, seed=1, hashfunc=_hash32, scheme=_SCHEME).permutations
        # Reusing the permutations skips regenerating them for every example (most of MinHash's set-up cost).
        minhash = MinHash(
            num_perm=self.limits.num_perm, seed=1, hashfunc=_hash32, permutations=self._perms, scheme=_SCHEME
        )
        minhash.update_batch(_shingles(text))
        return LeanMinHash(minhash)

    # ----- results -----------------------------------------------------------------------------------------
    def overlap(self, other: Scan) -> Overlap:
        """Examples of `other` (a validation scan) equal or near-equal to one of this scan's."""
        exact: list[list[int]] = []
        near: list[list[int]] = []
        for digest, line in other._first_line.items():
            if digest in self._first_line:
                exact.append([self._first_line[digest], line])
        exact_lines = {v for _, v in exact}
        for line, minhash in other._minhashes.items():
            if line in exact_lines:
                continue
            threshold = self.limits.near_threshold
            hits = [t for t in self.lsh.query(minhash) if minhash.jaccard(self._minhashes[t]) >= threshold]
            if hits:
                near.append([min(hits), line])
        cap = self.limits.max_listed
        exact.sort(key=lambda pair: pair[1])
        near.sort(key=lambda pair: pair[1])
        return Overlap(exact=exact[:cap], exact_count=len(exact), near=near[:cap], near_count=len(near))

    def report(self, *, model: str | None = None, against: Scan | None = None) -> DoctorReport:
        """The findings; with `against` (the training scan), this scan is a validation file compared to it."""
        limits = self.limits
        cap = limits.max_listed
        near_groups = self._near.groups()
        answers_repeated = sum(n for n in self._answers.values() if n > 1)
        report = DoctorReport(
            model=model,
            method="dpo" if self.format is DatasetFormat.PREFERENCE else "supervised",
            max_seq_length=limits.max_seq_length,
            train_on_inputs=limits.train_on_inputs,
            examined=self.examined,
            complete=self.complete,
            seconds=self.seconds,
            tokens=self._token_stats(),
            over_max_seq_length=self.too_long.model(),
            truncated=self.truncated.model(),
            dropped=self.dropped.model(),
            untrainable=self.untrainable.model(),
            trainable_examples=self.trainable_examples,
            trainable_tokens=self.trainable_tokens,
            duplicates=DuplicateGroups(
                count=self._duplicates, groups=[g for _, g in sorted(self._dup_groups.items())][:cap]
            ),
            near_duplicates=DuplicateGroups(count=sum(len(g) - 1 for g in near_groups), groups=near_groups[:cap]),
            near_duplicate_threshold=limits.near_threshold,
            identical_answers=AnswerShare(
                count=answers_repeated, share=round(answers_repeated / self.examined, 4) if self.examined else 0.0
            ),
            labels=self._label_distribution(),
            validation_overlap=against.overlap(self) if against is not None else None,
        )
        report.warnings = warnings_for(report, limits)
        return report

    def _token_stats(self) -> TokenStats:
        if not self._tokens:
            return TokenStats()
        ordered = sorted(self._tokens)
        n = len(ordered)
        total = sum(ordered)
        return TokenStats(
            p50=ordered[(n - 1) // 2],
            p95=ordered[min(n - 1, -(-95 * n // 100) - 1)],
            max=ordered[-1],
            mean=round(total / n, 2),
            total=total,
        )

    def _label_distribution(self) -> LabelDistribution | None:
        labels = self._labels
        # A handful of distinct short answers, each seen several times on average: classification-style data.
        if not labels or len(labels) < 2 or self.examined < 3 * len(labels):
            return None
        counts = dict(labels.most_common())
        majority, minority = max(counts.values()), min(counts.values())
        return LabelDistribution(
            counts=counts,
            majority_share=round(majority / self.examined, 4),
            skewed=majority / minority >= self.limits.skew_ratio,
        )


def _lines(lines: list[int], count: int) -> str:
    shown = ", ".join(str(n) for n in lines)
    return f"line{'s' if count > 1 else ''} {shown}" + (f" and {count - len(lines)} more" if count > len(lines) else "")


def warnings_for(report: DoctorReport, limits: DoctorLimits) -> list[DoctorWarning]:
    """The findings worth a user's attention, each with a code and the line numbers."""
    out: list[DoctorWarning] = []
    msl = report.max_seq_length

    def warn(code: str, message: str) -> None:
        out.append(DoctorWarning(code=code, message=message))

    if report.dropped.count:
        warn(
            "too_long",
            f"{report.dropped.count} example(s) do not fit max_seq_length={msl} tokens even with only "
            "their last exchange and will be left out: "
            f"{_lines(report.dropped.lines, report.dropped.count)}",
        )
    if report.truncated.count:
        warn(
            "truncated",
            f"{report.truncated.count} example(s) are longer than max_seq_length={msl} tokens and will "
            f"lose their oldest turns (system message kept): "
            f"{_lines(report.truncated.lines, report.truncated.count)}",
        )
    if report.untrainable.count:
        warn(
            "no_trainable_tokens",
            f"{report.untrainable.count} example(s) have no token to train on once weights "
            f"and masking apply: {_lines(report.untrainable.lines, report.untrainable.count)}",
        )
    if report.duplicates.count:
        groups = "; ".join("=".join(str(n) for n in g) for g in report.duplicates.groups[:5])
        warn("duplicates", f"{report.duplicates.count} example(s) repeat an earlier one exactly: lines {groups}")
    if report.near_duplicates.count:
        groups = "; ".join("~".join(str(n) for n in g) for g in report.near_duplicates.groups[:5])
        warn(
            "near_duplicates",
            f"{report.near_duplicates.count} example(s) are near-duplicates (Jaccard >= "
            f"{report.near_duplicate_threshold}) of another: lines {groups}",
        )
    labels = report.labels
    if labels is None and report.identical_answers.share >= limits.identical_answer_share:
        warn(
            "identical_answers",
            f"{report.identical_answers.share:.0%} of examples share their answer with another "
            "example; the model will learn to give those answers whatever the question",
        )
    if labels is not None and labels.skewed:
        top = next(iter(labels.counts))
        warn(
            "label_skew",
            f"answers come from {len(labels.counts)} values and are skewed: {top!r} is "
            f"{labels.majority_share:.0%} of examples (counts {labels.counts})",
        )
    overlap = report.validation_overlap
    if overlap is not None and (overlap.exact_count or overlap.near_count):
        pairs = ", ".join(f"{t}->{v}" for t, v in (overlap.exact + overlap.near)[:5])
        warn(
            "train_valid_overlap",
            f"{overlap.exact_count} validation example(s) also appear in the training file "
            f"and {overlap.near_count} nearly do (training line->validation line: {pairs}); "
            "validation scores will look better than they are",
        )
    if not report.complete:
        warn("sampled", f"the doctor examined the first {report.examined} examples only (its example or time cap)")
    return out


def diagnose(
    path: str | Path,
    tokenizer: Any,
    limits: DoctorLimits | None = None,
    *,
    model: str | None = None,
    validation_path: str | Path | None = None,
) -> tuple[DoctorReport, DoctorReport | None]:
    """The training file's report and, if given, the validation file's (with its overlap with training)."""
    limits = limits or DoctorLimits()
    train = Scan(tokenizer, limits).run(path)
    if validation_path is None:
        return train.report(model=model), None
    valid = Scan(tokenizer, limits).run(validation_path)
    return train.report(model=model), valid.report(model=model, against=train)
