"""Chat rendering shared by training and serving: messages -> token ids and the trainable-token mask."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD_TOKEN = "<|pad|>"
EOS_TOKEN = IM_END
SPECIAL_TOKENS = (PAD_TOKEN, "<|endoftext|>", IM_START, IM_END)
STOP_TOKENS = (IM_END,)

# ChatML; the training mask and the serving prompt are both derived from this one template.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def message_text(content: Any) -> str:
    """Flatten OpenAI message content (a string, None, or a list of text parts) into plain text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type", "text") == "text":
                parts.append(str(part.get("text", "")))
            elif isinstance(part, str):
                parts.append(part)
        return "".join(parts)
    return str(content)


def normalize(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Keep only role and text content, the two fields every chat template understands."""
    return [{"role": str(m.get("role", "user")), "content": message_text(m.get("content"))} for m in messages]


def _template(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    if not messages and not add_generation_prompt:
        return ""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return str(text)


def trainable_spans(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    *,
    train_on_inputs: bool = False,
    last_only: bool = False,
) -> tuple[str, list[tuple[int, int]]]:
    """Render the conversation to text and return the character spans whose tokens carry loss.

    An assistant message trains on its content and end-of-turn marker unless its `weight` is 0 (as OpenAI
    defines it); `train_on_inputs` also trains on every other message; `last_only` trains only the final
    assistant message (DPO completions).
    """
    norm = normalize(messages)
    full = _template(tokenizer, norm, add_generation_prompt=False)
    spans: list[tuple[int, int]] = []
    last_assistant = max((i for i, m in enumerate(norm) if m["role"] == "assistant"), default=-1)
    for i, (raw, msg) in enumerate(zip(messages, norm, strict=True)):
        is_assistant = msg["role"] == "assistant"
        weight = raw.get("weight", 1)
        if last_only:
            trained = i == last_assistant
        elif is_assistant:
            trained = weight != 0
        else:
            trained = train_on_inputs
        if not trained:
            continue
        before = _template(tokenizer, norm[:i], add_generation_prompt=is_assistant)
        upto = _template(tokenizer, norm[: i + 1], add_generation_prompt=False)
        if not full.startswith(upto) or not upto.startswith(before):
            raise ValueError("chat template is not prefix-stable; cannot locate message boundaries")
        start = len(before) if is_assistant else len(_template(tokenizer, norm[:i], add_generation_prompt=False))
        end = len(upto.rstrip())  # the newline between turns is template glue, not something to learn
        if end > start:
            spans.append((start, end))
    return full, spans


def render(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    *,
    train_on_inputs: bool = False,
    last_only: bool = False,
) -> tuple[list[int], list[int]]:
    """Token ids of the whole conversation and a 0/1 mask marking the tokens that carry loss."""
    text, spans = trainable_spans(tokenizer, messages, train_on_inputs=train_on_inputs, last_only=last_only)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    mask = [0] * len(ids)
    j = 0
    for k, (s, _e) in enumerate(enc["offset_mapping"]):
        while j < len(spans) and spans[j][1] <= s:
            j += 1
        if j < len(spans) and spans[j][0] <= s < spans[j][1]:
            mask[k] = 1
    return ids, mask


def render_prompt(tokenizer: Any, messages: Sequence[Mapping[str, Any]]) -> list[int]:
    """Token ids of the conversation followed by the assistant header: the prompt for generation."""
    text = _template(tokenizer, normalize(messages), add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def stop_token_ids(tokenizer: Any) -> list[int]:
    """Token ids that end an assistant turn for this tokenizer (eos plus ChatML's end marker if known)."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    for tok in STOP_TOKENS:
        if tok in vocab and vocab[tok] not in ids:
            ids.append(int(vocab[tok]))
    return ids
