"""Bounds on the client-supplied JSON-RPC values the planes keep (MCP and ACP over HTTP): ids
and methods end up in usage rows, in-flight views and buffered answers, so a longer id, method
or progress token is refused with -32600 (docs/security.md)."""

from __future__ import annotations

from typing import Any

ID_MAX_CHARS = 200
METHOD_MAX_CHARS = 200
INT_MAX_BITS = 640  # an integer id: about 193 decimal digits


def valid_id(value: Any) -> bool:
    """A JSON-RPC id the gateway accepts: a string of at most ``ID_MAX_CHARS`` characters or an
    integer of at most ``INT_MAX_BITS`` bits (never a bool, float, object or array)."""
    if isinstance(value, str):
        return len(value) <= ID_MAX_CHARS
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value.bit_length() <= INT_MAX_BITS
    )
