"""Untrusted JSON: malformed client requests fail with InvalidRequest naming the field;
malformed upstream answers and streams never raise (what cannot be mapped is skipped)."""

from __future__ import annotations

import contextlib
import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest

from agw.errors import InvalidRequest
from agw.llm.translate import (
    FORMATS,
    StreamTranslator,
    check_format,
    translate_request,
    translate_response,
)
from tests.support import sse

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
JUNK: list[Any] = [None, 0, -1, 1.5, True, "", "x", [], [1, "a"], {}, {"type": 3}, [{}], "[DONE]"]


@pytest.mark.parametrize(
    ("src", "body", "field"),
    [
        ("chat", [], "body must be a JSON object"),
        ("chat", {"model": "m"}, "messages must be an array"),
        ("chat", {"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        (
            "chat",
            {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
            "messages[0].content[0].text must be a string",
        ),
        ("chat", {"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        ("chat", {"messages": [], "tool_choice": "sometimes"}, "tool_choice"),
        ("chat", {"messages": [], "temperature": "hot"}, "temperature must be a number"),
        ("chat", {"messages": [], "max_tokens": 1.5}, "max_tokens must be an integer"),
        (
            "chat",
            {"messages": [], "tools": [{"type": "function", "function": {}}]},
            "tools[0].function.name",
        ),
        ("messages", {"messages": "hi"}, "messages must be an array"),
        ("messages", {"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        ("messages", {"messages": [], "system": 3}, "system"),
        ("messages", {"messages": [], "tool_choice": {"type": "maybe"}}, "tool_choice.type"),
        (
            "messages",
            {"messages": [{"role": "user", "content": [{"type": "tool_use"}]}]},
            "messages[0].content[0].id",
        ),
        ("messages", {"messages": [], "stop_sequences": [1]}, "stop_sequences"),
        ("responses", {"input": 3}, "input must be a string or an array"),
        ("responses", {"input": [{"type": "function_call", "name": "f"}]}, "input[0]"),
        ("responses", {"input": [{"role": "wizard", "content": "x"}]}, "input[0].role"),
        ("responses", {"input": "x", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
        ("gemini", {"contents": {}}, "contents must be an array"),
        ("gemini", {"contents": [{"role": "narrator", "parts": []}]}, "contents[0].role"),
        (
            "gemini",
            {"contents": [], "generationConfig": {"topK": "many"}},
            "generationConfig.topK must be an integer",
        ),
    ],
)
def test_malformed_requests_name_the_field(src: str, body: Any, field: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        translate_request(body, src, "chat" if src != "chat" else "messages")
    assert field in err.value.message


def test_unknown_format_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown wire format"):
        check_format("soap")
    assert check_format("gemini") == "gemini"


def _mutations(value: Any, rng: random.Random, n: int) -> list[Any]:
    """``n`` copies of ``value`` with one random node replaced by junk."""
    paths: list[list[Any]] = []

    def walk(node: Any, path: list[Any]) -> None:
        paths.append(path)
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, [*path, k])
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, [*path, i])

    walk(value, [])
    out = []
    for _ in range(n):
        path = rng.choice(paths[1:] or paths)
        copy_ = copy.deepcopy(value)
        node = copy_
        for key in path[:-1]:
            node = node[key]
        if path:
            node[path[-1]] = copy.deepcopy(rng.choice(JUNK))
        out.append(copy_)
    return out


def _inputs(kind: str) -> list[tuple[str, Path]]:
    return [
        (case.parent.name.split("_to_")[0], case)
        for case in sorted(GOLDEN.glob(f"*_to_*/{kind}_*"))
    ]


@pytest.mark.parametrize(("src", "case"), _inputs("request"), ids=lambda v: str(v)[-40:])
def test_mutated_requests_raise_only_invalid_request(src: str, case: Path) -> None:
    body = json.loads((case / "input.json").read_text())
    rng = random.Random(case.name)
    for mutated in _mutations(body, rng, 40):
        for dst in FORMATS:
            with contextlib.suppress(InvalidRequest):
                translate_request(mutated, src, dst, model="m")


@pytest.mark.parametrize(("src", "case"), _inputs("response"), ids=lambda v: str(v)[-40:])
def test_mutated_responses_never_raise(src: str, case: Path) -> None:
    body = json.loads((case / "input.json").read_text())
    rng = random.Random(case.name)
    for mutated in [*_mutations(body, rng, 40), *JUNK]:
        for dst in FORMATS:
            translate_response(mutated, src, dst)


@pytest.mark.parametrize(("src", "case"), _inputs("stream"), ids=lambda v: str(v)[-40:])
def test_mutated_streams_never_raise(src: str, case: Path) -> None:
    events = sse.parse((case / "input.sse").read_text())
    rng = random.Random(case.name)
    for _ in range(20):
        for dst in FORMATS:
            translator = StreamTranslator(src, dst)
            for name, data in events:
                if rng.random() < 0.15:
                    data = rng.choice(["{", "null", "[]", '"x"', "{}", data[: len(data) // 2]])
                elif rng.random() < 0.15 and data.startswith("{"):
                    data = json.dumps(_mutations(json.loads(data), rng, 1)[0])
                translator.feed(name, data)
            translator.finish()
            assert translator.finished
