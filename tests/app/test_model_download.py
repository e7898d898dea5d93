"""GET /v1/models/{model}/content against a real server: adapter and merged archives of real tiny-chat runs,
loaded with stock transformers/peft, answer exactly what TuneForge serves."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from tests.conftest import Server, start_server
from tests.engine.engine_helpers import secret_rows
from tests.jobs.helpers import FAST_ENV

ROWS = secret_rows(12)
DATA = "".join(json.dumps(row) + "\n" for row in ROWS).encode()
ENV = {
    **FAST_ENV,
    # evaluation stays on (the model card shows its figures) but small
    "TUNEFORGE_EVAL_VALID_EXAMPLES": "4",
    "TUNEFORGE_EVAL_GENERATION_EXAMPLES": "2",
    "TUNEFORGE_EVAL_GENERATION_MAX_TOKENS": "8",
    "TUNEFORGE_EVAL_PROBE_TOKENS": "128",
    "TUNEFORGE_EVAL_PROBE_PER_SKILL": "1",
}
TRAINING_ONLY = {"optimizer.pt", "scheduler.pt", "rng.pt", "state.json", "MANIFEST.json", "reference_logps.safetensors"}
MEASURED: dict[str, Any] = {}


def _train(server: Server, tuning: str) -> str:
    client = server.openai("alpha")
    training = client.files.create(file=("secrets.jsonl", DATA), purpose="fine-tune")
    hp: dict[str, Any] = {"n_epochs": 1, "batch_size": 6, "learning_rate": 4e-3, "tuning": tuning}
    hp |= {"checkpoint_interval": 1, "n_checkpoints": 3, "max_seq_length": 64}
    job = client.fine_tuning.jobs.create(
        model="tiny-chat",
        training_file=training.id,
        suffix=tuning,
        seed=3,
        method={"type": "supervised", "supervised": {"hyperparameters": hp}},  # type: ignore[typeddict-unknown-key]
    )
    deadline = time.monotonic() + 600
    while job.status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job stuck in {job.status}"
        time.sleep(0.5)
        job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model
    return job.fine_tuned_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str]]]:
    server = start_server(tmp_path_factory.mktemp("download"), ENV)
    try:
        lora = _train(server, "lora")
        full = _train(server, "full")
        models = {"lora": lora, "full": full, "ckpt1": f"{lora}:ckpt-step-1", "ckpt2": f"{lora}:ckpt-step-2"}
        listed = {m.id for m in server.openai("alpha").models.list()}
        assert set(models.values()) <= listed, listed
        yield server, models
    finally:
        server.stop()
        if MEASURED:
            print("\nmodel download measurements:", json.dumps(MEASURED, indent=2))


def _get(server: Server, model: str, project: str = "alpha", **params: str) -> httpx.Response:
    return httpx.get(
        f"{server.base_url}/v1/models/{model}/content",
        params=params,
        headers={"authorization": f"Bearer {server.key(project)}"},
        timeout=600,
    )


def _unpack(body: bytes, dest: Path, gz: bool = False) -> Path:
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz" if gz else "r:") as tar:
        tops = {m.name.split("/", 1)[0] for m in tar.getmembers()}
        assert len(tops) == 1, tops
        tar.extractall(dest, filter="data")
    return dest / tops.pop()


def _build_lines(server: Server, model: str, fmt: str) -> list[str]:
    return [
        line
        for line in server.log_path.read_text(errors="replace").splitlines()
        if "model export built" in line and f"model={model} format={fmt} " in line
    ]


def _error(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    return body


def _served(server: Server, model: str, messages: list[dict[str, str]]) -> str:
    reply = server.openai("alpha").chat.completions.create(
        model=model,
        messages=messages,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=24,
    )
    return reply.choices[0].message.content or ""


def _greedy(model: Any, folder: Path, messages: list[dict[str, str]]) -> str:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    stops = json.loads((folder / "manifest.json").read_text())["stop_token_ids"]
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]), do_sample=False, max_new_tokens=24, eos_token_id=stops, pad_token_id=stops[0]
        )
    new = [t for t in out[0, len(ids) :].tolist() if t not in stops]
    return str(tok.decode(new, skip_special_tokens=True))


def _prompts() -> list[list[dict[str, str]]]:
    return [ROWS[0]["messages"][:1], ROWS[5]["messages"][:1], [{"role": "user", "content": "Tell me a story."}]]


def test_refusals_name_their_parameter_and_other_projects_see_nothing(trained: tuple[Server, dict[str, str]]) -> None:
    server, models = trained
    foreign = _get(server, models["lora"], project="beta")
    missing = _get(server, "ft:tiny-chat:alpha:nope:Zz99Zz99")
    assert foreign.status_code == missing.status_code == 404
    assert _error(foreign)["code"] == "model_not_found" and _error(foreign)["param"] is None
    assert _error(foreign)["message"] == _error(missing)["message"].replace(
        "ft:tiny-chat:alpha:nope:Zz99Zz99", models["lora"]
    )
    base = _get(server, "tiny-chat")
    assert base.status_code == 400 and _error(base)["param"] == "model"
    assert _error(base)["code"] == "model_not_downloadable"
    for model, params in (
        ("tiny-chat", {"format": "adapter"}),
        (models["full"], {"format": "adapter"}),
        (models["lora"], {"format": "gguf"}),
    ):
        answer = _get(server, model, **params)
        assert answer.status_code == 400 and _error(answer)["param"] == "format", (model, params, answer.text)
    bad = _get(server, models["lora"], compression="zip")
    assert bad.status_code == 400 and _error(bad)["param"] == "compression"
    for answer in (foreign, base, bad):
        assert str(server.data_dir) not in answer.text


def test_a_merge_over_the_memory_setting_is_refused_and_ids_ending_in_content_still_retrieve(
    trained: tuple[Server, dict[str, str]],
) -> None:
    server, models = trained
    base_dir = server.data_dir / "models" / "tiny-chat"
    small = start_server(
        server.data_dir,
        {
            "TUNEFORGE_EXPORT_MERGE_MAX_MEMORY_MB": "64",
            "TUNEFORGE_EXPORT_CHUNK_BYTES": "4096",
            "TUNEFORGE_EMBEDDED_WORKER": "false",
            "TUNEFORGE_EMBEDDED_INFERENCE": "false",
            "TUNEFORGE_BASE_MODELS": f"tiny-chat,org/content={base_dir}",
        },
    )
    small.keys = dict(server.keys)
    try:
        refused = _get(small, models["ckpt2"], format="merged")
        assert refused.status_code == 400, refused.text
        body = _error(refused)
        assert body["param"] == "format" and body["code"] == "merge_too_large"
        assert models["ckpt2"] in body["message"] and "64 MiB" in body["message"]
        assert str(server.data_dir) not in refused.text
        small_chunks = _get(small, models["ckpt2"], format="adapter")  # adapters need no merge
        assert small_chunks.status_code == 200
        assert small_chunks.content == _get(server, models["ckpt2"], format="adapter").content  # 4 KiB pieces

        headers = {"authorization": f"Bearer {small.key('alpha')}"}
        whole = httpx.get(f"{small.base_url}/v1/models/org/content", headers=headers)
        assert whole.status_code == 200 and whole.json()["id"] == "org/content" and whole.json()["object"] == "model"
        download = httpx.get(f"{small.base_url}/v1/models/org/content/content", headers=headers)
        assert download.status_code == 400 and _error(download)["param"] == "model"  # a base: not downloadable
    finally:
        small.stop()


def test_an_export_past_its_time_limit_answers_503(trained: tuple[Server, dict[str, str]]) -> None:
    server, models = trained
    quick = start_server(
        server.data_dir,
        {
            "TUNEFORGE_EXPORT_TIMEOUT_S": "0.05",
            "TUNEFORGE_EMBEDDED_WORKER": "false",
            "TUNEFORGE_EMBEDDED_INFERENCE": "false",
        },
    )
    quick.keys = dict(server.keys)
    try:
        late = _get(quick, f"{models['full']}:ckpt-step-2")
        assert late.status_code == 503, late.text
        assert models["full"] in _error(late)["message"] and str(server.data_dir) not in late.text
    finally:
        quick.stop()
    assert _get(server, f"{models['full']}:ckpt-step-2").status_code == 200
    leftovers = [p.name for p in (server.data_dir / "exports").iterdir() if ".tmp-" in p.name]
    assert not leftovers, leftovers  # the killed build's half-written folder was swept by the next one


def test_adapter_archive_loads_with_stock_peft_and_answers_like_the_server(
    trained: tuple[Server, dict[str, str]], tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    server, models = trained
    started = time.perf_counter()
    answer = _get(server, models["lora"])
    seconds = time.perf_counter() - started
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/x-tar"
    assert int(answer.headers["content-length"]) == len(answer.content)
    assert answer.headers["content-disposition"].endswith('-adapter.tar"')
    MEASURED["adapter"] = {"bytes": len(answer.content), "seconds": round(seconds, 2)}
    folder = _unpack(answer.content, tmp_path)
    names = {p.name for p in folder.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "manifest.json", "README.md"} <= names
    assert {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"} <= names
    assert not names & TRAINING_ONLY and "config.json" not in names
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny-chat"
    card = (folder / "README.md").read_text()
    assert 'base_model: "tiny-chat"' in card and hashlib.sha256(DATA).hexdigest() in card
    assert "## Evaluation" in card and "| metric | base | tuned |" in card and "forgetting" in card

    base = AutoModelForCausalLM.from_pretrained(str(server.data_dir / "models" / "tiny-chat"), dtype=torch.float32)
    probe = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        before = base(probe).logits
    model = PeftModel.from_pretrained(base, str(folder))  # the base passed explicitly, not by its recorded name
    with torch.no_grad():
        assert not torch.allclose(model(probe).logits, before)  # the adapter is in the archive and does something
    served = [_served(server, models["lora"], messages) for messages in _prompts()]
    assert any(served), served
    assert [_greedy(model, folder, messages) for messages in _prompts()] == served


def test_merged_archive_loads_with_stock_transformers_and_is_built_once(
    trained: tuple[Server, dict[str, str]], tmp_path: Path
) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    server, models = trained
    started = time.perf_counter()
    answer = _get(server, models["lora"], format="merged")
    seconds = time.perf_counter() - started
    assert answer.status_code == 200, answer.text
    assert int(answer.headers["content-length"]) == len(answer.content)
    folder = _unpack(answer.content, tmp_path / "plain")
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "README.md"} <= names
    assert not any(n.startswith("adapter_") for n in names) and not names & TRAINING_ONLY
    assert "library_name: transformers" in (folder / "README.md").read_text()
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    base = load_file(str(server.data_dir / "models" / "tiny-chat" / "model.safetensors"))
    merged = load_file(str(folder / "model.safetensors"))
    assert set(merged) == set(base) and any(not torch.equal(merged[k], v) for k, v in base.items())
    served = [_served(server, models["lora"], messages) for messages in _prompts()]
    assert any(served), served
    assert [_greedy(model, folder, messages) for messages in _prompts()] == served

    again_started = time.perf_counter()
    gz = _get(server, models["lora"], format="merged", compression="gzip")
    again = time.perf_counter() - again_started
    assert gz.status_code == 200 and gz.headers["content-type"] == "application/gzip"
    assert "content-length" not in gz.headers or int(gz.headers["content-length"]) == len(gz.content)
    other = _unpack(gz.content, tmp_path / "gz", gz=True)
    assert (other / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    built = _build_lines(server, models["lora"], "merged")
    assert len(built) == 1, built  # the second download reused the cached folder
    MEASURED["merged"] = {
        "bytes": len(answer.content),
        "seconds_first (merge + stream)": round(seconds, 2),
        "seconds_cached_gzip": round(again, 2),
        "gzip_bytes": len(gz.content),
        "build_log": built[0].split("model export built: ", 1)[1],
    }


def test_concurrent_merges_build_once_and_the_limit_answers_503(
    trained: tuple[Server, dict[str, str]], tmp_path: Path
) -> None:
    server, models = trained
    answers: dict[int, httpx.Response] = {}
    wanted = [models["ckpt1"], models["ckpt1"], models["ckpt2"]]

    def fetch(i: int) -> None:
        answers[i] = _get(server, wanted[i], format="merged")

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(len(wanted))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = {wanted[i] for i, a in answers.items() if a.status_code == 200}
    busy = [a for a in answers.values() if a.status_code == 503]
    assert len(ok) == 1 and busy, {i: (wanted[i], a.status_code) for i, a in answers.items()}  # one merge at a time
    assert all(_error(a)["type"] == "server_error" and int(a.headers["retry-after"]) > 0 for a in busy)
    winner = ok.pop()
    assert len(_build_lines(server, winner, "merged")) == 1
    bodies = {answers[i].content for i in answers if answers[i].status_code == 200}
    assert len(bodies) == 1  # both downloads of one model: the same bytes
    for model in (models["ckpt1"], models["ckpt2"]):  # now each one in turn
        answer = _get(server, model, format="merged")
        assert answer.status_code == 200, answer.text
        folder = _unpack(answer.content, tmp_path / model.rsplit(":", 1)[1])
        names = {p.name for p in folder.iterdir()}
        assert "model.safetensors" in names and not names & TRAINING_ONLY, names
        assert json.loads((folder / "manifest.json").read_text())["step"] == int(model.rsplit("-", 1)[1])
        assert len(_build_lines(server, model, "merged")) == 1


def test_full_fine_tune_downloads_its_own_weights(trained: tuple[Server, dict[str, str]], tmp_path: Path) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    server, models = trained
    answer = _get(server, models["full"])  # merged is the default of a full fine-tune
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-disposition"].endswith('-merged.tar"')
    folder = _unpack(answer.content, tmp_path)
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "manifest.json", "README.md"} <= names
    assert not names & TRAINING_ONLY
    card = (folder / "README.md").read_text()
    assert "full fine-tuning" in card and hashlib.sha256(DATA).hexdigest() in card
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    base = load_file(str(server.data_dir / "models" / "tiny-chat" / "model.safetensors"))
    state = model.state_dict()
    assert any(not torch.equal(state[k], v) for k, v in base.items())  # trained, not the base
    checkpoint = _get(server, f"{models['full']}:ckpt-step-1")
    assert checkpoint.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(checkpoint.content)) as tar:
        ckpt_names = {m.rsplit("/", 1)[-1] for m in tar.getnames()}
    assert "model.safetensors" in ckpt_names and not ckpt_names & TRAINING_ONLY
    served = server.openai("alpha").chat.completions.create(
        model=models["full"],
        messages=_prompts()[0],
        temperature=0,
        max_tokens=24,  # type: ignore[arg-type]
    )
    assert _greedy(model, folder, _prompts()[0]) == served.choices[0].message.content
