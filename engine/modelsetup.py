"""Trainable model construction (LoRA or full, optionally from an earlier run) and weight (de)serialisation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from engine.spec import Tuning

# The linear projections inside Llama-style blocks (and the names other common architectures use).
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def block_linear_names(model: torch.nn.Module) -> list[str]:
    """Leaf names of every nn.Linear inside the transformer blocks (lm_head and embeddings excluded)."""
    names = set()
    for full, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".layers." in f".{full}":
            names.add(full.rsplit(".", 1)[-1])
    return sorted(names) or list(DEFAULT_TARGETS)


def is_adapter_dir(path: str | Path) -> bool:
    """A PEFT adapter directory (as opposed to full weights)."""
    return (Path(path) / "adapter_config.json").is_file()


def make_trainable(base: torch.nn.Module, tuning: Tuning, init_from: str | None) -> torch.nn.Module:
    """Wrap the base with a LoRA adapter (fresh or from init_from), or mark all weights trainable for full FT."""
    if tuning.type == "full":
        for p in base.parameters():
            p.requires_grad_(True)
        return base
    from peft import LoraConfig, PeftModel, get_peft_model

    if init_from is not None:
        if not is_adapter_dir(init_from):
            raise ValueError(f"init_from: {init_from} is not a LoRA adapter directory")
        return PeftModel.from_pretrained(base, init_from, is_trainable=True)
    cfg = LoraConfig(
        r=tuning.lora_r,
        lora_alpha=tuning.lora_alpha,
        lora_dropout=tuning.lora_dropout,
        target_modules=tuning.target_modules or block_linear_names(base),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base, cfg)


def trainable_state(model: torch.nn.Module, tuning_type: str) -> dict[str, torch.Tensor]:
    """The weights a checkpoint must hold: the adapter for LoRA, everything for full fine-tuning."""
    if tuning_type == "lora":
        from peft import get_peft_model_state_dict

        return {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}


def save_weights(model: Any, tuning_type: str, out_dir: Path, tokenizer: Any = None) -> None:
    """Write a loadable artifact: a PEFT adapter dir, or a full model dir (config, safetensors, tokenizer)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if tuning_type == "lora":
        # False: never the full embedding matrix ("auto" would also probe the Hub for the base model's config).
        model.save_pretrained(str(out_dir), safe_serialization=True, save_embedding_layers=False)
        readme = out_dir / "README.md"
        if readme.exists():  # PEFT's model card template: noise, not part of the artifact
            readme.unlink()
        return
    model.save_pretrained(str(out_dir), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))


def load_trainable_weights(model: torch.nn.Module, tuning_type: str, ckpt_dir: Path) -> None:
    """Restore exactly the tensors a checkpoint holds into the live model."""
    from safetensors.torch import load_file

    if tuning_type == "lora":
        from peft import set_peft_model_state_dict

        state = load_file(str(ckpt_dir / "adapter_model.safetensors"))
        res = set_peft_model_state_dict(model, state)
        unexpected = list(getattr(res, "unexpected_keys", None) or [])
        if unexpected:
            raise ValueError(f"checkpoint adapter has unexpected keys: {unexpected[:5]}")
        return
    files = sorted(ckpt_dir.glob("model*.safetensors"))
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight")}
    if set(missing) - tied or unexpected:
        raise ValueError(
            f"checkpoint weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def adapter_config(path: Path) -> dict[str, Any]:
    """The adapter_config.json of a PEFT adapter dir."""
    return dict(json.loads((path / "adapter_config.json").read_text()))
