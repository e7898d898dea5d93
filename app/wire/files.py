"""Files on the wire (wire reference §2): the file object, the upload form, deletion, the dataset report."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from app.wire.base import RequestModel
from app.wire.page import Identified
from engine.formats import DatasetReport

UploadPurpose = Literal["assistants", "batch", "fine-tune", "vision", "user_data", "evals"]
FilePurpose = UploadPurpose | Literal["fine-tune-results"]
EXPIRY_MIN_S, EXPIRY_MAX_S = 3600, 2_592_000


class FileObject(Identified):
    """A stored file."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: FilePurpose
    status: Literal["uploaded", "processed", "error"]
    status_details: str | None = None
    expires_at: int | None = None


class FileExpiresAfter(RequestModel):
    """When an uploaded file expires; sent as the form fields `expires_after[anchor]` and `expires_after[seconds]`."""

    anchor: Literal["created_at"]
    seconds: Annotated[int, Field(ge=EXPIRY_MIN_S, le=EXPIRY_MAX_S)]


class FileUploadForm(RequestModel):
    """The multipart form of POST /v1/files (streamed, never held in memory whole).

    `expires_after` is one JSON part, or the two fields `expires_after[anchor]`/`expires_after[seconds]` that
    OpenAI's SDK sends. Other form fields are ignored, as they always were.
    """

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    file: bytes = Field(json_schema_extra={"format": "binary", "type": "string"})
    purpose: UploadPurpose
    expires_after: FileExpiresAfter | None = None


class FileDeleted(BaseModel):
    """The answer to a deletion."""

    id: str
    object: Literal["file"] = "file"
    deleted: bool


class FileReport(DatasetReport):
    """TuneForge extension: the dataset check of a fine-tune file, plus the doctor's token report for a model."""

    object: Literal["file.report"] = "file.report"
    id: str
    tokens: dict[str, JsonValue] | None
