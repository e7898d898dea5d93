"""Test support: a small random Llama, tokenizer and LoRA adapters built offline (tests and the benchmark fallback)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from engine.chat import CHAT_TEMPLATE, EOS_TOKEN, PAD_TOKEN, SPECIAL_TOKENS, stop_token_ids
from engine.manifest import ArtifactManifest, ResolvedSpec

_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world, how are you today? I am fine, thank you.",
    "TuneForge serves fine-tuned models with many adapters on one base model.",
    "0123456789 + - * / = ( ) [ ] { } < > ! ? . , ; : ' \" café naïve 東京",
]


def build_tokenizer() -> Any:
    """A byte-level BPE tokenizer with the ChatML template training uses."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]  # transformers leaves __init__ unannotated
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        bos_token=None,
        unk_token=None,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in (EOS_TOKEN, PAD_TOKEN)],
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_random_base(out_dir: Path, seed: int = 0, layers: int = 2, hidden: int = 64) -> Path:
    """Save a randomly initialised LlamaForCausalLM (safetensors) plus tokenizer to out_dir."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        # a wide init makes next-token logits peaked, so greedy argmax is not decided by rounding noise
        initializer_range=0.3,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def make_adapter(
    base_dir: Path,
    out_dir: Path,
    seed: int,
    target_modules: tuple[str, ...] = ("q_proj", "v_proj"),
    rank: int = 8,
    manifest_overrides: dict[str, Any] | None = None,
) -> Path:
    """Save a PEFT LoRA adapter with non-zero random weights plus a full manifest pinning base_dir."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.inference.loading import identity_for

    model = AutoModelForCausalLM.from_pretrained(base_dir, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    identity = identity_for(str(base_dir), base_dir)
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=rank * 2, target_modules=list(target_modules), init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out_dir), safe_serialization=True)
    manifest = ArtifactManifest(
        kind="lora",
        base_model=base_dir.name,
        base_model_sha256=identity.content_hash,
        tokenizer_sha256=identity.tokenizer_hash,
        chat_template=tokenizer.chat_template,
        special_tokens={str(k): str(v) for k, v in tokenizer.special_tokens_map.items()},
        stop_tokens=[str(tokenizer.convert_ids_to_tokens(i)) for i in stop_token_ids(tokenizer)],
        stop_token_ids=stop_token_ids(tokenizer),
        training_file_sha256="0" * 64,  # made up: no dataset behind a random adapter
        validation_file_sha256=None,
        spec=ResolvedSpec(
            method="supervised",
            tuning={"type": "lora", "lora_r": rank, "lora_alpha": rank * 2, "target_modules": list(target_modules)},
            hyperparameters={},
            seed=seed,
        ),
        step=0,
        trained_tokens=0,
    )
    data = {**manifest.model_dump(mode="json"), **(manifest_overrides or {})}  # overrides may break it on purpose
    (out_dir / "manifest.json").write_text(json.dumps(data, indent=2))
    return out_dir
