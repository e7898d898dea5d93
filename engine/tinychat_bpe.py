"""tiny-chat's tokenizer training, torch-free so the control plane's dataset doctor can rebuild it."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from engine.chat import SPECIAL_TOKENS
from engine.corpus import CORPUS_PATH

VOCAB_SIZE = 4096  # BPE target; the model uses the size the trainer actually reached


def train_tiny_chat_bpe() -> Tokenizer:
    """Train tiny-chat's byte-level BPE on the shipped corpus (deterministic: same corpus, same merges)."""
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
    return tok
