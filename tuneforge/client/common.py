"""Shared plumbing of the user CLI: connection options, the openai client, output and error handling.

Every command talks only to the public `/v1` API through the official `openai` SDK, so nothing it shows is
something another API client could not get.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from openai import OpenAI
    from rich.console import Console

BaseUrl = Annotated[
    str,
    typer.Option(
        "--base-url",
        envvar="TUNEFORGE_BASE_URL",
        help="Server URL, with or without /v1 (also TUNEFORGE_BASE_URL).",
        show_default=True,
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", envvar="TUNEFORGE_API_KEY", help="API key (also TUNEFORGE_API_KEY).", show_default=False),
]
JsonOut = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table (for scripts).")]

DEFAULT_BASE_URL = "http://127.0.0.1:8000"


def api_base(base_url: str) -> str:
    url = base_url.rstrip("/")
    return url if url.endswith("/v1") else f"{url}/v1"


def make_client(base_url: str, api_key: str | None) -> OpenAI:
    from openai import OpenAI

    if not api_key:
        fail("no API key: pass --api-key or set TUNEFORGE_API_KEY (create one with `tuneforge keys create`)", code=2)
    return OpenAI(base_url=api_base(base_url), api_key=api_key, max_retries=2)


def stdout() -> Console:
    from rich.console import Console

    return Console(soft_wrap=True)


def stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 1) -> NoReturn:
    stderr().print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    raise typer.Exit(code)


def api_message(exc: Exception) -> str:
    """The API's own error message (OpenAI's envelope), else the exception text."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            code = error.get("code")
            return f"{error['message']}" + (f" ({code})" if code else "")
    return str(exc)


@contextmanager
def api_errors(base_url: str) -> Iterator[None]:
    """Turn SDK exceptions into a readable line on stderr and a non-zero exit."""
    import openai

    try:
        yield
    except openai.APIStatusError as exc:
        fail(f"{api_message(exc)} [HTTP {exc.status_code}]")
    except openai.APIConnectionError as exc:
        fail(f"cannot reach {api_base(base_url)}: {exc}")
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def plain(obj: Any) -> Any:
    """An SDK object (or list of them) as plain JSON data, extension fields included."""
    if isinstance(obj, list | tuple):
        return [plain(x) for x in obj]
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    return obj


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(plain(obj), indent=2, default=str) + "\n")
    sys.stdout.flush()


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from rich.table import Table

    grid = Table(title=title, show_lines=False, header_style="bold")
    for column in columns:
        grid.add_column(column, overflow="fold")
    for row in rows:
        grid.add_row(*("" if cell is None else str(cell) for cell in row))
    stdout().print(grid)


def when(ts: int | None) -> str:
    if not ts:
        return ""
    import datetime as dt

    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def extra(obj: Any, name: str) -> Any:
    """A TuneForge extension field the SDK's types do not declare (kept in model_extra)."""
    value = getattr(obj, name, None)
    if value is None:
        value = (getattr(obj, "model_extra", None) or {}).get(name)
    return value
