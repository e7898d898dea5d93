"""Padding-free packed forward: several examples in one row, attention confined to each example."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

PACKED_ATTN = "tuneforge_packed"
_SEGMENTS_KW = "tf_segments"


def _packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal SDPA run separately on each packed segment, so cost is sum(len^2) and nothing leaks across."""
    segments: Sequence[tuple[int, int]] | None = kwargs.get(_SEGMENTS_KW)
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    if segments is None:
        segments = [(0, query.shape[2])]
    # One split (whose backward is a single cat) rather than per-segment slicing, whose backward would zero-fill
    # and accumulate a full-size gradient for every segment.
    sizes = [e - s for s, e in segments]
    outs = [
        F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=scaling)
        for q, k, v in zip(
            torch.split(query, sizes, dim=2),
            torch.split(key, sizes, dim=2),
            torch.split(value, sizes, dim=2),
            strict=True,
        )
    ]
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return out.transpose(1, 2).contiguous(), None


def register_packed_attention() -> None:
    """Make the packed attention selectable; without a mask function transformers builds no O(T^2) mask."""
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_ATTN, _packed_attention)


@contextlib.contextmanager
def packed_mode(model: torch.nn.Module) -> Iterator[None]:
    """Switch every config in the model to packed attention for the duration (generation keeps sdpa)."""
    register_packed_attention()
    configs = {
        id(m.config): m.config
        for m in model.modules()
        if hasattr(m, "config") and hasattr(m.config, "_attn_implementation")
    }
    saved = {k: c._attn_implementation for k, c in configs.items()}
    try:
        for c in configs.values():
            c._attn_implementation = PACKED_ATTN
        yield
    finally:
        for k, c in configs.items():
            c._attn_implementation = saved[k]


@dataclass
class PackedBatch:
    """One row holding several examples back to back, plus where the loss is computed."""

    input_ids: torch.Tensor  # (1, T)
    position_ids: torch.Tensor  # (1, T), restarting at 0 for each example
    segments: list[tuple[int, int]]  # [start, end) of each example in the row
    loss_positions: torch.Tensor  # (P,) row positions whose next-token prediction carries loss
    targets: torch.Tensor  # (P,) the token predicted at each loss position
    example_index: torch.Tensor  # (P,) which example (0..n-1) each loss position belongs to

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.shape[1])


def pack(examples: Sequence[tuple[Sequence[int], Sequence[int]]], device: Any = "cpu") -> PackedBatch:
    """Concatenate (ids, mask) examples; a token with mask 1 is a target predicted from the previous position."""
    ids: list[int] = []
    pos: list[int] = []
    segments: list[tuple[int, int]] = []
    loss_pos: list[int] = []
    targets: list[int] = []
    ex_idx: list[int] = []
    for n, (e_ids, e_mask) in enumerate(examples):
        start = len(ids)
        ids.extend(e_ids)
        pos.extend(range(len(e_ids)))
        segments.append((start, len(ids)))
        for i in range(1, len(e_ids)):
            if e_mask[i]:
                loss_pos.append(start + i - 1)
                targets.append(int(e_ids[i]))
                ex_idx.append(n)
    return PackedBatch(
        input_ids=torch.tensor([ids], dtype=torch.long, device=device),
        position_ids=torch.tensor([pos], dtype=torch.long, device=device),
        segments=segments,
        loss_positions=torch.tensor(loss_pos, dtype=torch.long, device=device),
        targets=torch.tensor(targets, dtype=torch.long, device=device),
        example_index=torch.tensor(ex_idx, dtype=torch.long, device=device),
    )


def packed_logits(model: torch.nn.Module, batch: PackedBatch, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (P, V) at the given row positions (default: the loss positions) from one packed forward."""
    keep = batch.loss_positions if positions is None else positions
    with packed_mode(model):
        out = model(
            input_ids=batch.input_ids,
            position_ids=batch.position_ids,
            use_cache=False,
            logits_to_keep=keep,
            **{_SEGMENTS_KW: batch.segments},
        )
    logits: torch.Tensor = out.logits
    return logits.reshape(-1, logits.shape[-1])
