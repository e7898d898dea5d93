"""The short, seeded pretraining run that gives tiny-chat fluent words, the chat template and a few skills."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from typing import Any

import torch

from engine import skills
from engine.chat import render
from engine.corpus import CORPUS_PATH
from engine.data import Example
from engine.objectives import micro_batches, sft_forward
from engine.tinychat import Recipe

log = logging.getLogger("engine.pretrain")


def _corpus_documents() -> tuple[list[str], list[tuple[str, str]]]:
    """The shipped corpus split into plain paragraphs and (question, answer) dialogues."""
    texts, dialogues = [], []
    for block in CORPUS_PATH.read_text(encoding="utf-8").split("\n\n"):
        block = block.strip()
        if not block:
            continue
        if block.startswith("User: ") and "\nAssistant: " in block:
            question, answer = block[len("User: ") :].split("\nAssistant: ", 1)
            dialogues.append((question.strip(), answer.strip()))
        else:
            texts.append(block)
    return texts, dialogues


def build_examples(tokenizer: Any, recipe: Recipe) -> list[Example]:
    """Tokenized pretraining sequences: plain text (loss on every token) and chats (loss on the answers)."""
    rng = random.Random(recipe.seed)
    texts, dialogues = _corpus_documents()
    eos = tokenizer.eos_token_id
    end_of_text = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    out: list[Example] = []
    for text in texts:
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])[: recipe.max_seq_tokens - 1]
        ids.append(int(end_of_text if end_of_text is not None else eos))
        out.append(Example(ids=ids, mask=[1] * len(ids), line=0))
    chats = [skills.Pair("dialogue", q, a) for q, a in dialogues]
    chats += list(skills.pairs(recipe.seed, recipe.skill_pairs))
    chats += list(skills.greetings(recipe.seed + 1, recipe.greetings))
    rng.shuffle(chats)
    i = 0
    while i < len(chats):
        turns = 2 if rng.random() < recipe.multi_turn_share and i + 1 < len(chats) else 1
        messages: list[dict[str, str]] = []
        for k, pair in enumerate(chats[i : i + turns]):
            messages += skills.conversation(pair, rng, system_share=0.3 if k == 0 else 0.0)
        i += turns
        ids, mask = render(tokenizer, messages)
        if len(ids) > recipe.max_seq_tokens:
            continue
        out.append(Example(ids=ids, mask=mask, line=0))
    rng.shuffle(out)
    return out


def _batches(examples: list[Example], recipe: Recipe, rng: random.Random) -> list[list[Example]]:
    """Consecutive groups of about batch_tokens tokens, reshuffled every pass over the data."""
    order = list(range(len(examples)))
    batches: list[list[Example]] = []
    while len(batches) < recipe.steps:
        rng.shuffle(order)
        lengths = [len(examples[j].ids) for j in order]
        for group in micro_batches(lengths, recipe.batch_tokens):
            batches.append([examples[order[g]] for g in group])
    return batches[: recipe.steps]


def _lr_factor(recipe: Recipe) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < recipe.warmup_steps:
            return (step + 1) / recipe.warmup_steps
        progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * cosine

    return factor


def pretrain(model: torch.nn.Module, tokenizer: Any, recipe: Recipe) -> dict[str, Any]:
    """Train model in place on the recipe's data; return a summary (loss at start and end, tokens, seconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    started = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.seed)
            rng = random.Random(recipe.seed)
            examples = build_examples(tokenizer, recipe)
            batches = _batches(examples, recipe, rng)
            decay = [p for p in model.parameters() if p.ndim >= 2]
            no_decay = [p for p in model.parameters() if p.ndim < 2]
            optimizer = torch.optim.AdamW(
                [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                lr=recipe.learning_rate,
                betas=(0.9, 0.95),
                eps=1e-8,
            )
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(recipe))
            model.train()
            device = next(model.parameters()).device
            losses: list[float] = []
            tokens = 0
            for step, batch in enumerate(batches):
                stats = sft_forward(model, batch, device)
                n = max(1, stats.n_tokens)
                torch.autograd.backward(stats.loss_sum / n)
                torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(stats.loss_sum.detach()) / n)
                tokens += sum(len(e.ids) for e in batch)
                if step % 50 == 0 or step == len(batches) - 1:
                    log.info("pretrain step %d/%d loss %.3f", step + 1, len(batches), losses[-1])
            model.eval()
    finally:
        torch.set_num_threads(threads)
    head = losses[: min(10, len(losses))]
    tail = losses[-min(10, len(losses)) :]
    return {
        "examples": len(examples),
        "steps": len(batches),
        "tokens": tokens,
        "loss_first": round(sum(head) / max(1, len(head)), 4),
        "loss_last": round(sum(tail) / max(1, len(tail)), 4),
        "seconds": round(time.perf_counter() - started, 1),
    }
