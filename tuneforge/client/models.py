"""`tuneforge models ...` and `tuneforge chat MODEL`: list and delete models, chat with one (streaming)."""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from tuneforge.client.common import (
    DEFAULT_BASE_URL,
    ApiKey,
    BaseUrl,
    JsonOut,
    api_base,
    api_errors,
    fail,
    make_client,
    print_json,
    stderr,
    stdout,
    table,
    when,
)

models_cli = typer.Typer(help="List, download and delete the models this project may use.", no_args_is_help=True)


@models_cli.command("list")
def models_list(base_url: BaseUrl = DEFAULT_BASE_URL, api_key: ApiKey = None, json_out: JsonOut = False) -> None:
    """Base models, fine-tuned models and checkpoints this key may use."""
    with api_errors(base_url):
        items = list(make_client(base_url, api_key).models.list().data)
    if json_out:
        print_json(items)
        return
    table(None, ("id", "owned_by", "created"), [(m.id, m.owned_by, when(m.created)) for m in items])


@models_cli.command("get")
def models_get(
    model: Annotated[str, typer.Argument(help="Model id.")],
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """One model."""
    with api_errors(base_url):
        info = make_client(base_url, api_key).models.retrieve(model)
    if json_out:
        print_json(info)
        return
    table(None, ("id", "owned_by", "created"), [(info.id, info.owned_by, when(info.created))])


@models_cli.command("delete")
def models_delete(
    model: Annotated[str, typer.Argument(help="Fine-tuned model id.")],
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """Delete a fine-tuned model."""
    with api_errors(base_url):
        deleted = make_client(base_url, api_key).models.delete(model)
    if json_out:
        print_json(deleted)
    else:
        stdout().print(f"deleted {deleted.id}", highlight=False)


def _attachment_name(disposition: str, fallback: str) -> str:
    """The file name the server proposes (Content-Disposition), reduced to a bare name."""
    from email.message import Message

    header = Message()
    header["content-disposition"] = disposition
    name = header.get_filename() or fallback
    return Path(name).name or fallback


def _extract(archive: Path, into: Path) -> None:
    """Unpack with tarfile's `data` filter: no absolute paths, no `..`, no links out, no device files."""
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")


@models_cli.command("download")
def models_download(
    model: Annotated[str, typer.Argument(help="Fine-tuned model or checkpoint id.")],
    format_: Annotated[
        Literal["adapter", "merged"] | None,
        typer.Option("--format", help="adapter (LoRA only) or merged weights; default: the model's own kind."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Archive path (default: the server's name, here).")
    ] = None,
    extract: Annotated[
        Path | None, typer.Option("--extract", "-x", help="Also unpack into this directory (Hugging Face layout).")
    ] = None,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """Download a model's weights as a tar archive: adapter or merged, config, tokenizer, manifest, model card."""
    import httpx

    make_client(base_url, api_key)  # the same key check as every other command
    params = {"format": format_} if format_ else {}
    url = f"{api_base(base_url)}/models/{model}/content"
    fallback = model.replace(":", "_").replace("/", "_") + ".tar"
    # No read timeout: the server merges weights before the first byte when the merged form is not cached yet.
    timeout = httpx.Timeout(None, connect=10.0)
    try:
        with httpx.stream(
            "GET", url, params=params, headers={"authorization": f"Bearer {api_key}"}, timeout=timeout
        ) as r:
            if r.status_code >= 400:
                r.read()
                try:
                    error = r.json().get("error", {})
                    message = f"{error.get('message')} ({error.get('code')})"
                except ValueError:
                    message = r.text[:200]
                fail(f"{message} [HTTP {r.status_code}]")
            target = output or Path(_attachment_name(r.headers.get("content-disposition", ""), fallback))
            partial = target.with_name(target.name + ".part")
            written = 0
            with partial.open("wb") as out:
                for chunk in r.iter_bytes(1 << 20):
                    out.write(chunk)
                    written += len(chunk)
            partial.replace(target)  # a broken transfer never leaves a file that looks complete
    except httpx.HTTPError as exc:
        fail(f"cannot download from {api_base(base_url)}: {exc}")
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    if extract is not None:
        try:
            _extract(target, extract)
        except (tarfile.TarError, OSError) as exc:
            fail(f"downloaded {target} but could not unpack it: {exc}")
    if json_out:
        print_json(
            {"model": model, "path": str(target), "bytes": written, "extracted_to": str(extract) if extract else None}
        )
        return
    stderr().print(f"downloaded {model}: {target} ({written / 1e6:.1f} MB)", highlight=False)
    if extract is not None:
        stdout().print(f"unpacked into {extract}", highlight=False)


def chat(
    model: Annotated[str, typer.Argument(help="Model id (base, fine-tuned or checkpoint).")],
    message: Annotated[str | None, typer.Option("--message", "-m", help="One-shot: send this and exit.")] = None,
    system: Annotated[str | None, typer.Option("--system", "-s", help="System message.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Longest answer in tokens.")] = 128,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (0: greedy).")] = 0.0,
    no_stream: Annotated[bool, typer.Option("--no-stream", help="Wait for the whole answer.")] = False,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """Chat with a model: interactive and streaming, or one-shot with -m."""
    with api_errors(base_url):
        client = make_client(base_url, api_key)
        history: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        stream = not no_stream and not json_out

        def ask(text: str) -> None:
            history.append({"role": "user", "content": text})
            kwargs: dict[str, Any] = {
                "model": model,
                "messages": history,
                "max_tokens": max_tokens,
                "temperature": temperature,
            }
            if stream:
                answer = []
                for chunk in client.chat.completions.create(stream=True, **kwargs):
                    if chunk.choices and chunk.choices[0].delta.content:
                        piece = chunk.choices[0].delta.content
                        answer.append(piece)
                        sys.stdout.write(piece)
                        sys.stdout.flush()
                sys.stdout.write("\n")
                sys.stdout.flush()
                history.append({"role": "assistant", "content": "".join(answer)})
                return
            reply = client.chat.completions.create(**kwargs)
            content = reply.choices[0].message.content or ""
            history.append({"role": "assistant", "content": content})
            if json_out:
                print_json(reply)
            else:
                sys.stdout.write(content + "\n")

        if message is not None:
            ask(message)
            return
        out = stdout()
        out.print(f"chatting with {model}; an empty line or Ctrl-D ends", highlight=False)
        while True:
            try:
                text = input("> ")
            except EOFError:
                break
            if not text.strip():
                break
            ask(text)
