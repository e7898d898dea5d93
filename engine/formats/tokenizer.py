"""A torch-free stand-in for a Hugging Face fast tokenizer: tokenizer.json plus its chat template.

It offers exactly what `engine.chat.render` needs (apply_chat_template, __call__ with offsets, eos_token_id,
get_vocab), so the dataset doctor counts the same tokens and masks as training without loading the ML stack.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from engine.chat import CHAT_TEMPLATE, EOS_TOKEN
from engine.tinychat_bpe import train_tiny_chat_bpe


def _raise(message: str) -> None:
    raise ValueError(f"chat template error: {message}")


@lru_cache(maxsize=16)
def _compile(template: str) -> Any:
    # The environment transformers renders chat templates in, so both produce the same text.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = _raise
    return env.from_string(template)


class TextTokenizer:
    """Tokenizes and renders chat templates like the fast tokenizer saved next to a model."""

    def __init__(self, tokenizer: Tokenizer, chat_template: str, eos_token: str | None) -> None:
        self._tok = tokenizer
        self._template = _compile(chat_template)
        self.eos_token = eos_token
        self.eos_token_id = tokenizer.token_to_id(eos_token) if eos_token else None

    def apply_chat_template(
        self, messages: list[dict[str, Any]], *, tokenize: bool = False, add_generation_prompt: bool = False
    ) -> str:
        if tokenize:
            raise ValueError("TextTokenizer renders text only; tokenize the result with __call__")
        return str(
            self._template.render(
                messages=messages, add_generation_prompt=add_generation_prompt, eos_token=self.eos_token or ""
            )
        )

    def __call__(
        self, text: str, *, add_special_tokens: bool = False, return_offsets_mapping: bool = False
    ) -> dict[str, list[Any]]:
        enc = self._tok.encode(text, add_special_tokens=add_special_tokens)
        out: dict[str, list[Any]] = {"input_ids": enc.ids}
        if return_offsets_mapping:
            out["offset_mapping"] = enc.offsets
        return out

    def count(self, text: str) -> int:
        """Tokens in a plain text (no special tokens added)."""
        return len(self._tok.encode(text, add_special_tokens=False).ids)

    def get_vocab(self) -> dict[str, int]:
        return dict(self._tok.get_vocab())


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _chat_template(root: Path, config: dict[str, Any]) -> str | None:
    jinja = root / "chat_template.jinja"  # newer transformers save the template beside the config
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one is what apply_chat_template uses
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def load_text_tokenizer(model_dir: str | Path) -> TextTokenizer:
    """Load tokenizer.json and the chat template saved next to a model; ValueError if either is missing."""
    root = Path(model_dir)
    if not (root / "tokenizer.json").is_file():
        raise ValueError("the model has no tokenizer.json (a fast tokenizer is required)")
    config_path = root / "tokenizer_config.json"
    config: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    template = _chat_template(root, config)
    if template is None:
        raise ValueError("the model's tokenizer has no chat template")
    tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
    return TextTokenizer(tokenizer, template, _token_text(config.get("eos_token")))


@lru_cache(maxsize=1)
def tiny_chat_text_tokenizer() -> TextTokenizer:
    """tiny-chat's tokenizer, trained afresh (a second or two) when the model is not built yet."""
    return TextTokenizer(train_tiny_chat_bpe(), CHAT_TEMPLATE, EOS_TOKEN)


@lru_cache(maxsize=8)
def _load_cached(model_dir: str, _mtime_ns: int) -> TextTokenizer:
    return load_text_tokenizer(model_dir)


def text_tokenizer_for(source: str, data_dir: str | Path) -> TextTokenizer:
    """The tokenizer of a base model as the engine would load it: tiny-chat, a local dir or one under data_dir."""
    models_dir = Path(data_dir) / "models"
    if source == "tiny-chat":
        built = models_dir / "tiny-chat"
        if not (built / "tokenizer.json").is_file():
            return tiny_chat_text_tokenizer()  # the same merges the build will save
        root = built
    elif Path(source).is_dir():
        root = Path(source)
    elif ".." not in Path(source).parts and (models_dir / source).is_dir():
        root = models_dir / source
    else:
        raise ValueError(f"no local tokenizer for base model {source!r}")
    tokenizer_json = root / "tokenizer.json"
    mtime = tokenizer_json.stat().st_mtime_ns if tokenizer_json.is_file() else 0
    return _load_cached(str(root), mtime)
