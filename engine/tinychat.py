"""Deterministic construction of the `tiny-chat` base model: BPE tokenizer and a short pretraining run, no network."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.chat import CHAT_TEMPLATE, EOS_TOKEN, PAD_TOKEN, SPECIAL_TOKENS
from engine.skills import CHANCE
from engine.tinychat_bpe import train_tiny_chat_bpe

log = logging.getLogger("engine.tinychat")

TINY_CHAT = "tiny-chat"
TINY_CHAT_SEED = 20240611

# Small enough to train on two CPU cores in seconds, big enough to memorise a handful of facts.
TINY_CHAT_CONFIG: dict[str, Any] = {
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "initializer_range": 0.02,
}


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the pretrained weights; recorded in tinychat.json."""

    seed: int = 20240611
    steps: int = 150
    batch_tokens: int = 4096
    learning_rate: float = 3e-3
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    skill_pairs: int = 9000
    greetings: int = 600
    multi_turn_share: float = 0.15
    max_seq_tokens: int = 256
    # Fixed, so the float reductions (and so the weights) do not depend on how many cores the machine has.
    threads: int = 2

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_tokenizer(out_dir: Path) -> None:
    """Train a byte-level BPE on the shipped corpus and save it (with chat template) as a HF fast tokenizer."""
    from transformers import PreTrainedTokenizerFast

    tok = train_tiny_chat_bpe()
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]  # transformers leaves __init__ unannotated
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        bos_token=None,
        unk_token=None,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in (EOS_TOKEN, PAD_TOKEN)],
        model_max_length=TINY_CHAT_CONFIG["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))


def build_tiny_chat(out_dir: Path, recipe: Recipe | None = None) -> None:
    """Write tokenizer, config and pretrained weights (safetensors) into out_dir, plus tinychat.json.

    Seeded weights, then a short seeded pretraining run (engine.pretrain) on the shipped corpus and generated
    skill conversations; tinychat.json records the recipe, the content hash and the probe scores it reached.
    """
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    from engine.models import content_hash, tokenizer_hash
    from engine.pretrain import pretrain
    from engine.probes import run_probes

    recipe = recipe or Recipe()
    out_dir.mkdir(parents=True, exist_ok=True)
    build_tokenizer(out_dir)
    tok = AutoTokenizer.from_pretrained(str(out_dir))
    vocab = tok.get_vocab()
    eos_id, pad_id = int(vocab[EOS_TOKEN]), int(vocab[PAD_TOKEN])
    config = LlamaConfig(
        **TINY_CHAT_CONFIG, vocab_size=len(tok), eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=None
    )
    # Seed a private generator state so building never disturbs (or depends on) the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_CHAT_SEED)
        model = LlamaForCausalLM(config)
    log.info("pretraining tiny-chat: %d steps of about %d tokens", recipe.steps, recipe.batch_tokens)
    summary = pretrain(model, tok, recipe)
    probes = run_probes(model, tok, torch.device("cpu"), with_skills=True)
    model.generation_config = GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id)  # type: ignore[no-untyped-call]  # unannotated in transformers
    model.save_pretrained(str(out_dir), safe_serialization=True)
    (out_dir / "tinychat.json").write_text(
        json.dumps(
            {
                "name": TINY_CHAT,
                "seed": TINY_CHAT_SEED,
                "config": TINY_CHAT_CONFIG,
                "recipe": recipe.as_dict(),
                "pretraining": summary,
                "probes": probes.as_dict(),
                "skills_chance": CHANCE,
                "content_sha256": content_hash(out_dir),
                "tokenizer_sha256": tokenizer_hash(out_dir),
            },
            indent=2,
            sort_keys=True,
        )
    )
