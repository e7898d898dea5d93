"""Every model /v1/models lists answers chat and completions: base models (by name and by local path), a real full
fine-tune and its checkpoints; embedded, and through `tuneforge inference` processes behind the gateway."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch

from app.core.settings import Settings
from app.db.models import RegisteredModel
from tests.conftest import Server, free_port, start_server, tuneforge_cmd
from tests.jobs.helpers import FAST_ENV, database
from tests.support.inference_testing import build_tokenizer
from tuneforge.embedded import serve_settings

MSGS = [{"role": "user", "content": "Code 3?"}]
LOCAL = "qwen-local"


def build_local_qwen(out_dir: Path) -> Path:
    """A real-architecture base model made here: a tiny random Qwen2, its own BPE tokenizer and chat template."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data_dir = Path(tmp_path_factory.mktemp("every"))
    local = build_local_qwen(Path(tmp_path_factory.mktemp("operator-models")) / "qwen")
    env = {**FAST_ENV, "TUNEFORGE_BASE_MODELS": f"tiny-chat,{LOCAL}={local}"}
    server = start_server(data_dir, env)
    client = server.openai("every")
    rows = [
        {"messages": [{"role": "user", "content": f"Code {i}?"}, {"role": "assistant", "content": f"C{i}."}]}
        for i in range(10)
    ]
    training = client.files.create(
        file=("t.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode()), purpose="fine-tune"
    )
    hyperparameters = {
        "tuning": "full",
        "n_epochs": 2,
        "batch_size": 5,  # 4 steps
        "max_seq_length": 32,
        "checkpoint_interval": 2,
        "n_checkpoints": 10,
    }
    job = client.fine_tuning.jobs.create(
        model="tiny-chat",
        training_file=training.id,
        suffix="whole",
        method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
    )
    deadline = time.monotonic() + 600
    while job.status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job stuck in {job.status}"
        time.sleep(0.5)
        job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded" and job.fine_tuned_model, job.error
    checkpoints = [c.fine_tuned_model_checkpoint for c in client.fine_tuning.jobs.checkpoints.list(job.id)]
    assert len(checkpoints) >= 2 and any(":ckpt-step-" in c for c in checkpoints), checkpoints
    yield {
        "data_dir": data_dir,
        "local": local,
        "env": env,
        "server": server,
        "model": job.fine_tuned_model,
        "checkpoints": checkpoints,
        "answers": {},
    }
    server.stop()


def artifact_dir(server: Server, model: str) -> Path:
    with database(server).session() as session:
        row = session.get(RegisteredModel, model)
        assert row is not None
        return Path(row.artifact_dir)


def every_model_answers(client: Any, world: dict[str, Any]) -> dict[str, str]:
    """Chat (plain and streamed) and a completion from each listed model; its greedy chat answer by id."""
    listed = [m.id for m in client.models.list()]
    assert {"tiny-chat", LOCAL, world["model"], *world["checkpoints"]} <= set(listed), listed
    answers = {}
    for model in listed:
        reply = client.chat.completions.create(model=model, messages=MSGS, max_tokens=6, temperature=0)
        assert reply.model == model and reply.choices[0].finish_reason in ("stop", "length"), model
        stream = client.chat.completions.create(
            model=model,
            messages=MSGS,
            max_tokens=6,
            temperature=0,
            stream=True,
        )
        assert (
            "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == reply.choices[0].message.content
        )
        done = client.completions.create(model=model, prompt="Code 3?", max_tokens=4, temperature=0)
        assert done.model == model and done.choices[0].finish_reason in ("stop", "length"), model
        answers[model] = reply.choices[0].message.content or ""
    return answers


def assert_no_paths(error: openai.APIStatusError, world: dict[str, Any]) -> None:
    text = json.dumps(error.body)
    assert str(world["data_dir"]) not in text and str(world["local"].parent) not in text, text


def test_every_listed_model_answers_embedded(world: dict[str, Any]) -> None:
    server: Server = world["server"]
    client = server.openai("every")
    world["answers"] = every_model_answers(client, world)

    # The full fine-tune answers with its own weights: what stock transformers generates greedily from its directory.
    from transformers import AutoModelForCausalLM

    from engine.chat import stop_token_ids
    from engine.models import load_tokenizer

    tokenizer = load_tokenizer(server.data_dir / "models" / "tiny-chat")
    prompt = [int(i) for i in tokenizer("Code 3? C", add_special_tokens=False)["input_ids"]]
    stops = stop_token_ids(tokenizer)
    for model in (world["model"], next(c for c in world["checkpoints"] if ":ckpt-step-" in c)):
        tuned = AutoModelForCausalLM.from_pretrained(artifact_dir(server, model), use_safetensors=True)
        tuned.train(False)
        with torch.no_grad():
            out = tuned.generate(
                torch.tensor([prompt]), max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=stops
            )
        ids = [int(i) for i in out[0, len(prompt) :]]
        ids = ids[: next((n for n, i in enumerate(ids) if i in stops), len(ids))]  # served answers end before a stop
        expected = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        done = client.completions.create(model=model, prompt=prompt, max_tokens=6, temperature=0)
        assert done.choices[0].text == expected, model

    with pytest.raises(openai.NotFoundError) as by_path:  # the base answers to its offered name, not its directory
        client.chat.completions.create(model=str(world["local"]), messages=MSGS)
    assert by_path.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model=world["model"] + "x", messages=MSGS)
    assert_no_paths(unknown.value, world)


def _inference_process(world: dict[str, Any], base: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, **world["env"], "TUNEFORGE_DATA_DIR": str(world["data_dir"])}
    log = open(world["data_dir"] / f"inference-{base}.log", "wb")  # noqa: SIM115  (the child owns it)
    process = subprocess.Popen(
        tuneforge_cmd("inference", "--base-model", base, "--port", str(port)), env=env, stdout=log, stderr=log
    )
    return process, f"http://127.0.0.1:{port}"


def _wait_healthy(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "inference process did not start"
        time.sleep(0.3)


def test_every_listed_model_answers_through_tuneforge_inference_processes(world: dict[str, Any]) -> None:
    assert world["answers"], "runs after the embedded test, which records the answers to compare"
    world["server"].stop()  # the same data directory and database, now served the cluster way
    processes = {base: _inference_process(world, base) for base in ("tiny-chat", LOCAL)}
    api: Server | None = None
    try:
        for base, (process, url) in processes.items():
            _wait_healthy(process, url, world["data_dir"] / f"inference-{base}.log")
        # `--base-model qwen-local` serves the operator's local directory under that name
        assert [m["id"] for m in httpx.get(processes[LOCAL][1] + "/v1/models").json()["data"]] == [LOCAL]
        urls = ",".join(f"{base}={url}" for base, (_, url) in processes.items())
        api = start_server(world["data_dir"], {**world["env"], "TUNEFORGE_INFERENCE_URLS": urls})
        client = api.openai("every")
        answers = every_model_answers(client, world)
        assert answers == world["answers"]  # the same weights answer the same, wherever they are served
        served = {m["id"] for m in httpx.get(processes["tiny-chat"][1] + "/v1/models").json()["data"]}
        assert {world["model"], *world["checkpoints"]} <= served  # registered through /v1/load_lora_adapter
        with pytest.raises(openai.NotFoundError) as unknown:
            client.chat.completions.create(model=world["model"] + "x", messages=MSGS)
        assert_no_paths(unknown.value, world)
    finally:
        if api is not None:
            api.stop()
        for process, _ in processes.values():
            process.terminate()
            process.wait(timeout=30)


def test_the_full_model_limits_reach_the_inference_process() -> None:
    settings = Settings(max_loaded_full_models=3, max_full_models_memory_mib=512)
    limits = serve_settings(settings)
    assert (limits.max_loaded_full_models, limits.max_full_models_memory_mib) == (3, 512)
    defaults = serve_settings(Settings())
    assert (defaults.max_loaded_full_models, defaults.max_full_models_memory_mib) == (2, 8192)
