"""Typed, defensive access to JSON objects that came from outside.

Requests from clients are read ``strict``: a field of the wrong type raises
:class:`agw.errors.InvalidRequest` naming it (``messages[2].content[0].text must be a
string``). Upstream answers are read lenient: a field of the wrong type counts as absent, so
a translation skips what it cannot map instead of failing the client's request.
"""

from __future__ import annotations

from typing import Any

from agw.errors import InvalidRequest


class Reader:
    __slots__ = ("data", "strict", "where")

    def __init__(self, data: Any, where: str = "", strict: bool = False) -> None:
        self.where = where
        self.strict = strict
        if isinstance(data, dict):
            self.data: dict[str, Any] = data
        else:
            if strict and data is not None:
                raise InvalidRequest(f"{where or 'body'} must be a JSON object")
            self.data = {}

    def path(self, key: str | int) -> str:
        if isinstance(key, int):
            return f"{self.where}[{key}]"
        return f"{self.where}.{key}" if self.where else key

    def invalid(self, key: str, what: str) -> None:
        """Raise for a field of the wrong type when strict; lenient readers carry on."""
        if self.strict:
            raise InvalidRequest(f"{self.path(key)} {what}")

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def raw(self, key: str) -> Any:
        return self.data.get(key)

    def text(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is None or isinstance(value, str):
            return value
        self.invalid(key, "must be a string")
        return None

    def integer(self, key: str) -> int | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.invalid(key, "must be an integer")
            return None
        if isinstance(value, float) and not value.is_integer():
            self.invalid(key, "must be an integer")
            return None
        return int(value)

    def number(self, key: str) -> float | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.invalid(key, "must be a number")
            return None
        return float(value)

    def flag(self, key: str) -> bool | None:
        value = self.data.get(key)
        if value is None or isinstance(value, bool):
            return value
        self.invalid(key, "must be a boolean")
        return None

    def obj(self, key: str) -> Reader:
        """The object at ``key``; an empty reader when absent (or mistyped and lenient)."""
        value = self.data.get(key)
        if value is not None and not isinstance(value, dict):
            self.invalid(key, "must be an object")
            value = None
        return Reader(value, self.path(key), self.strict)

    def array(self, key: str) -> list[Any]:
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.invalid(key, "must be an array")
            return []
        return value

    def objects(self, key: str) -> list[Reader]:
        """The array at ``key`` as readers; non-object elements raise (strict) or are skipped."""
        out = []
        where = self.path(key)
        for i, item in enumerate(self.array(key)):
            if isinstance(item, dict):
                out.append(Reader(item, f"{where}[{i}]", self.strict))
            elif self.strict:
                raise InvalidRequest(f"{where}[{i}] must be an object")
        return out

    def strings(self, key: str) -> list[str]:
        """A string or an array of strings (stop sequences) as a list."""
        value = self.data.get(key)
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        self.invalid(key, "must be a string or an array of strings")
        return []

    def object_value(self, key: str) -> dict[str, Any] | None:
        """A free-form object (a JSON schema, metadata) passed through as it is."""
        value = self.data.get(key)
        if value is None or isinstance(value, dict):
            return value
        self.invalid(key, "must be an object")
        return None
