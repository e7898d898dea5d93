"""A left-padded batch KV cache that sequences join and leave between decoding steps."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache


def _layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    layers: list[Any] = list(cache.layers)
    return [(layer.keys, layer.values) for layer in layers]


def _pad_left(t: torch.Tensor, pad: int) -> torch.Tensor:
    # keys/values are [B, H, T, D]; zero padding keeps masked columns finite
    return F.pad(t, (0, 0, pad, 0)) if pad else t


class PaddedKV:
    """KV cache for B rows sharing one time axis: row i's real tokens are the columns where mask[i] == 1."""

    def __init__(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        self.cache = cache
        self.mask = mask  # [B, T] long

    @property
    def batch_size(self) -> int:
        return int(self.mask.shape[0])

    @property
    def length(self) -> int:
        return int(self.mask.shape[1])

    def step_mask(self) -> torch.Tensor:
        """Attention mask for one more column (the token being decoded), and remember it."""
        ones = torch.ones((self.batch_size, 1), dtype=self.mask.dtype, device=self.mask.device)
        self.mask = torch.cat([self.mask, ones], dim=1)
        return self.mask

    def merge(self, other: PaddedKV) -> PaddedKV:
        """Stack two batches along the batch axis, left-padding the shorter one."""
        length = max(self.length, other.length)
        pa, pb = length - self.length, length - other.length
        data = [
            (
                torch.cat([_pad_left(ka, pa), _pad_left(kb, pb)]),
                torch.cat([_pad_left(va, pa), _pad_left(vb, pb)]),
            )
            for (ka, va), (kb, vb) in zip(_layers(self.cache), _layers(other.cache), strict=True)
        ]
        mask = torch.cat([F.pad(self.mask, (pa, 0)), F.pad(other.mask, (pb, 0))])
        return PaddedKV(DynamicCache(ddp_cache_data=data), mask)

    def select(self, rows: list[int]) -> PaddedKV:
        """Keep only these rows, then drop leading columns that are padding in every remaining row."""
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        used = mask.any(dim=0).nonzero()
        start = int(used[0].item()) if used.numel() else mask.shape[1]
        data = [
            (k.index_select(0, index)[:, :, start:], v.index_select(0, index)[:, :, start:])
            for k, v in _layers(self.cache)
        ]
        return PaddedKV(DynamicCache(ddp_cache_data=data), mask[:, start:])
