"""The user CLI (`tuneforge files|jobs|models|chat`), a client of the public `/v1` API on the openai SDK."""

from __future__ import annotations

import typer


def register(cli: typer.Typer) -> None:
    """Add the user commands to the `tuneforge` command."""
    from tuneforge.client.files import files_cli
    from tuneforge.client.jobs import jobs_cli
    from tuneforge.client.models import chat, models_cli

    cli.add_typer(files_cli, name="files")
    cli.add_typer(jobs_cli, name="jobs")
    cli.add_typer(models_cli, name="models")
    cli.command("chat")(chat)
