"""Small JSONL datasets for API tests."""

from __future__ import annotations

import json


def chat_jsonl(n: int = 12, *, tag: str = "x") -> bytes:
    lines = [
        {
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": f"What is code {tag}{i}?"},
                {"role": "assistant", "content": f"Code {tag}{i} is {i * 7}."},
            ]
        }
        for i in range(n)
    ]
    return ("\n".join(json.dumps(line) for line in lines) + "\n").encode()


def preference_jsonl(n: int = 12) -> bytes:
    lines = [
        {
            "input": {"messages": [{"role": "user", "content": f"Say hi {i}"}]},
            "preferred_output": [{"role": "assistant", "content": f"Hi {i}!"}],
            "non_preferred_output": [{"role": "assistant", "content": "No."}],
        }
        for i in range(n)
    ]
    return ("\n".join(json.dumps(line) for line in lines) + "\n").encode()
