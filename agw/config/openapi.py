"""OpenAPI documents as the gateway reads them (docs/openapi-mcp.md): bytes into plain JSON,
the document checked, and its local $refs resolved.

- :func:`parse_document` reads JSON (a document starting with ``{``) or YAML, at most
  ``SPEC_LIMIT`` bytes, into plain JSON values: keys become strings (YAML's ``200:``), dates ISO
  strings. YAML aliases are expanded within a node budget and a depth bound, so an alias bomb or
  an alias that contains itself is an error, never a hang;
- :func:`check_document` checks that it is OpenAPI 3.0 or 3.1 with ``paths``, and that every
  ``$ref`` in it is a JSON pointer into the document that resolves and does not lead back to
  itself through other $refs only (a ``$ref`` cycle);
- :class:`Inliner` gives a schema with its $refs inlined: a schema that contains itself
  (a tree, a linked list) stops at a stub where it recurs; one tool's schema gains at most
  ``MAX_INLINED`` nodes from inlining and nests at most ``MAX_SCHEMA_DEPTH`` levels (a target
  inlined whole is built once and shared). OpenAPI 3.0's schema dialect becomes JSON Schema
  (``nullable``, boolean ``exclusiveMinimum`` and ``exclusiveMaximum``, ``example``);
- :func:`follow` gives a parameter or request body that may be a ``$ref``.

Every problem is a :class:`SpecError` naming its place as a JSON pointer
(``#/paths/~1pets/get/parameters/0``).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from agw import jsonfast
from agw.types import JsonObj

SPEC_LIMIT = 16 * 1024 * 1024  # bytes of one spec, a file or a download
MAX_NODES = 5_000_000  # values in the parsed document, YAML aliases expanded
MAX_DEPTH = 200  # nesting of the document
MAX_INLINE_DEPTH = 24  # $refs inlined within one another
MAX_SCHEMA_DEPTH = 64  # nesting of one tool's schema; deeper parts are stubs
MAX_INLINED = 20_000  # nodes one tool's schema may gain by inlining; past it, $refs are stubs

# schema keywords whose value is a map of schemas, a list of schemas, or one schema
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "dependentSchemas"})
_SCHEMA_LISTS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_SCHEMA_ONE = frozenset(
    {
        "items",
        "additionalProperties",
        "not",
        "contains",
        "if",
        "then",
        "else",
        "propertyNames",
        "unevaluatedProperties",
        "unevaluatedItems",
        "additionalItems",
        "contentSchema",
    }
)
# what a tool's input schema has no use for: OpenAPI-only keywords, and definitions whose
# $refs are inlined
_DROPPED = frozenset(
    {"discriminator", "xml", "externalDocs", "nullable", "$defs", "definitions", "$schema", "$id"}
)


class SpecError(ValueError):
    """What is wrong with a spec, and where (a JSON pointer; empty for the document as a
    whole: not JSON, not YAML, too large)."""

    def __init__(self, pointer: str, problem: str) -> None:
        super().__init__(f"{pointer}: {problem}" if pointer else problem)
        self.pointer = pointer
        self.problem = problem


def child(at: str, *parts: str | int) -> str:
    """The JSON pointer of ``parts`` below ``at`` (``~`` and ``/`` escaped)."""
    return at + "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def kind(value: Any) -> str:
    """The JSON name of a value's type, for messages."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    return "null" if value is None else type(value).__name__


# ------------------------------------------------------------------------------ parsing


def parse_document(data: bytes) -> JsonObj:
    """The spec's bytes as a plain JSON mapping; SpecError when they are none."""
    if len(data) > SPEC_LIMIT:
        raise SpecError("", f"the spec is over the {SPEC_LIMIT // 2**20} MiB limit")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpecError("", f"the spec is not UTF-8: {exc}") from None
    raw: Any
    try:
        raw = _json(text) if text.lstrip().startswith("{") else _yaml(text)
    except RecursionError:
        raise SpecError("", f"the spec is nested deeper than {MAX_DEPTH} levels") from None
    doc = _Plain().value(raw)
    if not isinstance(doc, dict):
        raise SpecError("#", f"the spec must be a mapping, not {kind(doc)}")
    return doc


def _json(text: str) -> Any:
    try:
        return jsonfast.loads(text)
    except ValueError as exc:
        raise SpecError("", f"invalid JSON: {exc}") from None


def _yaml(text: str) -> Any:
    try:
        return YAML(typ="safe").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(str(exc.problem or exc.context or "").split())
        raise SpecError("", f"invalid YAML{where}: {problem}") from None
    except YAMLError as exc:
        raise SpecError("", f"invalid YAML: {' '.join(str(exc).split())[:300]}") from None


class _Plain:
    """Parsed YAML or JSON as plain JSON values, within ``MAX_NODES`` and ``MAX_DEPTH``."""

    def __init__(self) -> None:
        self.left = MAX_NODES
        self.parts: list[str | int] = []

    def _where(self) -> str:
        """Where the walk is (the first levels only: an alias loop's path never ends)."""
        return child("#", *self.parts[:8]) + ("/..." if len(self.parts) > 8 else "")

    def value(self, node: Any) -> Any:
        self.left -= 1
        if self.left < 0:
            raise SpecError(self._where(), f"the spec has over {MAX_NODES} values")
        if isinstance(node, dict | list):
            if len(self.parts) >= MAX_DEPTH:
                raise SpecError(
                    self._where(),
                    f"nested deeper than {MAX_DEPTH} levels (a YAML alias inside itself?)",
                )
            items = node.items() if isinstance(node, dict) else enumerate(node)
            out: Any = {} if isinstance(node, dict) else []
            for key, item in items:
                name = _key(key) if isinstance(node, dict) else key
                self.parts.append(name)
                if isinstance(out, dict):
                    out[name] = self.value(item)
                else:
                    out.append(self.value(item))
                self.parts.pop()
            return out
        if node is None or isinstance(node, str | int | float):
            return node
        if isinstance(node, datetime.date):
            return node.isoformat()
        return str(node)


def _key(key: Any) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, datetime.date):
        return key.isoformat()
    return "null" if key is None else str(key)


# ----------------------------------------------------------------------------- checking


def check_document(doc: JsonObj) -> None:
    """OpenAPI 3.0 or 3.1, with ``paths``, every ``$ref`` resolving and none in a cycle."""
    version = doc.get("openapi")
    if not isinstance(version, str):
        if "swagger" in doc:
            raise SpecError("#/swagger", "Swagger 2.0 is not supported: convert it to OpenAPI 3")
        raise SpecError("#", "not an OpenAPI document: no openapi version")
    if not version.startswith(("3.0", "3.1")):
        raise SpecError("#/openapi", f"OpenAPI {version} is not supported (3.0 and 3.1 are)")
    if "paths" not in doc:
        raise SpecError("#", "no paths: the spec has no operations")
    if not isinstance(doc["paths"], dict):
        raise SpecError("#/paths", f"paths must be a mapping, not {kind(doc['paths'])}")
    settled: set[str] = set()  # pointers whose chain of $refs ends at a non-$ref
    for at, ref in _refs(doc, "#"):
        _chain(doc, ref, at, settled)


def _refs(node: Any, at: str) -> Iterator[tuple[str, str]]:
    """Every string ``$ref`` of the document, with the pointer of the ``$ref`` itself."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield child(at, key), value
            elif isinstance(value, dict | list):
                yield from _refs(value, child(at, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            if isinstance(value, dict | list):
                yield from _refs(value, child(at, i))


def _chain(doc: JsonObj, ref: str, at: str, settled: set[str]) -> None:
    """Follow ``$ref`` to a non-``$ref``; a pointer met twice on the way is a cycle."""
    seen: list[str] = []
    while True:
        target, where = lookup(doc, ref, at)
        if where in settled:
            break
        if where in seen:
            loop = " -> ".join([*seen[seen.index(where) :], where])
            raise SpecError(at, f"$ref cycle: {loop}")
        seen.append(where)
        if not (isinstance(target, dict) and isinstance(target.get("$ref"), str)):
            break
        ref, at = target["$ref"], child(where, "$ref")
    settled.update(seen)


def lookup(doc: JsonObj, ref: str, at: str) -> tuple[Any, str]:
    """The value a local ``$ref`` (found at ``at``) points at, and its pointer."""
    if not ref.startswith("#"):
        raise SpecError(at, f"$ref {ref!r} is not local: only refs into the spec itself ('#/...')")
    fragment = unquote(ref[1:])
    if fragment and not fragment.startswith("/"):
        raise SpecError(at, f"$ref {ref!r} is not a JSON pointer")
    node: Any = doc
    where = "#"
    for raw in fragment.split("/")[1:] if fragment else ():
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise SpecError(at, f"$ref {ref!r} does not resolve: nothing at {child(where, part)}")
        where = child(where, part)
    return node, where


def follow(doc: JsonObj, node: Any, at: str, what: str) -> tuple[JsonObj, str]:
    """A mapping (a parameter, a request body, a path item) that may be a ``$ref``: what the
    $refs lead to, with their sibling fields (``description``) kept over it."""
    extra: JsonObj = {}
    while isinstance(node, dict) and isinstance(node.get("$ref"), str):
        extra = {k: v for k, v in node.items() if k != "$ref"} | extra
        node, at = lookup(doc, node["$ref"], child(at, "$ref"))
    if not isinstance(node, dict):
        raise SpecError(at, f"{what} must be a mapping, not {kind(node)}")
    return ({**node, **extra} if extra else node), at


# ----------------------------------------------------------------------------- inlining


class Inliner:
    """Schemas of one document with their $refs inlined (see the module docstring). A $ref
    target inlined whole (no stub inside it) is kept, and shared by every later schema that
    refers to it: each still counts its nodes against its own tool's budget."""

    def __init__(self, doc: JsonObj) -> None:
        self.doc = doc
        self.left = MAX_INLINED
        self.stubs = 0  # stubs made so far
        self.deepest = 0  # the deepest level reached in the schema being inlined
        self._whole: dict[str, tuple[Any, int, int]] = {}  # pointer -> (schema, nodes, height)

    def next_tool(self) -> None:
        """The next schemas are another tool's: a fresh budget."""
        self.left = MAX_INLINED

    def schema(self, node: Any, at: str, stack: tuple[str, ...] = (), depth: int = 0) -> Any:
        """``node`` (a schema found at ``at``) as JSON Schema; ``stack``: the $refs being
        inlined around it; ``depth``: how deep in the tool's schema it is."""
        if isinstance(node, bool):
            return node
        if not isinstance(node, dict):
            raise SpecError(at, f"a schema must be a mapping or a boolean, not {kind(node)}")
        if depth >= MAX_SCHEMA_DEPTH:
            self.stubs += 1
            return _stub(node, at)
        self.deepest = max(self.deepest, depth)
        ref = node.get("$ref")
        if isinstance(ref, str):
            return self._ref(node, ref, at, stack, depth)
        out: JsonObj = {}
        deeper = depth + 1
        for key, value in node.items():
            self.left -= 1
            if key in _DROPPED:
                continue
            if key in _SCHEMA_MAPS and isinstance(value, dict):
                out[key] = {
                    name: self.schema(sub, child(at, key, name), stack, deeper)
                    for name, sub in value.items()
                }
            elif isinstance(value, list) and (key in _SCHEMA_LISTS or key == "items"):
                out[key] = [
                    self.schema(sub, child(at, key, i), stack, deeper)
                    for i, sub in enumerate(value)
                ]
            elif key in _SCHEMA_ONE and isinstance(value, dict | bool):
                out[key] = self.schema(value, child(at, key), stack, deeper)
            else:
                out[key] = value
        return _json_schema(node, out)

    def _ref(self, node: JsonObj, ref: str, at: str, stack: tuple[str, ...], depth: int) -> Any:
        target, where = lookup(self.doc, ref, child(at, "$ref"))
        whole = self._whole.get(where)
        if whole is not None and whole[1] <= self.left and depth + whole[2] < MAX_SCHEMA_DEPTH:
            found, nodes, height = whole
            self.left -= nodes
            self.deepest = max(self.deepest, depth + height)
        elif where in stack or len(stack) >= MAX_INLINE_DEPTH or self.left <= 0:
            self.stubs += 1
            found = _stub(target, where)
        else:
            found = self._inline(target, where, stack, depth)
        rest = {k: v for k, v in node.items() if k != "$ref"}
        if not rest:
            return found
        siblings = self.schema(rest, at, stack, depth)
        if isinstance(found, bool):
            return siblings if found else False
        return {**found, **siblings}

    def _inline(self, target: Any, where: str, stack: tuple[str, ...], depth: int) -> Any:
        """``target`` (at ``where``) inlined, and kept when nothing in it became a stub: it is
        then the same wherever it is referred to from."""
        stubs, left, deepest = self.stubs, self.left, self.deepest
        self.deepest = depth
        found = self.schema(target, where, (*stack, where), depth)
        if self.stubs == stubs:
            self._whole[where] = (found, left - self.left, self.deepest - depth)
        self.deepest = max(deepest, self.deepest)
        return found


def _stub(target: Any, where: str) -> JsonObj:
    """What stands for a schema not inlined (where it recurs, or past the bounds)."""
    name = where.rsplit("/", 1)[-1].replace("~1", "/").replace("~0", "~")
    out: JsonObj = {"description": f"{name} (not expanded here: recursive or nested too deep)"}
    if isinstance(target, dict) and isinstance(target.get("type"), str | list):
        out["type"] = target["type"]
    return out


def _json_schema(node: JsonObj, out: JsonObj) -> JsonObj:
    """OpenAPI 3.0's schema keywords in JSON Schema's words."""
    kind_ = out.get("type")
    if node.get("nullable") is True and isinstance(kind_, str):
        out["type"] = [kind_, "null"]
    for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        flag = out.get(exclusive)
        if isinstance(flag, bool):
            del out[exclusive]
            if flag and bound in out:
                out[exclusive] = out.pop(bound)
    if "example" in out:
        example = out.pop("example")
        out.setdefault("examples", [example])
    return out
