"""`tuneforge models ...` and `tuneforge chat MODEL`: list and delete models, chat with one (streaming)."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from tuneforge.client.common import (
    DEFAULT_BASE_URL,
    ApiKey,
    BaseUrl,
    JsonOut,
    api_errors,
    make_client,
    print_json,
    stdout,
    table,
    when,
)

models_cli = typer.Typer(help="List and delete the models this project may use.", no_args_is_help=True)


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
