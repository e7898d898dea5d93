"""The dataset doctor for the control plane: per-model token reports of stored files, and the job-time check."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.core.errors import InvalidRequest
from app.core.settings import Settings
from app.core.storage import BlobStore
from app.db.models import StoredFile
from engine.formats.doctor import DoctorLimits, diagnose
from engine.formats.doctor_report import DoctorReport
from engine.formats.tokenizer import text_tokenizer_for
from engine.spec import Hyperparameters, auto_n_epochs

_DEFAULTS = Hyperparameters()


def limits(settings: Settings, *, max_seq_length: int, train_on_inputs: bool) -> DoctorLimits:
    return DoctorLimits(
        max_seq_length=max_seq_length,
        train_on_inputs=train_on_inputs,
        max_examples=settings.doctor_max_examples,
        max_seconds=settings.doctor_max_seconds,
        max_line_bytes=settings.max_line_bytes,
        max_listed=settings.doctor_max_listed_lines,
        near_threshold=settings.doctor_near_duplicate_threshold,
        near_max_examples=settings.doctor_near_duplicate_max_examples,
        label_max_classes=settings.doctor_label_max_classes,
        skew_ratio=settings.doctor_label_skew_ratio,
        identical_answer_share=settings.doctor_identical_answer_share,
    )


@dataclass(frozen=True)
class ReportQuery:
    """What a token report is asked for: which base model, and the two knobs that change what is trained."""

    model: str
    max_seq_length: int
    train_on_inputs: bool


def parse_query(
    settings: Settings, model: str | None, max_seq_length: str | None, train_on_inputs: str | None
) -> ReportQuery:
    """Check the report's query parameters; each refusal names its parameter."""
    offered = list(settings.base_model_map)
    chosen = model if model is not None else (offered[0] if offered else "")
    if chosen not in settings.base_model_map:
        raise InvalidRequest(f"Model {chosen!r} is not an offered base model; choose one of {offered}.", param="model")
    length = _DEFAULTS.max_seq_length
    if max_seq_length is not None:
        low, high = 8, 131072
        if not max_seq_length.isdigit() or not low <= int(max_seq_length) <= high:
            raise InvalidRequest(f"max_seq_length must be an integer between {low} and {high}.", param="max_seq_length")
        length = int(max_seq_length)
    inputs = False
    if train_on_inputs is not None:
        if train_on_inputs not in ("true", "false"):
            raise InvalidRequest("train_on_inputs must be 'true' or 'false'.", param="train_on_inputs")
        inputs = train_on_inputs == "true"
    return ReportQuery(model=chosen, max_seq_length=length, train_on_inputs=inputs)


def _tokenizer(settings: Settings, base_model: str) -> Any:
    return text_tokenizer_for(settings.base_model_map.get(base_model, base_model), settings.data_dir)


def token_report(settings: Settings, storage: BlobStore, row: StoredFile, query: ReportQuery) -> dict[str, Any] | None:
    """The doctor's findings on a stored file for one base model (None when its tokenizer is not available)."""
    try:
        tokenizer = _tokenizer(settings, query.model)
    except ValueError:
        return None
    report, _ = diagnose(
        storage.path_for(row.storage_key),
        tokenizer,
        limits(settings, max_seq_length=query.max_seq_length, train_on_inputs=query.train_on_inputs),
        model=query.model,
    )
    return report.model_dump(mode="json")


@dataclass(frozen=True)
class JobDiagnosis:
    training: DoctorReport
    validation: DoctorReport | None


def diagnose_job(
    settings: Settings,
    storage: BlobStore,
    base_model: str,
    hyperparameters: dict[str, Any],
    training: StoredFile,
    validation: StoredFile | None,
) -> JobDiagnosis | None:
    """Run the doctor on a job's files for its base model and hyperparameters (None if no tokenizer is local)."""
    try:
        tokenizer = _tokenizer(settings, base_model)
    except ValueError:
        return None
    length = hyperparameters.get("max_seq_length", _DEFAULTS.max_seq_length)
    inputs = bool(hyperparameters.get("train_on_inputs", _DEFAULTS.train_on_inputs))
    train, valid = diagnose(
        storage.path_for(training.storage_key),
        tokenizer,
        limits(settings, max_seq_length=int(length), train_on_inputs=inputs),
        model=base_model,
        validation_path=storage.path_for(validation.storage_key) if validation is not None else None,
    )
    return JobDiagnosis(training=train, validation=valid)


def estimated_trained_tokens(diagnosis: JobDiagnosis, hyperparameters: dict[str, Any]) -> int:
    """Tokens carrying loss over the whole run, as the trainer will count them (epochs resolved as it will)."""
    train = diagnosis.training
    split = float(hyperparameters.get("validation_split") or 0.0)
    kept = max(1, round(train.trainable_examples * (1 - split)))
    epochs = hyperparameters.get("n_epochs", "auto")
    n_epochs = auto_n_epochs(kept) if epochs == "auto" else int(epochs)
    return round(train.trainable_tokens * (1 - split)) * n_epochs


def untrainable_detail(report: DoctorReport) -> str | None:
    """Why a fully examined file has no example to train on, naming lines; None when it has one."""
    if not report.complete or report.trainable_examples > 0:
        return None
    parts = []
    if report.dropped.count:
        parts.append(
            f"{report.dropped.count} do not fit max_seq_length={report.max_seq_length} tokens even with "
            f"only their last exchange (lines {_listed(report.dropped.lines)})"
        )
    if report.untrainable.count:
        parts.append(
            f"{report.untrainable.count} have no token to train on once weights and masking apply "
            f"(lines {_listed(report.untrainable.lines)})"
        )
    return f"No example can be trained on: of {report.examined} examples, " + " and ".join(parts) + "."


def _listed(lines: list[int]) -> str:
    return ", ".join(str(n) for n in lines[:20]) + (", ..." if len(lines) > 20 else "")
