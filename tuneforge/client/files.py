"""`tuneforge files ...`: upload (with a progress bar), check (the dataset report), list, delete."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tuneforge.client.common import (
    DEFAULT_BASE_URL,
    ApiKey,
    BaseUrl,
    JsonOut,
    api_errors,
    make_client,
    print_json,
    stderr,
    stdout,
    table,
    when,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from openai import OpenAI

files_cli = typer.Typer(help="Upload, check, list and delete dataset files.", no_args_is_help=True)


class _ProgressReader(io.BufferedReader):
    """A file that reports how much of it has been read (httpx streams the upload through read())."""

    def __init__(self, path: Path, advance: Callable[[int], None]) -> None:
        super().__init__(io.FileIO(path, "rb"))
        self._advance = advance

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self._advance(len(chunk))
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:  # a retried upload starts over
        position = super().seek(offset, whence)
        if whence == 0 and offset == 0:
            self._advance(-1)
        return position


def upload(client: OpenAI, path: Path, purpose: str, quiet: bool = False) -> Any:
    """Upload one file with a progress bar on stderr; returns the SDK file object."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    if not path.is_file():
        from tuneforge.client.common import fail

        fail(f"no such file: {path}")
    size = path.stat().st_size
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=stderr(),
        transient=True,
        disable=quiet,
    ) as progress:
        task = progress.add_task(f"uploading {path.name}", total=size)

        def advance(n: int) -> None:
            if n < 0:
                progress.reset(task, total=size)
            else:
                progress.advance(task, n)

        with _ProgressReader(path, advance) as handle:
            return client.files.create(file=(path.name, handle), purpose=purpose)  # type: ignore[arg-type]


def report_of(client: OpenAI, file_id: str, model: str | None = None, max_seq_length: int | None = None) -> Any:
    query: dict[str, Any] = {}
    if model:
        query["model"] = model
    if max_seq_length:
        query["max_seq_length"] = max_seq_length
    return client.get(f"/files/{file_id}/report", cast_to=object, options={"params": query})


def file_or_upload(client: OpenAI, ref: str, quiet: bool = False) -> str:
    """A file id as given, or the id of a local path after uploading it."""
    path = Path(ref).expanduser()
    if not ref.startswith("file-") and path.is_file():
        uploaded = upload(client, path, "fine-tune", quiet=quiet)
        if not quiet:
            stderr().print(f"uploaded {path.name} as {uploaded.id}", highlight=False)
        return str(uploaded.id)
    return ref


def render_report(report: dict[str, Any]) -> None:
    """The dataset report as a person reads it: verdict, counts, errors by line, duplicates, tokens, warnings."""
    out = stdout()
    verdict = "[bold green]can train[/]" if report.get("can_train") else "[bold red]cannot train[/]"
    out.print(f"{report.get('id')}: {verdict}", highlight=False)
    blocking = report.get("blocking_error")
    if blocking:
        out.print(f"  [red]{blocking.get('code')}[/]: {blocking.get('message')}", highlight=False)
    rows = [
        ("format", report.get("format")),
        ("lines", report.get("n_lines")),
        ("examples", report.get("n_examples")),
        ("errors", report.get("n_errors")),
        ("duplicates", report.get("duplicates")),
    ]
    stats = report.get("stats") or {}
    if stats:
        rows.append(("messages/example", f"{stats.get('messages_min')}..{stats.get('messages_max')}"))
        rows.append(("estimated tokens", stats.get("est_tokens_total")))
    tokens = report.get("tokens") or {}
    per = tokens.get("tokens") or {}
    if per:
        rows.append(("tokens/example", f"p50 {per.get('p50')}  p95 {per.get('p95')}  max {per.get('max')}"))
    if tokens.get("trainable_examples") is not None:
        rows.append(
            ("trainable", f"{tokens.get('trainable_examples')} examples, {tokens.get('trainable_tokens')} tokens")
        )
    table(None, ("field", "value"), rows)
    errors = report.get("errors") or []
    if errors:
        table("errors", ("line", "code", "message"), [(e.get("line"), e.get("code"), e.get("message")) for e in errors])
    warnings = tokens.get("warnings") or []
    if warnings:
        table("warnings", ("code", "message"), [(w.get("code"), w.get("message")) for w in warnings])


@files_cli.command("upload")
def files_upload(
    path: Annotated[Path, typer.Argument(help="Local JSONL file.")],
    purpose: Annotated[str, typer.Option(help="File purpose.")] = "fine-tune",
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """Upload a file (progress bar on stderr); prints its id."""
    with api_errors(base_url):
        client = make_client(base_url, api_key)
        created = upload(client, path, purpose, quiet=json_out)
    if json_out:
        print_json(created)
        return
    table(
        None, ("id", "filename", "bytes", "purpose"), [(created.id, created.filename, created.bytes, created.purpose)]
    )


@files_cli.command("check")
def files_check(
    file: Annotated[str, typer.Argument(help="A file id, or a local path (uploaded first).")],
    model: Annotated[str | None, typer.Option(help="Base model whose tokenizer the doctor uses.")] = None,
    max_seq_length: Annotated[int | None, typer.Option(help="Sequence length the doctor checks against.")] = None,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """Print the dataset report; exit code 1 when the file cannot train."""
    with api_errors(base_url):
        client = make_client(base_url, api_key)
        file_id = file_or_upload(client, file, quiet=json_out)
        report = report_of(client, file_id, model, max_seq_length)
    if json_out:
        print_json(report)
    else:
        render_report(report)
    if not report.get("can_train"):
        raise typer.Exit(1)


@files_cli.command("list")
def files_list(
    purpose: Annotated[str | None, typer.Option(help="Only files of this purpose.")] = None,
    limit: Annotated[int, typer.Option(help="Most files listed.")] = 100,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """List the project's files, newest first."""
    with api_errors(base_url):
        client = make_client(base_url, api_key)
        kwargs: dict[str, Any] = {"limit": limit}
        if purpose:
            kwargs["purpose"] = purpose
        page = client.files.list(**kwargs)
        items = list(page.data)
    if json_out:
        print_json(items)
        return
    table(
        None,
        ("id", "filename", "bytes", "purpose", "created"),
        [(f.id, f.filename, f.bytes, f.purpose, when(f.created_at)) for f in items],
    )


@files_cli.command("delete")
def files_delete(
    file_id: Annotated[str, typer.Argument(help="File id.")],
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """Delete a file (refused while a job trains on it)."""
    with api_errors(base_url):
        deleted = make_client(base_url, api_key).files.delete(file_id)
    if json_out:
        print_json(deleted)
    else:
        stdout().print(f"deleted {deleted.id}", highlight=False)
