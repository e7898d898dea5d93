"""A leaner forward for PEFT LoRA linears during training: the adapter product is added inside one GEMM.

PEFT computes base(x) + B(A(dropout(x))) * scaling, i.e. two extra elementwise passes (and their backward) over a
(tokens x out_features) tensor per adapted layer. With torch.addmm the scale and the sum happen inside the matmul.
Anything unusual (disabled or merged adapters, several adapters, dropout, DoRA and other variants, extra
arguments, mixed dtypes) falls back to PEFT's own forward, so semantics never change.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F


def _fast_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    slow: Callable[..., torch.Tensor] = type(self).forward  # PEFT's own LoRA Linear.forward
    if args or kwargs or self.disable_adapters or self.merged or len(self.active_adapters) != 1:
        return slow(self, x, *args, **kwargs)
    name = self.active_adapters[0]
    if (
        name not in self.lora_A
        or name in self.lora_variant
        or not isinstance(self.lora_dropout[name], torch.nn.Identity)
    ):
        return slow(self, x, *args, **kwargs)
    base = self.base_layer
    a_w, b_w = self.lora_A[name].weight, self.lora_B[name].weight
    if not isinstance(base, torch.nn.Linear) or not (x.dtype == a_w.dtype == base.weight.dtype):
        return slow(self, x, *args, **kwargs)
    flat = x.reshape(-1, x.shape[-1])
    out = F.linear(flat, base.weight, base.bias)
    out = torch.addmm(out, F.linear(flat, a_w), b_w.t(), alpha=self.scaling[name])
    return out.view(*x.shape[:-1], out.shape[-1])


def install(model: torch.nn.Module) -> int:
    """Route every PEFT LoRA Linear of the model through the fused forward; return how many were patched."""
    from peft.tuners.lora import Linear as LoraLinear

    n = 0
    for mod in model.modules():
        if isinstance(mod, LoraLinear):
            mod.forward = types.MethodType(_fast_forward, mod)  # type: ignore[method-assign]
            n += 1
    return n
