"""Load a GatewayBundle: YAML -> ``${ENV}`` expansion -> strict models -> cross-object checks.

Every problem found is collected and reported together (sorted by path), each with its path and,
for YAML input, its line. Nothing here touches the store: loading is pure.
"""

from __future__ import annotations

import difflib
import io
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Union

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from agw.config import families as f
from agw.config import validate
from agw.config.bundle import API_VERSION, KIND, Bundle
from agw.errors import ConfigInvalid, Problem

_ENV_REF = re.compile(r"\$(\$?)\{([^}]*)\}")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
Loc = tuple[str | int, ...]


def format_path(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


# ------------------------------------------------------------------------------------ parsing


def parse_yaml(text: str) -> Any:
    """Parse YAML keeping line numbers (ruamel round-trip nodes). Raises ConfigInvalid."""
    yaml = YAML(typ="rt")
    try:
        return yaml.load(io.StringIO(text))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        msg = f"invalid YAML: {exc.problem or exc.context}"
        line = mark.line + 1 if mark else None
        col = mark.column + 1 if mark else None
        raise ConfigInvalid([Problem("", msg, line, col)]) from None
    except YAMLError as exc:
        raise ConfigInvalid([Problem("", f"invalid YAML: {exc}")]) from None


def escape_env(data: Any) -> Any:
    """The inverse of expansion for literal text: ``${`` becomes ``$${`` in every string."""
    if isinstance(data, dict):
        return {k: escape_env(v) for k, v in data.items()}
    if isinstance(data, list):
        return [escape_env(v) for v in data]
    return _ENV_REF.sub(lambda m: "$" + m.group(0), data) if isinstance(data, str) else data


def line_of(tree: Any, loc: Loc) -> int | None:
    """The 1-based YAML line of ``loc`` in a ruamel tree, or of its nearest ancestor."""
    node, line = tree, None
    for part in loc:
        try:
            if isinstance(node, CommentedMap) and part in node:
                line = node.lc.key(part)[0] + 1
                node = node[part]
            elif isinstance(node, CommentedSeq) and isinstance(part, int) and part < len(node):
                line = node.lc.item(part)[0] + 1
                node = node[part]
            else:
                break
        except (KeyError, IndexError, TypeError):
            break
    return line


def to_plain(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {str(k): to_plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [to_plain(v) for v in node]
    if isinstance(node, str):
        return str(node)
    return node


def expand_env(
    data: Any, env: Mapping[str, str], problems: list[Problem], tree: Any = None, loc: Loc = ()
) -> Any:
    """Expand ``${NAME}`` in every string value; an unset or malformed name is a problem.
    ``$${`` is a literal ``${`` (export writes stored values that way)."""
    if isinstance(data, dict):
        return {k: expand_env(v, env, problems, tree, (*loc, k)) for k, v in data.items()}
    if isinstance(data, list):
        return [expand_env(v, env, problems, tree, (*loc, i)) for i, v in enumerate(data)]
    if not isinstance(data, str) or "${" not in data:
        return data

    def sub(match: re.Match[str]) -> str:
        if match.group(1):
            return match.group(0)[1:]
        name = match.group(2)
        if not _ENV_NAME.match(name):
            problems.append(
                Problem(
                    format_path(loc),
                    f"invalid environment reference ${{{name}}}",
                    line_of(tree, loc),
                )
            )
            return ""
        if name not in env:
            problems.append(
                Problem(
                    format_path(loc),
                    f'environment variable "{name}" is not set',
                    line_of(tree, loc),
                )
            )
            return ""
        return env[name]

    return _ENV_REF.sub(sub, data)


# -------------------------------------------------------------------------- pydantic problems


def _unwrap(tp: Any) -> list[Any]:
    """The concrete types inside Optional/Union/Annotated."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin in (Union, types.UnionType):
        return [t for arg in typing.get_args(tp) for t in _unwrap(arg)]
    return [tp]


def _model_at(root: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The model class that owns the last element of ``loc``."""
    current: Any = root
    for part in loc[:-1]:
        nxt: Any = None
        for tp in _unwrap(current):
            origin = typing.get_origin(tp)
            if isinstance(part, int) and origin is list:
                nxt = typing.get_args(tp)[0]
            elif isinstance(part, str) and origin is dict:
                nxt = typing.get_args(tp)[1]
            elif isinstance(part, str) and isinstance(tp, type) and issubclass(tp, BaseModel):
                field = tp.model_fields.get(part)
                nxt = field.annotation if field else None
            if nxt is not None:
                break
        if nxt is None:
            return None
        current = nxt
    for tp in _unwrap(current):
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            return tp
    return None


def suggest(word: str, choices: list[str]) -> str | None:
    """The known name a misspelt or shortened key most likely meant."""
    lowered = word.lower()
    for choice in choices:
        if choice.lower() == lowered or (len(word) >= 3 and choice.startswith(lowered)):
            return choice
    close = difflib.get_close_matches(lowered, choices, n=1, cutoff=0.5)
    return close[0] if close else None


def problems_from_validation(
    exc: ValidationError, root: type[BaseModel], tree: Any = None, prefix: Loc = ()
) -> list[Problem]:
    problems: list[Problem] = []
    for err in exc.errors(include_url=False):
        loc: Loc = tuple(p for p in err["loc"] if isinstance(p, str | int))
        full = (*prefix, *loc)
        line = line_of(tree, full)
        kind = err["type"]
        if kind == "extra_forbidden":
            owner = _model_at(root, loc)
            msg = "unknown field"
            if owner is not None and loc:
                close = suggest(str(loc[-1]), list(owner.model_fields))
                if close:
                    msg += f"; did you mean {close}?"
            problems.append(Problem(format_path(full), msg, line))
            continue
        if kind == "missing":
            problems.append(Problem(format_path(full), "field is required", line))
            continue
        msg = err["msg"]
        for lead in ("Value error, ", "Assertion failed, "):
            if msg.startswith(lead):
                msg = msg[len(lead) :]
        if kind not in ("value_error", "assertion_error") and "input" in err:
            got = err["input"]
            if not isinstance(got, dict | list):
                msg += f" (got {got!r})"
        problems.append(Problem(format_path(full), msg, line))
    return problems


# ------------------------------------------------------------------------------------ loading


def load_bundle_text(
    text: str, env: Mapping[str, str] | None = None, *, partial: bool = True
) -> Bundle:
    tree = parse_yaml(text)
    if tree is None:
        raise ConfigInvalid([Problem("", "bundle is empty")])
    if not isinstance(tree, Mapping):
        raise ConfigInvalid([Problem("", "bundle must be a YAML mapping")])
    problems: list[Problem] = []
    data = expand_env(to_plain(tree), os.environ if env is None else env, problems, tree)
    return load_bundle_data(data, tree=tree, problems=problems, partial=partial)


def load_bundle_data(
    data: Any,
    *,
    tree: Any = None,
    problems: list[Problem] | None = None,
    partial: bool = True,
) -> Bundle:
    """Validate already-parsed bundle data (JSON from the admin API, or expanded YAML)."""
    problems = list(problems or [])
    if not isinstance(data, dict):
        raise ConfigInvalid([Problem("", "bundle must be an object")])
    if "providerTypes" in data:
        problems.append(
            Problem(
                "providerTypes",
                "not allowed in a bundle; configure provider types at gateway startup "
                "(agwd --provider-type)",
                line_of(tree, ("providerTypes",)),
            )
        )
        data = {k: v for k, v in data.items() if k != "providerTypes"}
    for key, want in (("apiVersion", API_VERSION), ("kind", KIND)):
        if key in data and data[key] != want:
            problems.append(
                Problem(key, f"must be {want!r} (got {data[key]!r})", line_of(tree, (key,)))
            )
    bundle: Bundle | None = None
    try:
        bundle = Bundle.model_validate(data)
    except ValidationError as exc:
        seen = {(p.path, p.message) for p in problems}
        for p in problems_from_validation(exc, Bundle, tree):
            if p.path in ("apiVersion", "kind") and any(q[0] == p.path for q in seen):
                continue
            problems.append(p)
    if bundle is not None:
        problems += validate.check(catalog_of(bundle), partial=partial)
    else:
        subset, incomplete = _valid_subset(data)
        problems += validate.check(subset, partial=partial, incomplete=incomplete)
    if problems:
        raise ConfigInvalid(_attach_lines(problems, tree))
    assert bundle is not None
    return bundle


def _attach_lines(problems: list[Problem], tree: Any) -> list[Problem]:
    out = []
    for p in problems:
        if p.line is None and tree is not None and p.path:
            loc = _parse_path(p.path)
            p = Problem(p.path, p.message, line_of(tree, loc), p.column)
        out.append(p)
    return sorted(out, key=lambda p: (p.path, p.message))


_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _parse_path(path: str) -> Loc:
    return tuple(int(idx) if idx else name for name, idx in _PATH_PART.findall(path))


def _valid_subset(data: dict[str, Any]) -> tuple[dict[str, list[tuple[str, Any]]], set[str]]:
    """The objects of an invalid bundle that are valid on their own, so cross-object problems
    are reported in the same pass as the field problems, and the families that lost some."""
    catalog: dict[str, list[tuple[str, Any]]] = {}
    incomplete: set[str] = set()
    for family in f.BUNDLE_FAMILIES:
        assert family.bundle_key is not None
        items = data.get(family.bundle_key)
        objs: list[tuple[str, Any]] = []
        for i, item in enumerate(items if isinstance(items, list) else []):
            try:
                objs.append((f"{family.bundle_key}[{i}]", family.model.model_validate(item)))
            except ValidationError:
                incomplete.add(family.name)
        catalog[family.name] = objs
    return catalog, incomplete


def catalog_of(bundle: Bundle) -> dict[str, list[tuple[str, Any]]]:
    catalog: dict[str, list[tuple[str, Any]]] = {}
    for family in f.BUNDLE_FAMILIES:
        assert family.bundle_key is not None
        objs = getattr(bundle, family.bundle_key)
        catalog[family.name] = [(f"{family.bundle_key}[{i}]", o) for i, o in enumerate(objs)]
    return catalog


def bundle_counts(bundle: Bundle) -> dict[str, int]:
    return {
        _plural(family.name): len(getattr(bundle, family.bundle_key))
        for family in f.BUNDLE_FAMILIES
        if family.bundle_key
    }


def _plural(name: str) -> str:
    return name[:-1] + "ies" if name.endswith("cy") else name + "s"
