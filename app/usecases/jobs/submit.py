"""Submit jobs: create, validate files, read and list."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from app.core.errors import InvalidRequest, not_found
from app.core.ids import new_id, now_ns
from app.core.settings import Settings
from app.core.storage import BlobStore
from app.db.models import FineTuningJob, RegisteredModel, StoredFile
from app.usecases import doctor as doctor_uc
from app.usecases.jobs.events import add_event
from app.usecases.jobs.request import JobRequest
from app.usecases.jobs.state import JobStatus, Trigger, initial, move
from app.usecases.paging import Slice
from engine.formats import BlockingError, DatasetReport, check_method_compat, check_path
from engine.formats.verdict import invalid_file


def _resolve_model(session: Session, settings: Settings, project_id: str, model: str) -> tuple[str, str | None]:
    """(base model, init_from adapter dir) for an offered base model or this project's fine-tuned model."""
    if model in settings.base_model_map:
        return model, None
    row = session.get(RegisteredModel, model)
    if row is not None and row.project_id == project_id and row.deleted_ns is None:
        return row.base_model, row.artifact_dir
    raise InvalidRequest(
        f"Model {model} is not available for fine-tuning or does not exist.",
        param="model",
        code="model_not_available",
    )


def _check_file(session: Session, project_id: str, file_id: str, param: str) -> StoredFile:
    row = session.get(StoredFile, file_id)
    if row is None or row.project_id != project_id:
        raise InvalidRequest(f"invalid {param}: {file_id}", param=param, code="invalid_file")
    if row.purpose != "fine-tune":
        raise InvalidRequest(
            f"File {file_id} has purpose '{row.purpose}', but {param} needs a file with purpose 'fine-tune'.",
            param=param,
            code="invalid_file_purpose",
        )
    return row


def create_job(
    session: Session, settings: Settings, project_id: str, request: JobRequest, *, job_id: str | None = None
) -> FineTuningJob:
    """Insert the job in `validating_files`; the caller validates and rings the doorbell after commit."""
    base_model, init_from = _resolve_model(session, settings, project_id, request.model)
    _check_file(session, project_id, request.training_file, "training_file")
    if request.validation_file:
        _check_file(session, project_id, request.validation_file, "validation_file")
    job = FineTuningJob(
        id=job_id or new_id("ftjob-"),
        project_id=project_id,
        status=initial(),
        model=request.model,
        base_model=base_model,
        init_from=init_from,
        training_file=request.training_file,
        validation_file=request.validation_file,
        method=request.method,
        resolved=None,
        seed=request.seed,
        suffix=request.suffix,
        metadata_=request.metadata,
        integrations=request.integrations,
        result_files=[],
        created_ns=now_ns(),
        attempt=0,
        max_attempts=settings.max_attempts,
        cancel_requested=False,
        pause_requested=False,
    )
    session.add(job)
    session.flush()
    add_event(session, job.id, "created", f"Created fine-tuning job: {job.id}", data={})
    files = f"Validating training file: {job.training_file}"
    if job.validation_file:
        files += f" and validation file: {job.validation_file}"
    add_event(session, job.id, "validating", files, data={})
    return job


def get_job(session: Session, project_id: str, job_id: str) -> FineTuningJob:
    row = session.get(FineTuningJob, job_id)
    if row is None or row.project_id != project_id:
        raise not_found("fine_tuning.job", job_id, param="fine_tuning_job_id")
    return row


def _file_error(
    settings: Settings, storage: BlobStore, row: StoredFile, method_type: str, param: str
) -> BlockingError | None:
    """Why this file cannot train (format, example count, method mismatch), naming lines; None if it can."""
    report = DatasetReport.model_validate(row.report) if row.report else None
    if param == "validation_file" and (report is None or not report.can_train):
        # Re-check as a validation file: its own error code, and any example count of at least one.
        report = check_path(
            storage.path_for(row.storage_key),
            max_line_bytes=settings.max_line_bytes,
            max_errors=settings.max_report_errors,
            min_examples=1,
            param="validation_file",
        )
    elif report is None:
        report = check_path(
            storage.path_for(row.storage_key),
            max_line_bytes=settings.max_line_bytes,
            max_errors=settings.max_report_errors,
            min_examples=settings.min_examples,
        )
    if report.blocking_error is not None:
        return report.blocking_error
    return check_method_compat(report, method_type, param=param, file_id=row.id)  # type: ignore[arg-type]


def validate_job(session: Session, settings: Settings, storage: BlobStore, job_id: str) -> JobStatus | None:
    """Move a `validating_files` job to `queued` or `failed`; returns the new status (None if it moved on)."""
    job = session.get(FineTuningJob, job_id)
    if job is None or job.status != JobStatus.VALIDATING_FILES:
        return None
    method_type = str(job.method["type"])
    error: BlockingError | None = None
    for file_id, param in ((job.training_file, "training_file"), (job.validation_file, "validation_file")):
        if file_id is None:
            continue
        row = session.get(StoredFile, file_id)
        if row is None:
            kind = "validation" if param == "validation_file" else "training"
            error = BlockingError(
                code=f"invalid_{kind}_file",  # type: ignore[arg-type]
                message=f"The job failed due to an invalid {kind} file. File {file_id} no longer exists.",
                param=param,  # type: ignore[arg-type]
            )
        else:
            error = _file_error(settings, storage, row, method_type, param)
        if error is not None:
            break
    doctor: dict[str, Any] | None = None
    warnings: list[tuple[str, str, str]] = []
    if error is None and settings.doctor_enabled:
        error, doctor, warnings = _run_doctor(session, settings, storage, job)
    now = now_ns()
    new_status = JobStatus.FAILED if error else JobStatus.QUEUED
    values: dict[str, Any] = {}
    if doctor is not None:
        values["doctor"] = doctor
    if error:
        values.update(error=error.model_dump(), finished_ns=now)
    else:
        values.update(enqueued_ns=now)
    if not move(session, job, new_status, trigger=Trigger.VALIDATE, expect=JobStatus.VALIDATING_FILES, **values):
        return None  # cancelled meanwhile
    for file_label, code, message in warnings:
        add_event(session, job_id, "doctor", f"{file_label}: {message}", level="warn", data={"code": code})
    if error:
        add_event(session, job_id, "failed", error.message, level="error", data={"code": error.code})
    else:
        estimate = {"estimated_trained_tokens": doctor["estimated_trained_tokens"]} if doctor else {}
        add_event(session, job_id, "validated", "Files validated, moving job to queued state", data=estimate)
    return new_status


def _run_doctor(
    session: Session, settings: Settings, storage: BlobStore, job: FineTuningJob
) -> tuple[BlockingError | None, dict[str, Any] | None, list[tuple[str, str, str]]]:
    """The dataset doctor on the job's files: (blocking error, summary for job.doctor, warnings to emit)."""
    training = session.get(StoredFile, job.training_file)
    validation = session.get(StoredFile, job.validation_file) if job.validation_file else None
    if training is None:
        return None, None, []
    hyperparameters = dict(job.method[job.method["type"]].get("hyperparameters") or {})
    diagnosis = doctor_uc.diagnose_job(settings, storage, job.base_model, hyperparameters, training, validation)
    if diagnosis is None:  # an operator model without a local fast tokenizer: the engine checks at load time
        return None, None, []
    warnings = [("Training file", w.code, w.message) for w in diagnosis.training.warnings]
    error: BlockingError | None = None
    detail = doctor_uc.untrainable_detail(diagnosis.training)
    if detail is not None:
        error = invalid_file("training_file", detail)
    if diagnosis.validation is not None:
        warnings += [("Validation file", w.code, w.message) for w in diagnosis.validation.warnings]
        detail = doctor_uc.untrainable_detail(diagnosis.validation)
        if error is None and detail is not None:
            error = invalid_file("validation_file", detail)
    summary = {
        "training": diagnosis.training.model_dump(mode="json"),
        "validation": diagnosis.validation.model_dump(mode="json") if diagnosis.validation else None,
        "estimated_trained_tokens": doctor_uc.estimated_trained_tokens(diagnosis, hyperparameters),
    }
    return error, summary, warnings


def _metadata_matches(job: FineTuningJob, wanted: dict[str, str] | None, null_only: bool) -> bool:
    if null_only:
        return job.metadata_ is None
    if not wanted:
        return True
    have = job.metadata_ or {}
    return all(have.get(k) == v for k, v in wanted.items())


def list_jobs(
    session: Session,
    project_id: str,
    *,
    after: str | None,
    limit: int,
    metadata: dict[str, str] | None = None,
    metadata_null: bool = False,
) -> Slice[FineTuningJob]:
    """Newest first; metadata filters are applied while scanning so pages stay exact."""
    query = select(FineTuningJob).where(FineTuningJob.project_id == project_id)
    key = tuple_(FineTuningJob.created_ns, FineTuningJob.id)
    if after:
        cursor = session.get(FineTuningJob, after)
        if cursor is None or cursor.project_id != project_id:
            raise not_found("fine_tuning.job", after, param="after")
        query = query.where(key < tuple_(cursor.created_ns, cursor.id))
    query = query.order_by(FineTuningJob.created_ns.desc(), FineTuningJob.id.desc())
    if not metadata and not metadata_null:
        rows = list(session.scalars(query.limit(limit + 1)))
        return Slice.of(rows, limit)
    found: list[FineTuningJob] = []
    for job in session.scalars(query.execution_options(yield_per=200)):
        if _metadata_matches(job, metadata, metadata_null):
            found.append(job)
            if len(found) > limit:
                break
    return Slice.of(found, limit)
