"""Parse and check a create-job request body; every refusal is a 400 that names the offending `param`."""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from app.core.echo import ID_CHARS, clipped, quoted
from app.core.errors import InvalidRequest
from engine.spec import Hyperparameters, Tuning

METHODS = ("supervised", "dpo")
OPENAI_HPARAMS = ("batch_size", "learning_rate_multiplier", "n_epochs")
# Engine knobs accepted as extensions inside method.<type>.hyperparameters (and echoed back).
HPARAM_EXTENSIONS = tuple(name for name in Hyperparameters.model_fields if name not in (*OPENAI_HPARAMS, "beta"))
TUNING_EXTENSIONS = {
    "tuning": "type",
    "lora_r": "lora_r",
    "lora_alpha": "lora_alpha",
    "lora_dropout": "lora_dropout",
    "target_modules": "target_modules",
}
_SUFFIX = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_KNOWN_FIELDS = {
    "model",
    "training_file",
    "validation_file",
    "hyperparameters",
    "method",
    "suffix",
    "seed",
    "integrations",
    "metadata",
}


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


def _string(body: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise InvalidRequest(f"'{name}' is a required property", param=name, code="missing_required_parameter")
        return None
    if not isinstance(value, str) or not value:
        raise _fail(f"{quoted(value)} is not of type 'string' - '{name}'", name)
    if len(value) > ID_CHARS:  # no model or file id is this long; later messages quote these values
        raise _fail(f"{name} must be at most {ID_CHARS} characters.", name)
    return value


def _check_finite(value: Any, param: str) -> None:
    """Refuse NaN/Infinity and integers past int64 anywhere in a hyperparameter, whatever parsed the body."""
    if isinstance(value, float) and not math.isfinite(value):
        raise _fail(f"{param} must be a finite number.", param)
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        raise _fail(f"{param} is out of range.", param)
    if isinstance(value, list):
        for item in value:
            _check_finite(item, param)


def _auto_or(value: Any, param: str, *, integer: bool, low: float, high: float, low_open: bool) -> Any:
    if value == "auto":
        return value
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type:
        kind = "an integer" if integer else "a number"
        raise _fail(f"{param} must be 'auto' or {kind}.", param)
    if (value <= low if low_open else value < low) or value > high:
        bound = f"greater than {low:g}" if low_open else f"at least {low:g}"
        raise _fail(f"{param} must be {bound} and at most {high:g}.", param)
    return value


def _check_hyperparameters(raw: Any, method_type: str, prefix: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _fail(f"{prefix} must be an object.", prefix)
    allowed = {*OPENAI_HPARAMS, *HPARAM_EXTENSIONS, *TUNING_EXTENSIONS}
    if method_type == "dpo":
        allowed.add("beta")
    for key in raw:
        if key not in allowed:
            raise _fail(
                f"Unknown hyperparameter '{clipped(key)}' for method '{method_type}'.", f"{prefix}.{clipped(key)}"
            )
    for key, value in raw.items():
        _check_finite(value, f"{prefix}.{key}")
    out: dict[str, Any] = {}
    if "batch_size" in raw:
        out["batch_size"] = _auto_or(
            raw["batch_size"], f"{prefix}.batch_size", integer=True, low=1, high=256, low_open=False
        )
    if "learning_rate_multiplier" in raw:
        out["learning_rate_multiplier"] = _auto_or(
            raw["learning_rate_multiplier"],
            f"{prefix}.learning_rate_multiplier",
            integer=False,
            low=0,
            high=100,
            low_open=True,
        )
    if "n_epochs" in raw:
        out["n_epochs"] = _auto_or(raw["n_epochs"], f"{prefix}.n_epochs", integer=True, low=1, high=50, low_open=False)
    if "beta" in raw:
        out["beta"] = _auto_or(raw["beta"], f"{prefix}.beta", integer=False, low=0, high=2, low_open=True)
    extensions = {k: raw[k] for k in HPARAM_EXTENSIONS if k in raw}
    tuning = {TUNING_EXTENSIONS[k]: raw[k] for k in TUNING_EXTENSIONS if k in raw}
    for model, values, names in ((Hyperparameters, extensions, None), (Tuning, tuning, TUNING_EXTENSIONS)):
        try:
            model.model_validate(values)
        except ValidationError as err:
            first = err.errors()[0]
            field = str(first["loc"][0]) if first["loc"] else ""
            if names is not None:
                field = next((k for k, v in names.items() if v == field), field)
            raise _fail(f"{clipped(first['msg'], 200)} - '{prefix}.{field}'", f"{prefix}.{field}") from None
    out.update({k: raw[k] for k in (*HPARAM_EXTENSIONS, *TUNING_EXTENSIONS) if k in raw})
    return out


def _method(body: dict[str, Any]) -> dict[str, Any]:
    method = body.get("method")
    legacy = body.get("hyperparameters")
    if method is None:
        hparams = _check_hyperparameters(legacy, "supervised", "hyperparameters")
        return {"type": "supervised", "supervised": {"hyperparameters": hparams}}
    if not isinstance(method, dict):
        raise _fail("method must be an object.", "method")
    method_type = method.get("type")
    if method_type == "reinforcement":
        raise InvalidRequest(
            "Reinforcement fine-tuning (method.type 'reinforcement') is not supported by this server yet; "
            "use 'supervised' or 'dpo'.",
            param="method.type",
            code="unsupported_value",
        )
    if method_type not in METHODS:
        raise _fail(
            f"{quoted(method_type)} is not one of ['supervised', 'dpo', 'reinforcement'] - 'method.type'",
            "method.type",
        )
    for key in method:
        if key not in ("type", method_type):
            raise _fail(f"Unexpected key '{clipped(key)}' for method type '{method_type}'.", f"method.{clipped(key)}")
    section = method.get(method_type) or {}
    if not isinstance(section, dict):
        raise _fail(f"method.{method_type} must be an object.", f"method.{method_type}")
    for key in section:
        if key != "hyperparameters":
            raise _fail(f"Unexpected key '{clipped(key)}'.", f"method.{method_type}.{clipped(key)}")
    prefix = f"method.{method_type}.hyperparameters"
    hparams = _check_hyperparameters(section.get("hyperparameters"), method_type, prefix)
    if legacy is not None:
        if method_type != "supervised":
            raise _fail(
                f"hyperparameters (deprecated) only applies to supervised jobs; use {prefix} instead.",
                "hyperparameters",
            )
        hparams = {**_check_hyperparameters(legacy, "supervised", "hyperparameters"), **hparams}
    return {"type": method_type, method_type: {"hyperparameters": hparams}}


def _metadata(raw: Any) -> dict[str, str] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _fail("metadata must be an object of string keys and string values.", "metadata")
    if len(raw) > 16:
        raise _fail("metadata can have at most 16 pairs.", "metadata")
    for key, value in raw.items():
        if len(key) > 64:
            raise _fail("metadata keys are at most 64 characters.", f"metadata.{clipped(key)}")
        if not isinstance(value, str) or len(value) > 512:
            raise _fail("metadata values are strings of at most 512 characters.", f"metadata.{clipped(key)}")
    return dict(raw)


def _integrations(raw: Any) -> list[Any]:
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > 5:
        raise _fail("integrations must be a list of at most 5 items.", "integrations")
    for index, item in enumerate(raw):
        wandb = item.get("wandb") if isinstance(item, dict) else None
        if (
            not isinstance(item, dict)
            or item.get("type") != "wandb"
            or not isinstance(wandb, dict)
            or not isinstance(wandb.get("project"), str)
        ):
            raise _fail(
                "Each integration must be {'type': 'wandb', 'wandb': {'project': ...}}.", f"integrations.{index}"
            )
    return list(raw)


def parse_job_request(body: Any) -> JobRequest:
    """Check a create body; unknown top-level fields are refused so typos do not pass silently."""
    if not isinstance(body, dict):
        raise _fail("The request body must be a JSON object.", "body")
    for key in body:
        if key not in _KNOWN_FIELDS:
            raise _fail(f"Unrecognized request argument supplied: {clipped(key)}", clipped(key))
    model = _string(body, "model", required=True)
    training_file = _string(body, "training_file", required=True)
    validation_file = _string(body, "validation_file", required=False)
    suffix = body.get("suffix")
    if suffix is not None and (not isinstance(suffix, str) or not _SUFFIX.match(suffix)):
        raise _fail("suffix must be 1-64 characters: letters, digits, '.', '_' or '-'.", "suffix")
    seed = body.get("seed")
    if seed is None:
        seed = secrets.randbelow(2**31)
    elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 2**31 - 1:
        raise _fail("seed must be an integer between 0 and 2147483647.", "seed")
    assert model is not None and training_file is not None
    method = _method(body)
    if validation_file is not None and method[method["type"]]["hyperparameters"].get("validation_split") is not None:
        raise _fail(
            "validation_split holds out part of the training file; it cannot be combined with validation_file.",
            f"method.{method['type']}.hyperparameters.validation_split",
        )
    return JobRequest(
        model=model,
        training_file=training_file,
        validation_file=validation_file,
        method=method,
        suffix=suffix,
        seed=seed,
        metadata=_metadata(body.get("metadata")),
        integrations=_integrations(body.get("integrations")),
    )
