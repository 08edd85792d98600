"""Answer head fields the app renders and checks itself: the ``agw.head`` ASGI extension.

A server checks every field of an answer's head before it writes it (uvicorn: two regular
expression searches a field), because an app could put a line break in a value. Some fields
are fixed when the configuration is compiled, with only numbers filled in per request (the
limits' ``RateLimit-Policy`` and ``RateLimit``, docs/limits.md): checking them once then, not
on every answer, is the same guarantee at no cost per request.

A server that takes such fields says so with ``scope["extensions"]["agw.head"]``; the app then
puts them, as ``name: value\\r\\n`` lines (:func:`lines`), under the ``"agw.head"`` key of the
``http.response.start`` message, and the server writes them as they are, after the checked
ones. Only fields with no meaning to the HTTP framing go there (never ``content-length``,
``transfer-encoding`` or ``connection``). agwd's uvicorn listener takes them
(agw/listener_cycle.py); elsewhere (``--data-server hypercorn``, an in-process ASGI client)
:func:`fields` turns the lines back into the ``headers`` pairs.
"""

from __future__ import annotations

import re

from agw.types import Headers

EXTENSION = "agw.head"
# what a server refuses in a field name (anything but an RFC 9110 token) and in a value
# (control characters but the tab): uvicorn's own expressions
_BAD_NAME = re.compile(b'[\x00-\x1f\x7f()<>@,;:\\[\\]={} \t\\\\"]')
_BAD_VALUE = re.compile(b"[\x00-\x08\x0a-\x1f\x7f]")
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection"})


def lines(fields: Headers) -> bytes:
    """``fields`` as head lines, each checked as a server would: ValueError on a name or value
    it would refuse, or on a field that frames the message."""
    out = []
    for name, value in fields:
        if not name or _BAD_NAME.search(name) or name.lower() in _FRAMING:
            raise ValueError(f"not a field an app may render: {name!r}")
        if _BAD_VALUE.search(value):
            raise ValueError(f"invalid value of field {name!r}")
        out.append(name.lower() + b": " + value + b"\r\n")
    return b"".join(out)


def fields(head: bytes) -> Headers:
    """The ``(name, value)`` pairs of :func:`lines`'s output."""
    out: Headers = []
    for line in head.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b": ")
            out.append((name, value))
    return out
