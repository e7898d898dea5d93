"""Models API: base models for everyone, fine-tuned models and checkpoints only for their project."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
import sqlalchemy as sa

from tests.conftest import Server


def _register(server: Server, project: str, model_id: str, kind: str = "fine_tuned") -> None:
    """Write a registry row as a finished job would (the jobs tests cover the real path end to end)."""
    server.key(project)
    url = server.env.get("TUNEFORGE_DATABASE_URL") or f"sqlite:///{server.data_dir / 'tuneforge.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        project_id = conn.execute(sa.text("SELECT id FROM projects WHERE name = :n"), {"n": project}).scalar_one()
        conn.execute(
            sa.text(
                "INSERT INTO models (id, project_id, base_model, kind, job_id, step, artifact_dir, created_ns) "
                "VALUES (:id, :p, 'tiny-chat', :kind, 'ftjob-x', NULL, '/nonexistent', :t)"
            ),
            {"id": model_id, "p": project_id, "kind": kind, "t": time.time_ns()},
        )
    engine.dispose()


def test_list_retrieve_delete_and_isolation(server: Server) -> None:
    ours = "ft:tiny-chat:modelowner:demo:Ab12Cd34"
    checkpoint = ours + ":ckpt-step-10"
    slashed = "ft:org/base-7b:modelowner::Zz99Yy88"
    for model_id, kind in ((ours, "fine_tuned"), (checkpoint, "checkpoint"), (slashed, "fine_tuned")):
        _register(server, "modelowner", model_id, kind)
    owner = server.openai("modelowner")
    other = server.openai("modelother")

    listed = {m.id: m for m in owner.models.list()}
    assert {"tiny-chat", ours, checkpoint, slashed} <= set(listed)
    assert listed["tiny-chat"].owned_by == "system" and listed[ours].owned_by == "modelowner"
    assert set(m.id for m in other.models.list()) == {"tiny-chat"}

    assert owner.models.retrieve(ours).id == ours  # colons arrive literally
    assert owner.models.retrieve(slashed).id == slashed  # the SDK sends '/' as %2F
    for model_id in (ours, checkpoint, slashed):
        with pytest.raises(openai.NotFoundError) as err:
            other.models.retrieve(model_id)
        assert err.value.code == "model_not_found"
        assert err.value.body["message"] == f"The model `{model_id}` does not exist or you do not have access to it."  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        other.models.delete(ours)

    with pytest.raises(openai.BadRequestError):
        owner.models.delete(checkpoint)
    with pytest.raises(openai.PermissionDeniedError):
        owner.models.delete("tiny-chat")
    deleted = owner.models.delete(ours)
    assert (deleted.id, deleted.deleted) == (ours, True)
    with pytest.raises(openai.NotFoundError):
        owner.models.retrieve(ours)
    assert ours not in {m.id for m in owner.models.list()}


def test_chat_with_a_foreign_or_unknown_model_is_404(server: Server) -> None:
    theirs = "ft:tiny-chat:chatowner:s:Qq11Ww22"
    _register(server, "chatowner", theirs)
    client = server.openai("chatother")
    for model_id in (theirs, "no-such-model"):
        with pytest.raises(openai.NotFoundError) as err:
            client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "hi"}])
        assert err.value.code == "model_not_found"
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model=model_id, prompt="hi")
    headers = {"authorization": f"Bearer {server.key('chatother')}"}
    bad = httpx.post(f"{server.base_url}/v1/chat/completions", headers=headers, json={"messages": []})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "model"
