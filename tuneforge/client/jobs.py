"""`tuneforge jobs ...`: create, list, get, watch (live progress), cancel, pause, resume, events, checkpoints."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tuneforge.client.common import (
    DEFAULT_BASE_URL,
    ApiKey,
    BaseUrl,
    JsonOut,
    api_errors,
    extra,
    fail,
    make_client,
    print_json,
    stderr,
    stdout,
    table,
    when,
)
from tuneforge.client.files import file_or_upload

if TYPE_CHECKING:
    from openai import OpenAI

jobs_cli = typer.Typer(help="Create, watch and control fine-tuning jobs.", no_args_is_help=True)

TERMINAL = ("succeeded", "failed", "cancelled")
# `jobs watch` exit codes: the outcome, for scripts.
EXIT_CODES = {"succeeded": 0, "failed": 1, "cancelled": 3, "paused": 4}
METHODS = {"sft": "supervised", "supervised": "supervised", "dpo": "dpo"}


def _number(text: str) -> Any:
    """A hyperparameter value from the command line: auto, true/false, int, float, JSON, else the string."""
    if text in ("auto",):
        return text
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    try:
        return json.loads(text)
    except ValueError:
        return text


def _pairs(items: list[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"{what} must be KEY=VALUE, got {item!r}", code=2)
        out[key.strip()] = value.strip()
    return out


def job_row(job: Any) -> tuple[Any, ...]:
    return (
        job.id,
        job.status,
        job.model,
        job.fine_tuned_model or "",
        progress_text(job),
        when(job.created_at),
    )


def progress_text(job: Any) -> str:
    if job.status in TERMINAL:
        return "" if job.status != "failed" or not job.error else f"{job.error.code}"
    eta = job.estimated_finish
    if eta and job.status == "running":
        return f"ETA {max(0, int(eta - time.time()))}s"
    return ""


@jobs_cli.command("create")
def jobs_create(
    training_file: Annotated[str, typer.Option("--training-file", "-t", help="File id, or a local path to upload.")],
    model: Annotated[str, typer.Option("--model", help="Base model (or a fine-tuned one to continue).")] = "tiny-chat",
    validation_file: Annotated[
        str | None, typer.Option("--validation-file", "-v", help="File id or local path.")
    ] = None,
    method: Annotated[str, typer.Option(help="sft (supervised) or dpo.")] = "sft",
    tuning: Annotated[str | None, typer.Option(help="lora or full.")] = None,
    n_epochs: Annotated[str | None, typer.Option("--epochs", "--n-epochs", help="Epochs (or auto).")] = None,
    batch_size: Annotated[str | None, typer.Option(help="Batch size (or auto).")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Learning rate (TuneForge extension).")] = None,
    learning_rate_multiplier: Annotated[str | None, typer.Option(help="OpenAI's learning-rate multiplier.")] = None,
    beta: Annotated[float | None, typer.Option(help="DPO beta.")] = None,
    max_seq_length: Annotated[int | None, typer.Option(help="Longest training sequence in tokens.")] = None,
    validation_split: Annotated[float | None, typer.Option(help="Share held out when no validation file.")] = None,
    lora_r: Annotated[int | None, typer.Option(help="LoRA rank.")] = None,
    lora_alpha: Annotated[float | None, typer.Option(help="LoRA alpha.")] = None,
    suffix: Annotated[str | None, typer.Option(help="Up to 64 characters in the model name.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the run.")] = None,
    hparam: Annotated[
        list[str] | None,
        typer.Option("--hparam", "-H", help="Any other hyperparameter, KEY=VALUE (repeatable): warmup_ratio=0.1"),
    ] = None,
    metadata: Annotated[list[str] | None, typer.Option("--metadata", help="KEY=VALUE (repeatable).")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Idempotency-Key header.")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Then watch it like `jobs watch`.")] = False,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """Start a fine-tuning job; prints the job with its hyperparameters as resolved."""
    method_type = METHODS.get(method.lower())
    if method_type is None:
        fail(f"--method must be sft or dpo, got {method!r}", code=2)
    hparams: dict[str, Any] = {}
    for key, value in (
        ("n_epochs", n_epochs),
        ("batch_size", batch_size),
        ("learning_rate_multiplier", learning_rate_multiplier),
    ):
        if value is not None:
            hparams[key] = _number(value)
    for key, number in (
        ("learning_rate", learning_rate),
        ("beta", beta),
        ("max_seq_length", max_seq_length),
        ("validation_split", validation_split),
        ("lora_r", lora_r),
        ("lora_alpha", lora_alpha),
        ("tuning", tuning),
    ):
        if number is not None:
            hparams[key] = number
    hparams.update({k: _number(v) for k, v in _pairs(hparam, "--hparam").items()})
    body: dict[str, Any] = {"type": method_type, method_type: {"hyperparameters": hparams}}
    with api_errors(base_url):
        client = make_client(base_url, api_key)
        kwargs: dict[str, Any] = {
            "model": model,
            "training_file": file_or_upload(client, training_file, quiet=json_out),
            "method": body,
        }
        if validation_file:
            kwargs["validation_file"] = file_or_upload(client, validation_file, quiet=json_out)
        if suffix:
            kwargs["suffix"] = suffix
        if seed is not None:
            kwargs["seed"] = seed
        if metadata:
            kwargs["metadata"] = _pairs(metadata, "--metadata")
        if idempotency_key:
            kwargs["extra_headers"] = {"Idempotency-Key": idempotency_key}
        job = client.fine_tuning.jobs.create(**kwargs)
    if watch:
        if not json_out:
            stderr().print(f"created {job.id}", highlight=False)
        raise typer.Exit(_watch(client, job.id, base_url, json_out))
    if json_out:
        print_json(job)
        return
    show_job(job)


def show_job(job: Any) -> None:
    out = stdout()
    rows: list[tuple[str, Any]] = [
        ("id", job.id),
        ("status", job.status),
        ("model", job.model),
        ("fine_tuned_model", job.fine_tuned_model),
        ("training_file", job.training_file),
        ("validation_file", job.validation_file),
        ("suffix", job.user_provided_suffix),
        ("seed", job.seed),
        ("created", when(job.created_at)),
        ("finished", when(job.finished_at)),
        ("trained_tokens", job.trained_tokens),
        ("result_files", ", ".join(job.result_files or [])),
    ]
    if job.metadata:
        rows.append(("metadata", json.dumps(job.metadata)))
    if job.error and job.error.code:
        rows.append(("error", f"{job.error.code}: {job.error.message}"))
    table(None, ("field", "value"), rows)
    method = job.method.model_dump() if job.method else {}
    section = method.get(method.get("type") or "supervised") or {}
    hparams = section.get("hyperparameters") or {}
    if hparams:
        out.print(f"method: {method.get('type')}", highlight=False)
        table("hyperparameters", ("name", "value"), sorted((k, v) for k, v in hparams.items() if v is not None))
    evaluation = extra(job, "evaluation")
    if evaluation:
        show_evaluation(evaluation)


def _pair(value: Any) -> str:
    if isinstance(value, dict) and "base" in value:
        return f"base {_fmt(value.get('base'))} -> tuned {_fmt(value.get('tuned'))}"
    return _fmt(value)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def show_evaluation(evaluation: dict[str, Any]) -> None:
    rows: list[tuple[str, str]] = []
    for key in ("valid_loss", "valid_mean_token_accuracy", "generation", "preference", "forgetting"):
        value = evaluation.get(key)
        if isinstance(value, dict) and key == "preference":
            for sub, pair in value.items():
                rows.append((f"preference {sub}", _pair(pair)))
        elif value is not None:
            label = f"{key} ({value['metric']})" if isinstance(value, dict) and value.get("metric") else key
            rows.append((label, _pair(value)))
    rows.append(("helped", _fmt(evaluation.get("helped"))))
    rows.append(("selected step", f"{evaluation.get('selected_step')} of {evaluation.get('last_step')}"))
    table("evaluation", ("measure", "value"), rows)
    for warning in evaluation.get("warnings") or []:
        stdout().print(f"[yellow]warning {warning.get('code')}[/]: {warning.get('message')}", highlight=False)


@jobs_cli.command("list")
def jobs_list(
    status: Annotated[str | None, typer.Option(help="Only jobs in this status.")] = None,
    metadata: Annotated[list[str] | None, typer.Option("--metadata", help="KEY=VALUE filter (repeatable).")] = None,
    limit: Annotated[int, typer.Option(help="Most jobs listed.")] = 20,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """List jobs, newest first."""
    with api_errors(base_url):
        client = make_client(base_url, api_key)
        kwargs: dict[str, Any] = {"limit": limit}
        if metadata:
            kwargs["metadata"] = _pairs(metadata, "--metadata")
        items = list(client.fine_tuning.jobs.list(**kwargs).data)
    if status:
        items = [job for job in items if job.status == status]
    if json_out:
        print_json(items)
        return
    table(None, ("id", "status", "model", "fine_tuned_model", "progress", "created"), [job_row(j) for j in items])


@jobs_cli.command("get")
def jobs_get(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """Show one job: status, hyperparameters as resolved, evaluation."""
    with api_errors(base_url):
        job = make_client(base_url, api_key).fine_tuning.jobs.retrieve(job_id)
    if json_out:
        print_json(job)
    else:
        show_job(job)


def _control(action: str, job_id: str, base_url: str, api_key: str | None, json_out: bool) -> None:
    with api_errors(base_url):
        jobs = make_client(base_url, api_key).fine_tuning.jobs
        job = getattr(jobs, action)(job_id)
    if json_out:
        print_json(job)
    else:
        stdout().print(f"{job.id}: {job.status}", highlight=False)


@jobs_cli.command("cancel")
def jobs_cancel(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """Cancel a job."""
    _control("cancel", job_id, base_url, api_key, json_out)


@jobs_cli.command("pause")
def jobs_pause(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """Pause a running job (it writes a checkpoint and stops)."""
    _control("pause", job_id, base_url, api_key, json_out)


@jobs_cli.command("resume")
def jobs_resume(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """Resume a paused job from its checkpoint."""
    _control("resume", job_id, base_url, api_key, json_out)


def all_events(client: OpenAI, job_id: str, after: str | None = None, limit: int = 100) -> list[Any]:
    """Events oldest first (the API lists newest first); `after` is the newest already seen."""
    page = client.fine_tuning.jobs.list_events(job_id, limit=limit)
    items = list(page.data)
    if after is not None:
        ids = [e.id for e in items]
        items = items[: ids.index(after)] if after in ids else items
    return list(reversed(items))


@jobs_cli.command("events")
def jobs_events(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    limit: Annotated[int, typer.Option(help="Most events listed (newest).")] = 100,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """The job's event log, oldest first."""
    with api_errors(base_url):
        items = all_events(make_client(base_url, api_key), job_id, limit=limit)
    if json_out:
        print_json(items)
        return
    table(None, ("time", "level", "type", "message"), [(when(e.created_at), e.level, e.type, e.message) for e in items])


@jobs_cli.command("checkpoints")
def jobs_checkpoints(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """The job's checkpoints with their metrics (each one a model you can chat with)."""
    with api_errors(base_url):
        items = list(make_client(base_url, api_key).fine_tuning.jobs.checkpoints.list(job_id, limit=100).data)
    if json_out:
        print_json(items)
        return
    rows = []
    for c in items:
        m = c.metrics
        rows.append((c.step_number, _fmt(m.train_loss), _fmt(m.valid_loss), c.fine_tuned_model_checkpoint))
    table(None, ("step", "train_loss", "valid_loss", "model"), rows)


@jobs_cli.command("watch")
def jobs_watch(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    interval: Annotated[float, typer.Option(help="Seconds between polls.")] = 1.0,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """Follow a job live (step, loss, ETA) until it ends; exit 0 succeeded, 1 failed, 3 cancelled, 4 paused."""
    with api_errors(base_url):
        client = make_client(base_url, api_key)
    raise typer.Exit(_watch(client, job_id, base_url, json_out, interval))


def _watch(client: OpenAI, job_id: str, base_url: str, json_out: bool, interval: float = 1.0) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = stderr()
    last_event: str | None = None
    with (
        api_errors(base_url),
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[loss]}"),
            TimeRemainingColumn(),
            console=console,
            disable=json_out,
        ) as progress,
    ):
        task = progress.add_task(job_id, total=None, loss="")
        while True:
            job = client.fine_tuning.jobs.retrieve(job_id)
            for event in all_events(client, job_id, after=last_event):
                last_event = event.id
                data = event.data if isinstance(event.data, dict) else {}
                if event.type == "metrics" and data.get("step") is not None:
                    loss = f"loss {data.get('train_loss', 0):.3f}"
                    if data.get("valid_loss") is not None:
                        loss += f"  valid {data['valid_loss']:.3f}"
                    progress.update(task, completed=data["step"], total=data.get("total_steps"), loss=loss)
                elif not json_out:
                    progress.console.print(f"[dim]{when(event.created_at)}[/] {event.message}", highlight=False)
            progress.update(task, description=f"{job_id} {job.status}")
            if job.status in (*TERMINAL, "paused"):
                break
            time.sleep(interval)
    if json_out:
        print_json(job)
    else:
        _summary(job)
    return EXIT_CODES.get(job.status, 1)


def _summary(job: Any) -> None:
    out = stdout()
    evaluation = extra(job, "evaluation")
    if evaluation:
        show_evaluation(evaluation)
    if job.status == "succeeded":
        out.print(f"[bold green]succeeded[/]: model {job.fine_tuned_model}", highlight=False)
    elif job.status == "failed":
        code = job.error.code if job.error else None
        message = job.error.message if job.error else ""
        out.print(f"[bold red]failed[/] ({code}): {message}", highlight=False)
    else:
        out.print(f"{job.status}", highlight=False)
