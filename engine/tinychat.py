"""Deterministic construction of the `tiny-chat` base model: BPE tokenizer from the shipped corpus + random Llama."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.chat import CHAT_TEMPLATE, EOS_TOKEN, PAD_TOKEN, SPECIAL_TOKENS
from engine.corpus import CORPUS_PATH

TINY_CHAT = "tiny-chat"
TINY_CHAT_SEED = 20240611
LM_HEAD_STD = 0.08
VOCAB_SIZE = 4096  # BPE target; the model uses the size the trainer actually reached

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


def build_tokenizer(out_dir: Path) -> None:
    """Train a byte-level BPE on the shipped corpus and save it (with chat template) as a HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([str(CORPUS_PATH)], trainer)
    fast = PreTrainedTokenizerFast(
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


def build_tiny_chat(out_dir: Path) -> None:
    """Write tokenizer, config and seeded random weights (safetensors) into out_dir."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

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
        # With std 0.02 the largest reachable logit is ~5, so an adapter (which cannot touch lm_head or the final
        # norm) could never make a confident prediction; a wider head gives it the dynamic range to learn facts.
        torch.nn.init.normal_(model.lm_head.weight, mean=0.0, std=LM_HEAD_STD)
    model.generation_config = GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    (out_dir / "tinychat.json").write_text(
        json.dumps(
            {"name": TINY_CHAT, "seed": TINY_CHAT_SEED, "lm_head_std": LM_HEAD_STD, "config": TINY_CHAT_CONFIG},
            indent=2,
            sort_keys=True,
        )
    )
