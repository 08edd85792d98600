"""JSON parsing on the hot path: orjson where it can, the standard library where it cannot.

orjson parses a typical request or answer 4-8 times faster than :func:`json.loads` (and a
Claude Code request is often over 100 KB). It is stricter: no ``NaN``/``Infinity``, no integers
beyond 64 bits, no lone surrogates. On anything it refuses, the standard parser gets the same
bytes, so what parses and what fails (with :func:`json.loads`'s ValueError and message) is
exactly what it was without orjson.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(data: bytes | bytearray | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)
