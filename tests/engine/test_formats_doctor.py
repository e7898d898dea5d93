"""The dataset doctor: one test per problem class, each naming its lines, on tiny-chat's real tokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.chat import render
from engine.formats.doctor import DoctorLimits, diagnose
from engine.formats.tokenizer import load_text_tokenizer, tiny_chat_text_tokenizer

TOK = tiny_chat_text_tokenizer()


def chat(user: str, answer: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer, **extra}]}


def varied(n: int, start: int = 0) -> list[dict[str, Any]]:
    """Examples that share nothing with one another (distinct questions and answers)."""
    words = ["amber", "cobalt", "falcon", "harbor", "juniper", "lantern", "meadow", "nebula", "orchid", "pepper"]
    return [
        chat(
            f"Where did {words[i % 10]} number {i} go after {words[(i * 3) % 10]} {i * 7}?",
            f"It went to {words[(i * 7) % 10]} street {i * 13}, near {words[(i + 5) % 10]} park.",
        )
        for i in range(start, start + n)
    ]


def write(tmp_path: Path, rows: list[dict[str, Any]], name: str = "train.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def codes(report: Any) -> set[str]:
    return {w.code for w in report.warnings}


def test_clean_data_gets_token_statistics_and_no_warning(tmp_path: Path) -> None:
    rows = varied(12)
    report, _ = diagnose(write(tmp_path, rows), TOK, DoctorLimits(max_seq_length=256))
    lengths = sorted(len(render(TOK, r["messages"])[0]) for r in rows)
    assert report.complete and report.examined == 12 and report.trainable_examples == 12
    assert (report.tokens.max, report.tokens.total, report.tokens.p50) == (lengths[-1], sum(lengths), lengths[5])
    assert report.tokens.p50 <= report.tokens.p95 <= report.tokens.max
    assert report.trainable_tokens == sum(sum(render(TOK, r["messages"])[1][1:]) for r in rows)
    assert report.warnings == [] and report.labels is None


def test_over_long_examples_are_truncated_by_turns_or_dropped_with_line_numbers(tmp_path: Path) -> None:
    rows = varied(4)
    rows.insert(1, chat("long " * 300, "never fits"))  # line 2: one exchange, too long: dropped
    rows.append(
        {
            "messages": [  # line 6: the old exchange goes, the system message and the last answer stay
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "old " * 80},
                {"role": "assistant", "content": "old " * 80},
                {"role": "user", "content": "Capital of Atlantis?"},
                {"role": "assistant", "content": "Poseidonia."},
            ]
        }
    )
    report, _ = diagnose(write(tmp_path, rows), TOK, DoctorLimits(max_seq_length=64))
    assert report.over_max_seq_length.lines == [2, 6]
    assert (report.dropped.count, report.dropped.lines) == (1, [2])
    assert (report.truncated.count, report.truncated.lines) == (1, [6])
    assert report.trainable_examples == 5
    assert {"too_long", "truncated"} <= codes(report)
    assert "line 2" in next(w.message for w in report.warnings if w.code == "too_long")


def test_examples_without_a_trainable_token_are_listed(tmp_path: Path) -> None:
    rows = varied(5)
    rows[2] = chat("hello", "ignored", weight=0)
    rows[4] = chat("bye", "also ignored", weight=0)
    report, _ = diagnose(write(tmp_path, rows), TOK, DoctorLimits(max_seq_length=256))
    assert report.untrainable.lines == [3, 5] and report.trainable_examples == 3
    # Training on inputs makes the prompts carry loss: nothing is untrainable any more.
    inputs, _ = diagnose(write(tmp_path, rows), TOK, DoctorLimits(max_seq_length=256, train_on_inputs=True))
    assert inputs.untrainable.count == 0 and inputs.trainable_tokens > report.trainable_tokens


def test_exact_and_near_duplicates_name_their_lines(tmp_path: Path) -> None:
    rows = varied(8)
    rows.append(rows[1])  # line 9 = line 2
    rows.append(rows[1])  # line 10 = line 2
    near = json.loads(json.dumps(rows[4]))
    near["messages"][0]["content"] += "!!"  # punctuation only: a near-duplicate of line 5
    rows.append(near)  # line 11
    report, _ = diagnose(write(tmp_path, rows), TOK, DoctorLimits(max_seq_length=256))
    assert report.duplicates.count == 2 and report.duplicates.groups == [[2, 9, 10]]
    assert report.near_duplicates.count == 1 and report.near_duplicates.groups == [[5, 11]]
    assert {"duplicates", "near_duplicates"} <= codes(report)


def test_identical_answers_are_measured(tmp_path: Path) -> None:
    rows = [chat(f"Question number {i} about topic {i * 7}?", "I do not know.") for i in range(6)] + varied(4)
    report, _ = diagnose(write(tmp_path, rows), TOK, DoctorLimits(max_seq_length=256))
    assert report.identical_answers.count == 6 and report.identical_answers.share == 0.6
    assert "identical_answers" in codes(report)


def test_classification_data_gets_its_label_distribution_and_a_skew_warning(tmp_path: Path) -> None:
    rows = [
        chat(f"Review {i}: item {i * 3} arrived on day {i}.", "positive" if i % 10 else "negative") for i in range(40)
    ]
    report, _ = diagnose(write(tmp_path, rows), TOK, DoctorLimits(max_seq_length=256))
    assert report.labels is not None
    assert report.labels.counts == {"positive": 36, "negative": 4} and report.labels.skewed
    assert report.labels.majority_share == 0.9 and "label_skew" in codes(report)
    balanced = [
        chat(f"Review {i}: item {i * 3} arrived on day {i}.", "positive" if i % 2 else "negative") for i in range(40)
    ]
    ok, _ = diagnose(write(tmp_path, balanced), TOK, DoctorLimits(max_seq_length=256))
    assert ok.labels is not None and not ok.labels.skewed and "label_skew" not in codes(ok)


def test_validation_overlap_with_training_is_reported(tmp_path: Path) -> None:
    train = varied(10)
    near = json.loads(json.dumps(train[6]))
    near["messages"][1]["content"] = near["messages"][1]["content"].upper()
    valid = [*varied(3, start=100), train[3], near]  # line 4 = training line 4; line 5 ~ training line 7
    _, report = diagnose(
        write(tmp_path, train),
        TOK,
        DoctorLimits(max_seq_length=256),
        validation_path=write(tmp_path, valid, "valid.jsonl"),
    )
    assert report is not None and report.validation_overlap is not None
    assert report.validation_overlap.exact == [[4, 4]] and report.validation_overlap.near == [[7, 5]]
    assert "train_valid_overlap" in codes(report)


def test_preference_pairs_fit_both_sides(tmp_path: Path) -> None:
    rows = [
        {
            "input": {"messages": [{"role": "user", "content": f"Pick a colour for box {i}."}]},
            "preferred_output": [{"role": "assistant", "content": f"Blue for box {i}."}],
            "non_preferred_output": [{"role": "assistant", "content": "long " * (200 if i == 2 else 2)}],
        }
        for i in range(5)
    ]
    report, _ = diagnose(write(tmp_path, rows), TOK, DoctorLimits(max_seq_length=64))
    assert report.method == "dpo" and report.dropped.lines == [3] and report.trainable_examples == 4


def test_caps_stop_the_pass_and_say_so(tmp_path: Path) -> None:
    report, _ = diagnose(write(tmp_path, varied(30)), TOK, DoctorLimits(max_seq_length=256, max_examples=10))
    assert not report.complete and report.examined == 10 and "sampled" in codes(report)
    listed, _ = diagnose(
        write(tmp_path, [chat("x", "y", weight=0)] * 8), TOK, DoctorLimits(max_seq_length=256, max_listed=3)
    )
    assert listed.untrainable.count == 8 and listed.untrainable.lines == [1, 2, 3]


def test_invalid_lines_are_left_to_the_format_report(tmp_path: Path) -> None:
    path = write(tmp_path, varied(3))
    path.write_text(path.read_text() + "{not json\n" + json.dumps({"messages": []}) + "\n")
    report, _ = diagnose(path, TOK, DoctorLimits(max_seq_length=256))
    assert report.examined == 3 and report.complete


@pytest.mark.parametrize("train_on_inputs", [False, True])
def test_light_tokenizer_renders_exactly_like_the_transformers_one(train_on_inputs: bool) -> None:
    from engine.models import load_tokenizer
    from tests.engine.engine_helpers import tiny_chat_path

    hf = load_tokenizer(tiny_chat_path())
    saved = load_text_tokenizer(tiny_chat_path())
    convo = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there, 2+2?"},
        {"role": "assistant", "content": "It is 4."},
        {"role": "user", "content": "ok ünïcode 🙂"},
        {"role": "assistant", "content": "Bye", "weight": 0},
    ]
    expected = render(hf, convo, train_on_inputs=train_on_inputs)
    assert render(saved, convo, train_on_inputs=train_on_inputs) == expected
    assert render(TOK, convo, train_on_inputs=train_on_inputs) == expected  # trained afresh, same merges
    assert saved.eos_token_id == hf.eos_token_id
