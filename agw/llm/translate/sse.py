"""Server-Sent Events framing for the stream encoders, and a whole-text parser for tests."""

from __future__ import annotations

import json
from typing import Any


def frame(data: Any, event: str | None = None) -> bytes:
    """One SSE event; ``data`` is a JSON value, or a string sent as it is."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n".encode()


def parse(text: str) -> list[tuple[str | None, str]]:
    """Every complete event of an SSE text as ``(event name or None, data)``."""
    out: list[tuple[str | None, str]] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name: str | None = None
        data: list[str] = []
        for line in block.split("\n"):
            if line.startswith("data:"):
                data.append(line[6:] if line.startswith("data: ") else line[5:])
            elif line.startswith("event:"):
                name = line[6:].strip() or None
        if data:
            out.append((name, "\n".join(data)))
    return out
