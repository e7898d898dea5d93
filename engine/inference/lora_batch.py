"""Mixed-adapter LoRA for a whole batch with a fixed number of kernels per layer, over adapters PEFT has loaded.

PEFT's own mixed batch (`adapter_names=`) loops over the adapters in the batch inside every LoRA layer, about six
small kernels per adapter per layer, and its wrapper layers stay in the forward path. On small models that costs
more than the base model itself. Here PEFT still loads and deletes adapters, but for the forward its LoRA wrappers
are swapped out for their base linears, each carrying a hook that adds every row's own delta in a segmented
batched matmul (the BGMV idea of Punica / S-LoRA): rows are gathered per adapter into [K, n, in], multiplied by the
stacked A [K, in, r] and B [K, r, out] (scaling folded in, ranks zero-padded), and added back. Padding rows are
zeroed, so base-model rows and every other row see exactly their own adapter's delta.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.tuners_utils import BaseTunerLayer


class UnsupportedAdapter(Exception):
    """An adapter uses a LoRA feature this path does not implement (DoRA, embeddings, biases...)."""


@dataclass
class _Stack:
    a: torch.Tensor  # [S, in, r_max]: slot s (0-based position in the slot list) -> A^T, zero if absent
    b: torch.Tensor  # [S, r_max, out]: B^T * scaling


@dataclass
class _Plan:
    gather: torch.Tensor  # [K * n] flat row positions, padding points at row 0
    keep: torch.Tensor | None  # [K, n, 1] 1 for real rows, 0 for padding; None when no group is padded
    slots: torch.Tensor | None  # [K] stack entries used, None when it is all of them in order
    k: int
    n: int


class _Linear(torch.nn.Module):
    """Stands in for a PEFT LoRA wrapper during the forward: the base linear plus the batch's LoRA deltas."""

    def __init__(self, base: torch.nn.Module, owner: StackedLoRA, stack: _Stack) -> None:
        super().__init__()
        self.base = base
        self.__dict__["_owner"] = owner  # not a submodule: keep it out of module traversal
        self.__dict__["_stack"] = stack

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output = self.base(x)
        mixed: torch.Tensor = self.__dict__["_owner"].add_delta(self.__dict__["_stack"], x, output)
        return mixed


class StackedLoRA:
    """Owns the swap of PEFT's LoRA wrappers for hooked base linears, and the per-step row -> adapter plan."""

    def __init__(self, peft_model: Any) -> None:
        self.peft = peft_model
        self._stacks: dict[int, _Stack] = {}
        self._swapped: list[tuple[Any, str, Any]] = []  # (parent, attribute, PEFT lora layer)
        self._slot_index: dict[str, int] = {}
        self._rows: list[int] | None = None
        self._plans: dict[int, _Plan] = {}
        self._n_slots = 0
        self._dtype = torch.float32
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None  # (input, its gathered rows)

    def restore(self) -> None:
        """Put PEFT's LoRA wrappers back in place (before PEFT loads or deletes an adapter)."""
        for parent, attr, layer in self._swapped:
            setattr(parent, attr, layer)
        self._swapped = []

    def detach(self) -> None:
        """Hand LoRA back to PEFT's own forward for good."""
        self.restore()
        self._stacks, self._rows = {}, None

    def rebuild(self, slots: list[str]) -> None:
        """Restack after adapters were loaded or deleted (slots: resident PEFT adapter names), then swap."""
        self.restore()
        self._slot_index = {name: i + 1 for i, name in enumerate(slots)}
        self._n_slots = len(slots)
        stacks: dict[int, _Stack] = {}
        swaps: list[tuple[Any, str, Any]] = []
        for parent in self.peft.modules():
            for attr, child in parent.named_children():
                if not isinstance(child, BaseTunerLayer):
                    continue
                layer: Any = child
                if any(s in getattr(layer, "lora_embedding_A", {}) for s in slots):
                    raise UnsupportedAdapter("LoRA on embeddings")
                present = [s for s in slots if s in getattr(layer, "lora_A", {})]
                if not present:
                    continue
                if not isinstance(layer, LoraLinear):
                    raise UnsupportedAdapter(f"LoRA on {type(layer).__name__} layers")
                if any(s in layer.lora_variant or layer.lora_bias.get(s) for s in present):
                    raise UnsupportedAdapter("DoRA/variants or LoRA biases")
                base = layer.get_base_layer()
                stacks[id(base)] = self._stack(layer, slots, base.weight)
                swaps.append((parent, attr, layer))
        self._stacks = stacks
        self._dtype = next(iter(stacks.values())).a.dtype if stacks else torch.float32
        for parent, attr, layer in swaps:
            base = layer.get_base_layer()
            setattr(parent, attr, _Linear(base, self, stacks[id(base)]))
            self._swapped.append((parent, attr, layer))

    @staticmethod
    def _stack(layer: Any, slots: list[str], weight: Any) -> _Stack:
        r_max = max(layer.lora_A[s].weight.shape[0] for s in slots if s in layer.lora_A)
        out_f, in_f = weight.shape
        a = torch.zeros(len(slots), in_f, r_max, dtype=weight.dtype, device=weight.device)
        b = torch.zeros(len(slots), r_max, out_f, dtype=weight.dtype, device=weight.device)
        for i, s in enumerate(slots):
            if s not in layer.lora_A:
                continue
            la = layer.lora_A[s].weight  # [r, in]
            lb = layer.lora_B[s].weight * layer.scaling[s]  # [out, r]
            a[i, :, : la.shape[0]] = la.t().to(weight.dtype)
            b[i, : la.shape[0], :] = lb.t().to(weight.dtype)
        return _Stack(a, b)

    def set_rows(self, slots: list[str]) -> None:
        """Which adapter each batch row uses in the next forward (unknown names and '__base__' get none)."""
        index = [self._slot_index.get(s, 0) for s in slots]
        self._rows = index if any(index) else None
        self._plans = {}
        self._last = None

    def _plan(self, tokens: int, device: torch.device) -> _Plan:
        plan = self._plans.get(tokens)
        if plan is not None:
            return plan
        assert self._rows is not None
        groups: dict[int, list[int]] = {}
        for row, slot in enumerate(self._rows):
            if slot:
                groups.setdefault(slot, []).extend(range(row * tokens, (row + 1) * tokens))
        order = sorted(groups)
        n = max(len(g) for g in groups.values())
        gather = torch.zeros(len(order), n, dtype=torch.long)
        keep = torch.zeros(len(order), n, 1)
        for k, slot in enumerate(order):
            gather[k, : len(groups[slot])] = torch.tensor(groups[slot])
            keep[k, : len(groups[slot])] = 1.0
        full = order == list(range(1, self._n_slots + 1))
        slots = None if full else torch.tensor([s - 1 for s in order], device=device)
        padded = any(len(g) < n for g in groups.values())
        plan = _Plan(
            gather.flatten().to(device), keep.to(device, self._dtype) if padded else None, slots, len(order), n
        )
        self._plans[tokens] = plan
        return plan

    def add_delta(self, stack: _Stack, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """output (the base linear's, fresh) plus each row's own adapter delta, in place."""
        if self._rows is None:
            return output
        tokens = x.shape[1] if x.dim() == 3 else 1
        plan = self._plan(tokens, x.device)
        flat_x = x.reshape(-1, x.shape[-1])
        flat_out = output.view(-1, output.shape[-1])
        a, b = stack.a, stack.b
        if plan.slots is not None:
            a, b = a.index_select(0, plan.slots), b.index_select(0, plan.slots)
        if self._last is not None and self._last[0] is x:
            rows = self._last[1]  # q/k/v (and gate/up) read the same input: gather it once
        else:
            rows = flat_x.index_select(0, plan.gather).view(plan.k, plan.n, -1)
            rows = rows if rows.dtype == a.dtype else rows.to(a.dtype)
            self._last = (x, rows)
        hidden = torch.bmm(rows, a)
        if plan.keep is not None:
            hidden.mul_(plan.keep)  # padding rows -> exact zeros
        delta = torch.bmm(hidden, b).view(plan.k * plan.n, -1)
        flat_out.index_add_(0, plan.gather, delta if delta.dtype == flat_out.dtype else delta.to(flat_out.dtype))
        return output
