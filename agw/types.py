"""Shared nouns of every layer: the ASGI aliases and the JSON object type.

Layer 0: imports nothing of agw. A module that needs one of these imports it from here; it never
defines its own copy.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
"""Raw response headers, as ASGI sends them."""

JsonObj = dict[str, Any]
"""A JSON object as it came off the wire: typed at the edge of the code that reads it."""
