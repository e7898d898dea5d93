"""Render chat messages to prompt token ids with the template an adapter was trained with."""

from __future__ import annotations

import copy
from typing import Any

from engine.chat import render_prompt


def render_chat(tokenizer: Any, messages: list[dict[str, Any]], chat_template: str | None = None) -> list[int]:
    """Prompt ids for messages plus the assistant header, through training's renderer, with chat_template if given."""
    if chat_template is not None and chat_template != getattr(tokenizer, "chat_template", None):
        tokenizer = copy.copy(tokenizer)  # shallow: only the template attribute differs
        tokenizer.chat_template = chat_template
    return [int(i) for i in render_prompt(tokenizer, messages)]
