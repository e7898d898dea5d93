"""The packed, padding-free forward equals separate forwards, example by example."""

from __future__ import annotations

import torch

from engine.models import load_model_and_tokenizer
from engine.packing import pack, packed_logits
from tests.engine.engine_helpers import tiny_chat_path


def test_packed_forward_matches_separate_forwards() -> None:
    model, _ = load_model_and_tokenizer(tiny_chat_path())
    g = torch.Generator().manual_seed(0)
    examples = []
    for n in (7, 31, 3, 18):
        ids = torch.randint(5, model.config.vocab_size, (n,), generator=g).tolist()
        examples.append((ids, [1] * n))
    batch = pack(examples)
    with torch.no_grad():
        packed = packed_logits(model, batch, positions=torch.arange(batch.n_tokens))
        for (start, end), (ids, _) in zip(batch.segments, examples, strict=True):
            alone = model(input_ids=torch.tensor([ids])).logits[0]
            torch.testing.assert_close(packed[start:end], alone, rtol=1e-4, atol=1e-5)
        # Without the segment boundaries later examples would attend to earlier ones and differ.
        leaky = model(input_ids=batch.input_ids).logits[0]
        s, e = batch.segments[1]
        assert not torch.allclose(leaky[s:e], packed[s:e], atol=1e-3)


def test_loss_positions_select_exactly_the_masked_targets() -> None:
    batch = pack([([1, 2, 3, 4], [0, 0, 1, 1]), ([5, 6, 7], [0, 1, 0])])
    assert batch.loss_positions.tolist() == [1, 2, 4]
    assert batch.targets.tolist() == [3, 4, 6]
    assert batch.example_index.tolist() == [0, 0, 1]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2]]


def test_fused_lora_forward_matches_peft() -> None:
    import copy

    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model

    from engine import fastlora

    base, _ = load_model_and_tokenizer(tiny_chat_path())
    torch.manual_seed(0)
    slow = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"]))
    for name, p in slow.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)  # B starts at zero; make the adapter path matter
    fast = copy.deepcopy(slow)
    assert fastlora.install(fast) == 8
    batch = pack([(list(range(5, 40)), [1] * 35), (list(range(50, 70)), [1] * 20)])
    grads = []
    for model in (slow, fast):
        model.train()
        loss = F.cross_entropy(packed_logits(model, batch), batch.targets)
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6)
    plain, _ = load_model_and_tokenizer(tiny_chat_path())
    with fast.disable_adapter(), torch.no_grad():  # the fused path steps aside when the adapter is off
        torch.testing.assert_close(packed_logits(fast, batch), packed_logits(plain, batch))
