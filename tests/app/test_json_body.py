"""The strict JSON body parser: no NaN/Infinity, no overflow to inf, bounded nesting checked without recursion."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from app.core.errors import InvalidRequest
from app.core.json_body import nesting_depth, parse_json_body
from tests.app.local_app import local_app


@pytest.mark.parametrize(
    ("raw", "param", "token"),
    [
        (b'{"temperature": NaN}', "temperature", "NaN"),
        (b'{"a": {"b": [1, Infinity]}}', "a.b.1", "Infinity"),
        (b'{"x": -Infinity}', "x", "-Infinity"),
        (b'{"seed": 1e999}', "seed", "1e999"),
        (b'{"m": {"max_grad_norm": -1E400}}', "m.max_grad_norm", "-1E400"),
        (b"[NaN]", "0", "NaN"),
    ],
)
def test_non_finite_numbers_are_400_naming_the_field(raw: bytes, param: str, token: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_json_body(raw, max_depth=64)
    assert err.value.status_code == 400 and err.value.param == param and token in err.value.message


def test_a_bare_non_finite_body_has_no_param() -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_json_body(b"NaN", max_depth=64)
    assert err.value.param is None


def test_valid_bodies_parse_as_json_does() -> None:
    raw = b'\xef\xbb\xbf{"a": [1, 2.5, -3e10, 1e-999, true, null, "[[[{{{\\"]]]"], "b": {"c": "\xc3\xa9"}}'
    assert parse_json_body(raw, max_depth=64) == {
        "a": [1, 2.5, -3e10, 0.0, True, None, '[[[{{{"]]]'],
        "b": {"c": "\u00e9"},
    }


def test_nesting_limit_is_exact_and_ignores_brackets_in_strings() -> None:
    assert parse_json_body(b"[" * 64 + b"]" * 64, max_depth=64) is not None
    with pytest.raises(InvalidRequest, match="nests deeper than 64"):
        parse_json_body(b"[" * 65 + b"]" * 65, max_depth=64)
    assert parse_json_body(b'{"a": "' + b"[" * 100_000 + b'"}', max_depth=64) == {"a": "[" * 100_000}
    assert nesting_depth(b'{"a": [{"b": "]]]\\"[[["}]}') == 3


def test_deep_nesting_is_refused_without_recursion() -> None:
    """100,000 `[` raised RecursionError (a 500) in json.loads; the check must not recurse even with a tiny stack."""
    outcome: list[Any] = []

    def parse_with_a_small_recursion_limit() -> None:
        old = sys.getrecursionlimit()
        sys.setrecursionlimit(80)
        try:
            parse_json_body(b"[" * 100_000, max_depth=64)
        except InvalidRequest as exc:
            outcome.append(exc)
        except RecursionError as exc:  # pragma: no cover (the bug)
            outcome.append(exc)
        finally:
            sys.setrecursionlimit(old)

    thread = threading.Thread(target=parse_with_a_small_recursion_limit)
    thread.start()
    thread.join()
    assert len(outcome) == 1 and isinstance(outcome[0], InvalidRequest)
    assert "nests deeper than 64" in outcome[0].message


@pytest.mark.parametrize(
    "raw",
    [
        b"{" + b"x" * 100_000,
        b'{"a": ' + b"9" * 10_000 + b"}",  # more digits than Python converts to an int
        b'{"a": "\xff' + b"z" * 100_000 + b'"}',  # not UTF-8
        b'"' + b'\\"' * 200_000,  # unterminated string of escaped quotes: must not go quadratic either
    ],
)
def test_invalid_json_is_400_without_quoting_the_body(raw: bytes) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_json_body(raw, max_depth=64)
    assert err.value.status_code == 400 and len(err.value.message) < 200


def test_max_json_depth_is_a_setting(tmp_path: Path) -> None:
    edge = local_app(tmp_path, max_json_depth=4)
    deep = b'{"model": "tiny-chat", "training_file": "file-x", "metadata": {"a": [[["x"]]]}}'  # depth 5
    response = edge.client.post("/v1/fine_tuning/jobs", headers=edge.headers, content=deep)
    assert response.status_code == 400, response.text
    assert "nests deeper than 4" in response.json()["error"]["message"]
    hundred_thousand = edge.client.post("/v1/fine_tuning/jobs", headers=edge.headers, content=b"[" * 100_000)
    assert hundred_thousand.status_code == 400 and hundred_thousand.json()["error"]["type"] == "invalid_request_error"
