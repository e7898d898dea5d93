"""Parse and check a create-job request body; every refusal is a 400 that names the offending `param`."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from app.core.errors import InvalidRequest
from app.wire.base import refusal
from app.wire.jobs import JobCreateRequest, Method, TuningKnobs
from engine.spec import Hyperparameters

METHODS = ("supervised", "dpo")
OPENAI_HPARAMS = ("batch_size", "learning_rate_multiplier", "n_epochs")
# Engine knobs accepted as extensions inside method.<type>.hyperparameters (and echoed back).
HPARAM_EXTENSIONS = tuple(name for name in Hyperparameters.model_fields if name not in (*OPENAI_HPARAMS, "beta"))
# Wire name -> engine.spec.Tuning field of the adapter-shape extensions.
TUNING_EXTENSIONS = {name: ("type" if name == "tuning" else name) for name in TuningKnobs.model_fields}


@dataclass(frozen=True)
class JobRequest:
    """A checked create request; `method` is {"type": t, t: {"hyperparameters": {...}}} as requested."""

    model: str
    training_file: str
    validation_file: str | None
    method: dict[str, Any]
    suffix: str | None
    seed: int
    metadata: dict[str, str] | None
    integrations: list[Any]

    @property
    def method_type(self) -> str:
        return str(self.method["type"])

    @property
    def hyperparameters(self) -> dict[str, Any]:
        return dict(self.method[self.method_type]["hyperparameters"])


def _fail(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="invalid_value")


def _sent(model: Any) -> dict[str, Any]:
    """The hyperparameters the client sent (defaults are filled in when the job is shown, not stored)."""
    return {} if model is None else dict(model.model_dump(mode="json", exclude_unset=True))


def _method(request: JobCreateRequest) -> dict[str, Any]:
    """The method as stored: {"type": t, t: {"hyperparameters": sent}}, the deprecated top-level merged in."""
    method = request.method or Method(type="supervised")
    if method.type == "reinforcement":
        raise InvalidRequest(
            "Reinforcement fine-tuning (method.type 'reinforcement') is not supported by this server yet; "
            "use 'supervised' or 'dpo'.",
            param="method.type",
            code="unsupported_value",
        )
    for other in ("supervised", "dpo", "reinforcement"):
        if other != method.type and getattr(method, other) is not None:
            raise _fail(f"Unexpected key '{other}' for method type '{method.type}'.", f"method.{other}")
    section = method.supervised if method.type == "supervised" else method.dpo
    hparams = _sent(section.hyperparameters if section is not None else None)
    if request.hyperparameters is not None:
        if method.type != "supervised":
            raise _fail(
                f"hyperparameters (deprecated) only applies to supervised jobs; use method.{method.type}"
                ".hyperparameters instead.",
                "hyperparameters",
            )
        hparams = {**_sent(request.hyperparameters), **hparams}
    return {"type": method.type, method.type: {"hyperparameters": hparams}}


def parse_job_request(body: Any) -> JobRequest:
    """Check a create body against the wire model; unknown fields are refused so typos do not pass silently."""
    if not isinstance(body, dict):
        raise _fail("The request body must be a JSON object.", "body")
    try:
        # Strict: a bool or a string is not a number, 2.0 is not an integer (JSON bodies keep their types).
        request = JobCreateRequest.model_validate(body, strict=True)
    except ValidationError as err:
        raise refusal(err) from None
    method = _method(request)
    if (
        request.validation_file is not None
        and method[method["type"]]["hyperparameters"].get("validation_split") is not None
    ):
        raise _fail(
            "validation_split holds out part of the training file; it cannot be combined with validation_file.",
            f"method.{method['type']}.hyperparameters.validation_split",
        )
    return JobRequest(
        model=request.model,
        training_file=request.training_file,
        validation_file=request.validation_file,
        method=method,
        suffix=request.suffix,
        seed=secrets.randbelow(2**31) if request.seed is None else request.seed,
        metadata=request.metadata,
        integrations=[item.model_dump(mode="json") for item in request.integrations or []],
    )
