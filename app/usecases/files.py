"""Files: streamed uploads with dataset checks, listing, retrieval, deletion."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, get_args

from pydantic import ValidationError
from sqlalchemy import or_, select, tuple_
from sqlalchemy.orm import Session

from app.core.echo import clipped
from app.core.errors import InvalidRequest, not_found
from app.core.ids import new_id, now_ns, ns_to_s
from app.core.json_body import parse_json_body
from app.core.settings import Settings
from app.core.storage import BlobStore, IncomingBlob
from app.db.models import FineTuningJob, StoredFile
from app.db.session import Database
from app.usecases import doctor as doctor_uc
from app.usecases.idempotency import body_hash, check_key, run_once
from app.usecases.jobs.state import TERMINAL
from app.usecases.paging import Slice
from app.wire.base import refusal
from app.wire.files import EXPIRY_MAX_S, EXPIRY_MIN_S, FileExpiresAfter, FileObject, FileReport, UploadPurpose
from engine.formats import DatasetChecker

UPLOAD_PURPOSES: tuple[str, ...] = get_args(UploadPurpose)
INTERNAL_PURPOSES = ("fine-tune-results",)
UPLOAD_ROUTE = "POST /v1/files"
BATCH_DEFAULT_EXPIRY_S = 30 * 24 * 3600
_UNSAFE_CHARS = re.compile(r"[\x00-\x1f\x7f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def clean_filename(raw: str | None) -> str:
    """Keep the client's name as metadata only: last path segment, NFC, no control or bidi characters."""
    name = unicodedata.normalize("NFC", raw or "")
    name = re.split(r"[\\/]", name)[-1]
    name = _UNSAFE_CHARS.sub("", name).strip()
    if name in ("", ".", ".."):
        name = "upload"
    return name[:255]


@dataclass(frozen=True)
class ExpiresAfter:
    anchor: str
    seconds: int


def parse_expires_after(anchor: str | None, seconds: str | None) -> ExpiresAfter | None:
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise InvalidRequest("expires_after[anchor] must be 'created_at'.", param="expires_after[anchor]")
    try:
        value = int(seconds or "")
    except ValueError:
        raise InvalidRequest("expires_after[seconds] must be an integer.", param="expires_after[seconds]") from None
    if not EXPIRY_MIN_S <= value <= EXPIRY_MAX_S:
        raise InvalidRequest(
            f"expires_after[seconds] must be between {EXPIRY_MIN_S} and {EXPIRY_MAX_S}.",
            param="expires_after[seconds]",
        )
    return ExpiresAfter(anchor=anchor, seconds=value)


def form_expires_after(fields: dict[str, str]) -> ExpiresAfter | None:
    """`expires_after` as the SDK sends it (`expires_after[anchor]`, `expires_after[seconds]`) or as one JSON part."""
    if "expires_after" not in fields:
        return parse_expires_after(fields.get("expires_after[anchor]"), fields.get("expires_after[seconds]"))
    if "expires_after[anchor]" in fields or "expires_after[seconds]" in fields:
        raise InvalidRequest("Send expires_after once: as JSON or as its two bracketed fields.", param="expires_after")
    try:
        value = FileExpiresAfter.model_validate(parse_json_body(fields["expires_after"].encode()), strict=True)
    except ValidationError as err:
        raise refusal(err, prefix="expires_after") from None
    return ExpiresAfter(anchor=value.anchor, seconds=value.seconds)


def validate_purpose(purpose: str | None) -> str:
    if not purpose:
        raise InvalidRequest("'purpose' is a required property", param="purpose")
    if purpose not in UPLOAD_PURPOSES:
        raise InvalidRequest(f"'{clipped(purpose)}' is not one of {list(UPLOAD_PURPOSES)} - 'purpose'", param="purpose")
    return purpose


def file_object(row: StoredFile) -> FileObject:
    """The wire shape of a stored file, exactly as OpenAI's SDK expects it."""
    return FileObject(
        id=row.id,
        bytes=row.bytes,
        created_at=ns_to_s(row.created_ns),
        filename=row.filename,
        purpose=row.purpose,  # type: ignore[arg-type]  # reason: rows are written with checked purposes only
        status=row.status,  # type: ignore[arg-type]  # reason: rows are written as "processed" only
        status_details=row.status_details,
        expires_at=row.expires_at,
    )


class FileUpload:
    """One upload in flight: bytes go to a temp blob and, for fine-tune files, through the dataset checker."""

    def __init__(self, storage: BlobStore, settings: Settings) -> None:
        self._settings = settings
        self._blob: IncomingBlob = storage.begin(settings.max_upload_bytes)
        self._checker: DatasetChecker | None = None
        self._check_started_late = False
        self._content = hashlib.sha256()  # identifies the request for Idempotency-Key

    def check_as_dataset(self) -> None:
        """Check while streaming; must be called before the first byte, else the check runs after upload."""
        if self._blob.size:
            self._check_started_late = True
            return
        self._checker = self._new_checker()

    def _new_checker(self) -> DatasetChecker:
        return DatasetChecker(
            max_line_bytes=self._settings.max_line_bytes,
            max_errors=self._settings.max_report_errors,
            min_examples=self._settings.min_examples,
        )

    def write(self, chunk: bytes) -> None:
        self._blob.write(chunk)
        self._content.update(chunk)
        if self._checker is not None:
            self._checker.feed(chunk)

    @property
    def size(self) -> int:
        return self._blob.size

    @property
    def content_sha256(self) -> str:
        return self._content.hexdigest()

    def abort(self) -> None:
        self._blob.abort()

    def finish(
        self,
        session: Session,
        storage: BlobStore,
        project_id: str,
        purpose: str,
        filename: str | None,
        expires_after: ExpiresAfter | None,
    ) -> StoredFile:
        """Run the dataset check if it has not run yet, store the blob, insert the row."""
        report: dict[str, Any] | None = None
        if purpose == "fine-tune":
            if self._checker is None:
                # The purpose arrived after the file part: check the temp file in one more streaming pass.
                self._checker = self._new_checker()
                with open(self._blob.temp_path, "rb") as handle:
                    while chunk := handle.read(1 << 20):
                        self._checker.feed(chunk)
            report = self._checker.finish().model_dump(mode="json")
        file_id = new_id("file-")
        created = now_ns()
        expires = expires_after.seconds if expires_after else (BATCH_DEFAULT_EXPIRY_S if purpose == "batch" else None)
        self._blob.commit(file_id)
        row = StoredFile(
            id=file_id,
            project_id=project_id,
            purpose=purpose,
            filename=clean_filename(filename),
            bytes=self._blob.size,
            sha256=self._blob.sha256,
            storage_key=file_id,
            status="processed",
            status_details=_blocking_message(report),
            created_ns=created,
            expires_at=ns_to_s(created) + expires if expires else None,
            data_format=report["format"] if report else None,
            n_examples=report["n_examples"] if report else None,
            report=report,
        )
        try:
            session.add(row)
            session.flush()
        except BaseException:
            storage.delete(file_id)
            raise
        return row


@dataclass(frozen=True)
class UploadedForm:
    """What the multipart parser read besides the file's bytes."""

    fields: dict[str, str]
    filename: str | None
    file_seen: bool


def store_upload(
    db: Database,
    storage: BlobStore,
    project_id: str,
    upload: FileUpload,
    form: UploadedForm,
    idempotency_key: str | None,
) -> FileObject:
    """Check the form's fields, then store the streamed upload once per Idempotency-Key; aborts it on refusal."""
    fields, filename = form.fields, form.filename
    try:
        if not form.file_seen:
            raise InvalidRequest("'file' is a required property", param="file")
        purpose = validate_purpose(fields.get("purpose"))
        expires = form_expires_after(fields)
        key = check_key(idempotency_key)
        digest = body_hash(UPLOAD_ROUTE, [purpose, filename, upload.content_sha256, expires])
        stored: list[str] = []

        def create(session: Session) -> str:
            row = upload.finish(session, storage, project_id, purpose, filename, expires)
            stored.append(row.storage_key)
            return row.id

        def undo() -> None:
            # Lost an idempotency race: drop our bytes, the first request's file stands.
            for storage_key in stored:
                storage.delete(storage_key)
            upload.abort()

        outcome = run_once(db, project_id, key, UPLOAD_ROUTE, digest, create, undo)
        with db.session() as session:
            return file_object(get_file(session, project_id, outcome.object_id))
    except BaseException:
        upload.abort()
        raise


def _blocking_message(report: dict[str, Any] | None) -> str | None:
    if report is None or report.get("can_train"):
        return None
    blocking = report.get("blocking_error") or {}
    return str(blocking.get("message")) if blocking.get("message") else None


def store_internal_file(
    session: Session, storage: BlobStore, project_id: str, purpose: str, filename: str, data: bytes
) -> StoredFile:
    """Files the platform writes itself, e.g. a job's metrics CSV (purpose fine-tune-results)."""
    file_id = new_id("file-")
    _, sha = storage.put_bytes(file_id, data)
    row = StoredFile(
        id=file_id,
        project_id=project_id,
        purpose=purpose,
        filename=clean_filename(filename),
        bytes=len(data),
        sha256=sha,
        storage_key=file_id,
        status="processed",
        created_ns=now_ns(),
    )
    session.add(row)
    session.flush()
    return row


def get_file(session: Session, project_id: str, file_id: str) -> StoredFile:
    row = session.get(StoredFile, file_id)
    if row is None or row.project_id != project_id:
        raise not_found("File", file_id, param="id")
    return row


def list_files(
    session: Session,
    project_id: str,
    *,
    purpose: str | None,
    limit: int,
    after: str | None,
    order: str,
) -> Slice[StoredFile]:
    query = select(StoredFile).where(StoredFile.project_id == project_id)
    if purpose:
        query = query.where(StoredFile.purpose == purpose)
    sort_key = tuple_(StoredFile.created_ns, StoredFile.id)
    if after:
        cursor = session.get(StoredFile, after)
        if cursor is None or cursor.project_id != project_id:
            raise not_found("File", after, param="after")
        bound = tuple_(cursor.created_ns, cursor.id)
        query = query.where(sort_key < bound if order == "desc" else sort_key > bound)
    if order == "desc":
        query = query.order_by(StoredFile.created_ns.desc(), StoredFile.id.desc())
    else:
        query = query.order_by(StoredFile.created_ns.asc(), StoredFile.id.asc())
    rows = list(session.scalars(query.limit(limit + 1)))
    return Slice.of(rows, limit)


def delete_file(session: Session, project_id: str, file_id: str) -> str:
    """Delete the row and return the blob key; the caller removes the blob only after the commit.

    Row first, bytes second: a crash in between leaves an orphan blob, never a row without its bytes.
    A file that a job still to finish trains on is refused (400, not 409: OpenAI's SDK retries a 409).
    """
    row = get_file(session, project_id, file_id)
    user = session.scalar(
        select(FineTuningJob)
        .where(
            FineTuningJob.project_id == project_id,
            FineTuningJob.status.notin_(TERMINAL),
            or_(FineTuningJob.training_file == file_id, FineTuningJob.validation_file == file_id),
        )
        .order_by(FineTuningJob.created_ns)
        .limit(1)
    )
    if user is not None:
        raise InvalidRequest(
            f"File {file_id} is in use by fine-tuning job {user.id} (status '{user.status}'); cancel the job or "
            "wait for it to finish before deleting the file.",
            param="file_id",
            code="file_in_use",
        )
    session.delete(row)
    session.flush()
    return row.storage_key


def file_report(
    db: Database,
    settings: Settings,
    storage: BlobStore,
    project_id: str,
    file_id: str,
    query: doctor_uc.ReportQuery,
) -> FileReport:
    """The dataset check stored at upload, plus the doctor's token report for the queried model."""
    with db.session() as session:
        report = get_report(session, project_id, file_id)
        row = get_file(session, project_id, file_id)
        session.expunge(row)
    tokens = doctor_uc.token_report(settings, storage, row, query)
    return FileReport.model_validate({**report, "id": file_id, "tokens": tokens})


def get_report(session: Session, project_id: str, file_id: str) -> dict[str, Any]:
    row = get_file(session, project_id, file_id)
    if row.report is None:
        raise InvalidRequest(
            f"File {file_id} has purpose '{row.purpose}'; dataset reports exist for purpose 'fine-tune'.",
            param="id",
        )
    return row.report
