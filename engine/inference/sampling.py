"""Next-token choice per row: greedy for temperature 0, else temperature + top-p with the row's own generator."""

from __future__ import annotations

import torch


def sample_row(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """Pick one token id from a 1-D logits row."""
    if temperature <= 0.0:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, sorted_idx = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        # keep the smallest prefix whose mass reaches top_p (the first token is always kept)
        drop = cumulative - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        choice = torch.multinomial(sorted_probs, 1, generator=generator)
        return int(sorted_idx[choice].item())
    return int(torch.multinomial(probs, 1, generator=generator).item())


def sample_batch(
    logits: torch.Tensor, temperatures: list[float], top_ps: list[float], generators: list[torch.Generator]
) -> list[int]:
    """Pick one token per row of a [B, V] logits tensor; greedy rows share one argmax."""
    greedy = torch.argmax(logits, dim=-1).tolist()
    out: list[int] = []
    for row, temp in enumerate(temperatures):
        if temp <= 0.0:
            out.append(int(greedy[row]))
        else:
            out.append(sample_row(logits[row], temp, top_ps[row], generators[row]))
    return out
