"""Losses computed from packed forwards: logits only at loss-bearing positions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.data import Example
from engine.packing import PackedBatch, pack, packed_logits


@dataclass
class SFTStats:
    """Summed loss (differentiable) and counts over one micro-batch."""

    loss_sum: torch.Tensor
    n_tokens: int
    n_correct: int


def sft_forward(model: torch.nn.Module, examples: Sequence[Example], device: torch.device) -> SFTStats:
    """Summed next-token cross-entropy over the masked tokens of the packed examples."""
    batch = pack([(e.ids, e.mask) for e in examples], device=device)
    logits = packed_logits(model, batch).float()
    loss_sum = F.cross_entropy(logits, batch.targets, reduction="sum")
    correct = int((logits.detach().argmax(-1) == batch.targets).sum())
    return SFTStats(loss_sum=loss_sum, n_tokens=int(batch.targets.numel()), n_correct=correct)


def sequence_logps(model: torch.nn.Module, examples: Sequence[Example], device: torch.device) -> torch.Tensor:
    """Sum of log-probabilities of each example's masked tokens, shape (n_examples,)."""
    batch: PackedBatch = pack([(e.ids, e.mask) for e in examples], device=device)
    logits = packed_logits(model, batch).float()
    tok_logp = torch.gather(F.log_softmax(logits, dim=-1), 1, batch.targets[:, None]).squeeze(1)
    out = torch.zeros(len(examples), dtype=tok_logp.dtype, device=device)
    return out.index_add(0, batch.example_index, tok_logp)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair sigmoid DPO loss and the implicit reward margin (Rafailov et al., 2023)."""
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return -F.logsigmoid(margin), margin.detach()


def micro_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Split indices into consecutive groups of at most max_tokens tokens (one oversized item stands alone)."""
    groups: list[list[int]] = []
    cur: list[int] = []
    total = 0
    for i, n in enumerate(lengths):
        if cur and total + n > max_tokens:
            groups.append(cur)
            cur, total = [], 0
        cur.append(i)
        total += n
    if cur:
        groups.append(cur)
    return groups
