"""Cluster mode: the API forwards chat to a separate `tuneforge inference` process over HTTP, loading adapters
through the runtime LoRA endpoints (the same calls a vLLM server takes)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import Server, free_port, start_server, tuneforge_cmd
from tests.jobs.helpers import FAST_ENV
from tests.model_cache import seed_tiny_chat

SERVICE_KEY = "inference-service-key"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    data_dir = Path(tmp_path_factory.mktemp("cluster"))  # shared by both processes, like a shared volume
    seed_tiny_chat(data_dir)
    port = free_port()
    env = {**FAST_ENV, "TUNEFORGE_DATA_DIR": str(data_dir), "TUNEFORGE_INFERENCE_API_KEY": SERVICE_KEY}
    log = open(data_dir / "inference.log", "wb")  # noqa: SIM115  (the child owns it)
    inference = subprocess.Popen(
        tuneforge_cmd("inference", "--base-model", "tiny-chat", "--host", "127.0.0.1", "--port", str(port)),
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert inference.poll() is None, (data_dir / "inference.log").read_text()
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "inference process did not start"
        time.sleep(0.3)
    api = start_server(data_dir, {**env, "TUNEFORGE_INFERENCE_URLS": f"tiny-chat={url}"})
    yield api, url
    api.stop()
    inference.terminate()
    inference.wait(timeout=30)


def test_the_inference_process_refuses_callers_without_the_service_key(cluster: tuple[Server, str]) -> None:
    _, url = cluster
    body = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(f"{url}/v1/chat/completions", json=body)
    assert response.status_code == 401


def test_fine_tuned_model_is_served_by_the_remote_inference_process(cluster: tuple[Server, str]) -> None:
    api, url = cluster
    client = api.openai("clusterproj")
    rows = [
        {"messages": [{"role": "user", "content": f"Code {i}?"}, {"role": "assistant", "content": f"C{i}."}]}
        for i in range(10)
    ]
    training = client.files.create(
        file=("t.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode()), purpose="fine-tune"
    )
    job = client.fine_tuning.jobs.create(
        model="tiny-chat",
        training_file=training.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 2}}},
    )
    deadline = time.monotonic() + 300
    while job.status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline
        time.sleep(0.5)
        job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded" and job.fine_tuned_model, job.error

    reply = client.chat.completions.create(
        model=job.fine_tuned_model, messages=[{"role": "user", "content": "Code 1?"}], max_tokens=8, temperature=0
    )
    assert reply.model == job.fine_tuned_model and reply.choices[0].finish_reason in ("stop", "length")
    # The gateway registered the adapter on the remote process through /v1/load_lora_adapter.
    served = httpx.get(f"{url}/v1/models", headers={"authorization": f"Bearer {SERVICE_KEY}"}).json()["data"]
    assert job.fine_tuned_model in {m["id"] for m in served}

    streamed = client.chat.completions.create(
        model=job.fine_tuned_model,
        messages=[{"role": "user", "content": "Code 1?"}],
        max_tokens=8,
        temperature=0,
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == reply.choices[0].message.content

    # Deleting the model unloads it from the inference process; chat then answers 404 like any unknown model.
    client.models.delete(job.fine_tuned_model)
    served = httpx.get(f"{url}/v1/models", headers={"authorization": f"Bearer {SERVICE_KEY}"}).json()["data"]
    assert job.fine_tuned_model not in {m["id"] for m in served}
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "hi"}])
