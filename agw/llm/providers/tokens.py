"""Token counts of one answer, in one convention for every wire format.

``Usage.input_tokens`` counts *all* prompt tokens, cached ones included (the OpenAI and Gemini
convention); ``cached_input_tokens`` and ``cache_creation_input_tokens`` are parts of it.
``output_tokens`` includes ``reasoning_tokens``. Each wire's parser (``chat_usage`` and
``responses_usage`` in :mod:`agw.llm.providers.openai`, ``messages_usage`` in
:mod:`agw.llm.providers.anthropic`, ``gemini_usage`` in :mod:`agw.llm.providers.gemini`) turns
that wire's usage object into a :class:`Usage`; passthrough (:mod:`agw.llm.observe`) and
translation (:mod:`agw.llm.translate`) call the same parser, so the same answer records the
same counts whatever the client's dialect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agw.types import JsonObj


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def merge(self, other: Usage) -> None:
        """Take every non-zero count of ``other`` (later stream reports are cumulative)."""
        for name in (
            "input_tokens",
            "output_tokens",
            "cached_input_tokens",
            "cache_creation_input_tokens",
            "reasoning_tokens",
        ):
            value = getattr(other, name)
            if value:
                setattr(self, name, value)


def count(value: Any) -> int:
    """A token count as a provider sent it: an integer (or an integral float); else 0."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return 0


def counted(value: Any) -> bool:
    """Whether ``value`` is a count at all (present and a number), zero included."""
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, float) and value.is_integer()
    )


def obj(value: Any) -> JsonObj:
    """``value`` when it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}
