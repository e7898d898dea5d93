"""Full fine-tunes in the inference process: registered like adapters, served on their own engines, LRU and budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch

from engine.chat import stop_token_ids
from engine.inference.loading import identity_for
from engine.manifest import ArtifactManifest, ResolvedSpec
from serve.app import create_app
from serve.service import InferenceService
from serve.settings import ServeSettings
from tests.serve.servers import Server, _raw_request, free_port
from tests.support.inference_testing import build_random_base

torch.set_num_threads(2)
BASE = "full-base"
MSGS = [{"role": "user", "content": "hello, how are you?"}]
PROMPT = "the quick brown fox"


def make_full_model(base_dir: Path, out_dir: Path, seed: int, manifest_overrides: dict[str, Any] | None = None) -> Path:
    """A full fine-tune of base_dir: every weight moved by seeded noise, saved with its tokenizer and a manifest."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.2)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    identity = identity_for(BASE, base_dir)
    manifest = ArtifactManifest(
        kind="full",
        base_model=BASE,
        base_model_sha256=identity.content_hash,
        tokenizer_sha256=identity.tokenizer_hash,
        chat_template=tokenizer.chat_template,
        special_tokens={str(k): str(v) for k, v in tokenizer.special_tokens_map.items()},
        stop_tokens=[str(tokenizer.convert_ids_to_tokens(i)) for i in stop_token_ids(tokenizer)],
        stop_token_ids=stop_token_ids(tokenizer),
        training_file_sha256="0" * 64,  # made up: no dataset behind random noise
        validation_file_sha256=None,
        spec=ResolvedSpec(method="supervised", tuning={"type": "full"}, hyperparameters={}, seed=seed),
        step=0,
        trained_tokens=0,
    )
    data = {**manifest.model_dump(mode="json"), **(manifest_overrides or {})}  # overrides may break it on purpose
    (out_dir / "manifest.json").write_text(json.dumps(data, indent=2))
    return out_dir


def greedy(model_dir: Path, prompt_ids: list[int], max_tokens: int) -> list[int]:
    """What stock transformers generates greedily from that directory (no EOS stop: max_tokens exactly)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)
    model.train(False)
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt_ids]),
            max_new_tokens=max_tokens,
            min_new_tokens=max_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return [int(t) for t in out[0, len(prompt_ids) :]]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("full")
    # hidden 128: each model's weights are ~1.5 MiB, so a 1 MiB budget refuses one and a 2 MiB budget holds one
    base = build_random_base(root / "models" / BASE, hidden=128)
    jobs = root / "jobs"
    return {
        "root": root,
        "base": base,
        "f1": make_full_model(base, jobs / "f1" / "model", seed=1),
        "f2": make_full_model(base, jobs / "f2" / "model", seed=2),
        "f3": make_full_model(base, jobs / "f3" / "model", seed=3),
        "wrong": make_full_model(
            base, jobs / "wrong" / "model", seed=4, manifest_overrides={"base_model_sha256": "e" * 64}
        ),
        "lora_kind": make_full_model(base, jobs / "lk" / "model", seed=5, manifest_overrides={"kind": "lora"}),
    }


def served(world: dict[str, Path], **limits: Any) -> Server:
    settings = ServeSettings(**{"max_output_tokens": 64, **limits})
    return Server(create_app(str(world["base"]), world["root"], settings=settings, name=BASE))


@pytest.fixture(scope="module")
def server(world: dict[str, Path]) -> Iterator[Server]:
    with served(world, max_loaded_full_models=2) as running:
        yield running
        service_of(running).shutdown()


def service_of(server: Server) -> InferenceService:
    service: InferenceService = server.app.state.service
    return service


def sdk(server: Server) -> Any:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0)


def load(server: Server, name: str, path: Path | str) -> httpx.Response:
    body = {"lora_name": name, "lora_path": str(path)}
    return httpx.post(server.url + "/v1/load_lora_adapter", json=body, timeout=60)


def no_paths(text: str, world: dict[str, Path]) -> None:
    assert (
        str(world["root"]) not in text
        and "/tmp" not in text
        and "safetensors" not in text.replace("model.safetensors (only safetensors load)", "")
    ), text


def test_a_full_model_answers_what_transformers_generates_from_its_weights(
    server: Server, world: dict[str, Path]
) -> None:
    assert load(server, "ft:full-base:p::f1", world["f1"]).status_code == 200
    again = load(server, "ft:full-base:p::f1", world["f1"])
    assert again.status_code == 200 and "already loaded" in again.text  # idempotent, as the gateway needs
    client = sdk(server)
    ids = [m.id for m in client.models.list()]
    assert BASE in ids and "ft:full-base:p::f1" in ids
    tokenizer = service_of(server).base.tokenizer
    prompt = [int(i) for i in tokenizer(PROMPT, add_special_tokens=False)["input_ids"]]
    answers = {}
    for model, directory in ((BASE, world["base"]), ("ft:full-base:p::f1", world["f1"])):
        expected = greedy(directory, prompt, 8)
        done = client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0)
        # an EOS the reference produced ends ours early ("stop"); the tokens before it must agree
        text = done.choices[0].text
        reference = tokenizer.decode(expected)
        assert reference.startswith(text) and (text == reference or done.choices[0].finish_reason == "stop")
        answers[model] = reference
    assert answers[BASE] != answers["ft:full-base:p::f1"]  # the full model's own weights answered


def test_chat_streaming_and_plain_agree_on_a_full_model(server: Server, world: dict[str, Path]) -> None:
    assert load(server, "ft:full-base:p::f2", world["f2"]).status_code == 200
    client = sdk(server)
    plain = client.chat.completions.create(model="ft:full-base:p::f2", messages=MSGS, max_tokens=10, temperature=0)
    assert plain.model == "ft:full-base:p::f2" and plain.choices[0].finish_reason in ("stop", "length")
    stream = client.chat.completions.create(
        model="ft:full-base:p::f2", messages=MSGS, max_tokens=10, temperature=0, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == plain.choices[0].message.content
    base = client.chat.completions.create(model=BASE, messages=MSGS, max_tokens=10, temperature=0)
    assert base.choices[0].message.content != text


def test_the_lru_cap_evicts_the_least_recently_used_idle_full_model(server: Server, world: dict[str, Path]) -> None:
    client = sdk(server)
    service = service_of(server)
    for name in ("f1", "f2", "f3"):
        assert load(server, f"lru:{name}", world[name]).status_code == 200
    for name in ("f1", "f2"):
        client.completions.create(model=f"lru:{name}", prompt=PROMPT, max_tokens=2)
    assert service.full_models.resident()[-2:] == ["lru:f1", "lru:f2"]
    first = next(m for m in service.full_models._resident.values() if m.entry.name == "lru:f1")
    evictions = service.full_models.evictions
    client.completions.create(model="lru:f3", prompt=PROMPT, max_tokens=2)
    assert service.full_models.resident() == ["lru:f2", "lru:f3"]  # max_loaded_full_models=2
    assert service.full_models.evictions == evictions + 1 and first.engine.closed
    again = client.completions.create(model="lru:f1", prompt=PROMPT, max_tokens=2)  # reloaded on demand
    assert again.choices[0].finish_reason in ("stop", "length")
    assert service.full_models.resident() == ["lru:f3", "lru:f1"]


def test_a_held_full_model_is_never_evicted_and_the_newcomer_waits_with_503(world: dict[str, Path]) -> None:
    with served(world, max_loaded_full_models=1, max_output_tokens=600) as running:
        try:
            for name in ("f1", "f2"):
                assert load(running, f"busy:{name}", world[name]).status_code == 200
            # a stream nobody reads, on a tiny receive window: the answer cannot end, so busy:f1 stays held
            body = {"model": "busy:f1", "messages": MSGS, "max_tokens": 500, "n": 8, "stream": True}
            stuck = _raw_request(running.port, body, {})
            small = {"prompt": PROMPT, "max_tokens": 2}
            deadline = time.monotonic() + 30
            while service_of(running).full_models.resident() != ["busy:f1"]:
                assert time.monotonic() < deadline, "the stuck stream never started"
                time.sleep(0.05)
            refused = httpx.post(running.url + "/v1/completions", json={**small, "model": "busy:f2"}, timeout=60)
            stuck.close()
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1", refused.text
            assert "busy:f2" in refused.json()["error"]["message"]
            deadline = time.monotonic() + 30  # the stream's close releases busy:f1 (its abort reaches the engine)
            while True:
                late = httpx.post(running.url + "/v1/completions", json={**small, "model": "busy:f2"}, timeout=60)
                if late.status_code == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert late.status_code == 200, late.text
            assert service_of(running).full_models.resident() == ["busy:f2"]
        finally:
            service_of(running).shutdown()


def test_the_memory_budget_evicts_and_refuses_a_model_that_cannot_fit(world: dict[str, Path]) -> None:
    with served(world, max_full_models_memory_mib=2) as running:  # one ~1.5 MiB model fits, two do not
        try:
            client = sdk(running)
            for name in ("f1", "f2"):
                assert load(running, f"mem:{name}", world[name]).status_code == 200
                client.completions.create(model=f"mem:{name}", prompt=PROMPT, max_tokens=2)
            assert service_of(running).full_models.resident() == ["mem:f2"]  # below the count cap: bytes decided
        finally:
            service_of(running).shutdown()
    with served(world, max_full_models_memory_mib=1) as running:
        try:
            assert load(running, "mem:big", world["f1"]).status_code == 200  # registered; its weights never load
            for stream in (False, True):
                body = {"model": "mem:big", "messages": MSGS, "max_tokens": 4, "stream": stream}
                refused = httpx.post(running.url + "/v1/chat/completions", json=body, timeout=60)
                assert refused.status_code == 503, refused.text
                error = refused.json()["error"]
                assert error["code"] == "model_too_large" and "`mem:big`" in error["message"]
                assert "MiB" in error["message"]
                no_paths(refused.text, world)
            assert service_of(running).full_models.resident() == []
            ok = httpx.post(running.url + "/v1/chat/completions", json={"model": BASE, "messages": MSGS}, timeout=60)
            assert ok.status_code == 200  # the base model is not part of that budget
        finally:
            service_of(running).shutdown()


def test_full_models_are_checked_like_adapters_and_errors_name_no_path(server: Server, world: dict[str, Path]) -> None:
    outside = world["root"].parent / f"outside-{os.getpid()}"
    if not outside.exists():
        make_full_model(world["base"], outside, seed=9)
    linked = world["root"] / "jobs" / "linked"  # inside the root, but its weights are a link to a file outside it
    linked.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "manifest.json"):
        (linked / name).write_bytes((outside / name).read_bytes())
    if not (linked / "model.safetensors").exists():
        (linked / "model.safetensors").symlink_to(outside / "model.safetensors")
    no_weights = world["root"] / "jobs" / "no-weights"
    no_weights.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "manifest.json"):
        (no_weights / name).write_bytes((world["f1"] / name).read_bytes())
    cases = {
        "ft:wrong": (world["wrong"], "different base model"),
        "ft:lora-kind": (world["lora_kind"], "not a full model"),
        "ft:linked": (linked, "inside this server's data directory"),
        "ft:outside": (outside, "inside this server's data directory"),
        "ft:no-weights": (no_weights, "no model.safetensors"),
    }
    for name, (path, why) in cases.items():
        refused = load(server, name, path)
        assert refused.status_code == 400, (name, refused.text)
        error = refused.json()["error"]
        assert why in error["message"] and name in error["message"] and error["param"] == "lora_path"
        no_paths(refused.text, world)
        assert str(outside) not in refused.text
    listed = httpx.get(server.url + "/v1/models", timeout=60).text
    assert "ft:wrong" not in listed and str(world["root"]) not in listed
    client = sdk(server)
    assert load(server, "ft:gone", world["f3"]).status_code == 200
    client.completions.create(model="ft:gone", prompt=PROMPT, max_tokens=2)
    httpx.post(server.url + "/v1/unload_lora_adapter", json={"lora_name": "ft:gone"}, timeout=60).raise_for_status()
    assert "ft:gone" not in service_of(server).full_models.resident()  # idle: its engine closed at once
    with pytest.raises(openai.NotFoundError) as gone:
        client.chat.completions.create(model="ft:gone", messages=MSGS)
    assert gone.value.code == "model_not_found"
    missing = httpx.post(server.url + "/v1/unload_lora_adapter", json={"lora_name": "ft:gone"}, timeout=60)
    assert missing.status_code == 404


def test_a_base_model_given_by_path_answers_under_its_served_name(world: dict[str, Path]) -> None:
    """`python -m serve --base-model /local/dir --served-model-name NAME`: NAME answers, the path does not."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["--base-model", str(world["base"]), "--served-model-name", "my-base", "--data-dir", str(world["root"])]
    process = subprocess.Popen(
        [sys.executable, "-m", "serve", *args, "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "python -m serve did not start"
            time.sleep(0.3)
        client: Any = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        assert [m.id for m in client.models.list()] == ["my-base"]
        reply = client.chat.completions.create(model="my-base", messages=MSGS, max_tokens=4)
        assert reply.model == "my-base" and reply.choices[0].finish_reason in ("stop", "length")
        with pytest.raises(openai.NotFoundError) as by_path:
            client.chat.completions.create(model=str(world["base"]), messages=MSGS, max_tokens=4)
        assert by_path.value.code == "model_not_found"  # the path is where it loads from, not a model id
    finally:
        process.terminate()
        process.wait(timeout=30)
