"""An OpenAPI document's operations as MCP tools (docs/openapi-mcp.md).

:func:`read_spec` turns a spec's bytes into a :class:`Spec`: one :class:`Operation` per ``get``,
``put``, ``post``, ``delete`` and ``patch`` operation, each with its MCP tool:

- the **name** is the ``operationId`` (else ``<method> <path>``) with every run of characters
  outside ``A-Z a-z 0-9 _ . -`` made one ``_``, cut to 64; a name taken by an earlier operation
  gets ``_2``, ``_3``, ...;
- the **input schema** is one object: the JSON request body's properties first (a body that is
  not an object with properties is one argument, ``body``), then the path, query and header
  parameters; a parameter whose name is taken is renamed ``<name>__<in>`` (``id__path``).
  Argument names are made valid as tool names are. $refs are inlined
  (:class:`agw.config.openapi.Inliner`); read-only body properties are left out;
- the **description** is the summary and the description; the ``title`` the summary;
  ``annotations`` say ``readOnlyHint`` for ``get`` and ``idempotentHint`` for ``put`` and
  ``delete``.

Left out, with the reason in :attr:`Spec.skipped`: ``head``, ``options`` and ``trace``
operations, and an operation whose required request body has no JSON media type. Cookie
parameters and the header parameters the gateway sets itself (``IGNORED_HEADERS``) are not
arguments.

:func:`select` applies a service's ``include``/``exclude``; :func:`base_of` finds the URL the
calls go to; :func:`load_spec_file` reads a local spec (what config validation checks).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from agw.config.openapi import (
    SPEC_LIMIT,
    Inliner,
    SpecError,
    check_document,
    child,
    follow,
    kind,
    parse_document,
)
from agw.types import JsonObj

METHODS = ("get", "put", "post", "delete", "patch")
UNOFFERED = ("head", "options", "trace")
NAME_MAX = 64
# headers the gateway sets itself (OpenAPI ignores accept, content-type and authorization
# parameters too); a header parameter with one of these names is not an argument
IGNORED_HEADERS = frozenset(
    {
        "accept",
        "authorization",
        "connection",
        "content-length",
        "content-type",
        "cookie",
        "host",
        "keep-alive",
        "proxy-authorization",
        "te",
        "traceparent",
        "transfer-encoding",
        "upgrade",
        "user-agent",
    }
)
_INVALID = re.compile(r"[^A-Za-z0-9_.-]+")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TEMPLATE = re.compile(r"\{([^{}]+)\}")
_DEFAULT_STYLE = {"path": "simple", "query": "form", "header": "simple"}


@dataclass(frozen=True)
class Param:
    name: str  # as the API knows it
    location: str  # path | query | header
    arg: str  # the tool argument that carries it
    required: bool
    style: str  # simple | label | matrix | form | spaceDelimited | pipeDelimited | deepObject
    explode: bool
    as_json: bool  # declared with ``content``: the value goes as JSON text


@dataclass(frozen=True)
class Body:
    media_type: str  # the Content-Type sent
    required: bool
    fields: tuple[tuple[str, str], ...]  # (argument, property) of a flattened body
    flat: bool  # False: the whole body is the argument ``body``


@dataclass(frozen=True)
class Operation:
    name: str  # the tool's name
    operation_id: str  # "" when the spec gives none
    method: str  # upper case
    path: str  # the path template (``/pets/{petId}``)
    params: tuple[Param, ...]
    body: Body | None
    required: tuple[str, ...]  # the arguments a call must give
    tool: JsonObj  # the MCP tool: name, title, description, inputSchema, annotations


@dataclass(frozen=True)
class Spec:
    title: str
    version: str
    server: str  # the first ``servers`` URL, variables filled with their defaults; "" if none
    operations: tuple[Operation, ...]
    skipped: tuple[str, ...]  # "<METHOD> <path>: why"
    api_key: tuple[str, str] | None  # (in, name) of the first apiKey scheme (header or query)


def read_spec(data: bytes) -> Spec:
    """A spec's bytes as tools; SpecError naming the place when it is broken."""
    doc = parse_document(data)
    check_document(doc)
    return _Builder(doc).spec()


def load_spec_file(path: str) -> Spec:
    """A local spec file, read whole (at most ``SPEC_LIMIT`` bytes)."""
    try:
        with Path(path).open("rb") as fh:
            data = fh.read(SPEC_LIMIT + 1)
    except OSError as exc:
        raise SpecError("", f"cannot read the spec: {exc.strerror or exc}") from None
    return read_spec(data)


def select(spec: Spec, include: list[str], exclude: list[str]) -> tuple[Operation, ...]:
    """The operations a service offers: those ``include`` names (all when empty) but those
    ``exclude`` names; a name is an ``operationId`` or a tool name. ValueError for a name that
    is neither."""
    known = {op.operation_id for op in spec.operations} | {op.name for op in spec.operations}
    for field, names in (("include", include), ("exclude", exclude)):
        for i, name in enumerate(names):
            if name not in known:
                some = ", ".join(sorted(op.operation_id or op.name for op in spec.operations)[:10])
                raise ValueError(f"{field}[{i}]: no operation {name!r} in the spec ({some})")
    wanted, unwanted = set(include), set(exclude)
    return tuple(
        op
        for op in spec.operations
        if (not wanted or wanted & {op.operation_id, op.name})
        and not unwanted & {op.operation_id, op.name}
    )


def base_of(spec: Spec, base_url: str, spec_url: str = "") -> str:
    """Where calls go: ``base_url``, else the spec's first server URL, resolved against the
    spec's own URL when it was downloaded. SpecError when neither gives an http(s) URL."""
    if base_url:
        return base_url
    if not spec.server:
        raise SpecError("#/servers", "the spec names no server: set base_url")
    url = urljoin(spec_url, spec.server) if spec_url else spec.server
    if not url.startswith(("http://", "https://")) or _TEMPLATE.search(url):
        raise SpecError(
            "#/servers/0/url", f"{spec.server!r} is not an absolute http(s) URL: set base_url"
        )
    return url


def valid_name(raw: str, fallback: str) -> str:
    """``raw`` as a valid tool or argument name (at most 64 characters)."""
    return (_INVALID.sub("_", raw).strip("_") or fallback)[:NAME_MAX]


def unique(name: str, taken: set[str] | dict[str, Any], suffix: str = "") -> str:
    """``name``, or ``name`` with ``suffix`` (and then a number), whichever is free."""
    if name not in taken:
        return name
    if suffix:
        candidate = f"{name[: NAME_MAX - len(suffix)]}{suffix}"
        if candidate not in taken:
            return candidate
        name = candidate
    n = 2
    while True:
        end = f"_{n}"
        candidate = f"{name[: NAME_MAX - len(end)]}{end}"
        if candidate not in taken:
            return candidate
        n += 1


class _Builder:
    def __init__(self, doc: JsonObj) -> None:
        self.doc = doc
        self.names: set[str] = set()
        self.skipped: list[str] = []
        self.inliner = Inliner(doc)

    def spec(self) -> Spec:
        info = self.doc.get("info")
        info = info if isinstance(info, dict) else {}
        ops: list[Operation] = []
        for path, item in self.doc["paths"].items():
            at = child("#", "paths", path)
            if not path.startswith("/"):
                raise SpecError(at, "a path must start with '/'")
            item, item_at = follow(self.doc, item, at, "a path item")
            common = item.get("parameters", [])
            for method in (*METHODS, *UNOFFERED):
                if method not in item:
                    continue
                if method in UNOFFERED:
                    self.skipped.append(f"{method.upper()} {path}: {method} is not offered")
                    continue
                op = item[method]
                op_at = child(item_at, method)
                if not isinstance(op, dict):
                    raise SpecError(op_at, f"an operation must be a mapping, not {kind(op)}")
                built = self._operation(
                    path, method, op, op_at, common, child(item_at, "parameters")
                )
                if built is not None:
                    ops.append(built)
        return Spec(
            title=str(info.get("title") or ""),
            version=str(info.get("version") or ""),
            server=self._server(),
            operations=tuple(ops),
            skipped=tuple(self.skipped),
            api_key=self._api_key(),
        )

    def _operation(
        self, path: str, method: str, op: JsonObj, at: str, common: Any, common_at: str
    ) -> Operation | None:
        self.inliner.next_tool()
        body = self._body(op, at)
        if isinstance(body, str):
            self.skipped.append(f"{method.upper()} {path}: {body}")
            return None
        properties: JsonObj = {}
        required: list[str] = []
        sent: Body | None = None
        if body is not None:
            media, schema, flat, body_required = body
            fields: list[tuple[str, str]] = []
            if flat is not None:
                props, needed = flat
                for prop, sub in props.items():
                    arg = unique(valid_name(prop, "field"), properties)
                    properties[arg] = sub
                    fields.append((arg, prop))
                    if body_required and prop in needed:
                        required.append(arg)
            else:
                properties["body"] = schema
                if body_required:
                    required.append("body")
            sent = Body(media, body_required, tuple(fields), flat is not None)
        params = []
        for p, schema in self._parameters(path, op, at, common, common_at):
            arg = unique(valid_name(p.name, p.location), properties, f"__{p.location}")
            params.append(Param(p.name, p.location, arg, p.required, p.style, p.explode, p.as_json))
            properties[arg] = schema
            if p.required:
                required.append(arg)
        op_id = op.get("operationId")
        op_id = op_id if isinstance(op_id, str) else ""
        name = unique(valid_name(op_id or f"{method} {path}", method), self.names)
        self.names.add(name)
        input_schema: JsonObj = {"type": "object", "properties": properties}
        if required:
            input_schema["required"] = required
        input_schema["additionalProperties"] = False
        return Operation(
            name=name,
            operation_id=op_id,
            method=method.upper(),
            path=path,
            params=tuple(params),
            body=sent,
            required=tuple(required),
            tool=_tool(name, method, path, op, input_schema),
        )

    def _parameters(
        self, path: str, op: JsonObj, at: str, common: Any, common_at: str
    ) -> list[tuple[Param, Any]]:
        """The operation's parameters (the path item's, overridden by the operation's by name
        and place), then one for each template variable no parameter declares."""
        found: dict[tuple[str, str], tuple[Param, Any]] = {}
        for nodes, nodes_at in (
            (common, common_at),
            (op.get("parameters", []), child(at, "parameters")),
        ):
            if not isinstance(nodes, list):
                raise SpecError(nodes_at, f"parameters must be a list, not {kind(nodes)}")
            for i, node in enumerate(nodes):
                param = self._parameter(node, child(nodes_at, i))
                if param is not None:
                    found[(param[0].name, param[0].location)] = param
        template = _TEMPLATE.findall(path)
        for name, location in list(found):
            if location == "path" and name not in template:
                del found[(name, location)]  # declared, but not in the path: nowhere to go
        for name in template:
            if (name, "path") not in found:
                found[(name, "path")] = (
                    Param(name, "path", name, True, "simple", False, False),
                    {"type": "string"},
                )
        order = {"path": 0, "query": 1, "header": 2}
        return sorted(found.values(), key=lambda pair: order[pair[0].location])

    def _parameter(self, node: Any, at: str) -> tuple[Param, Any] | None:
        p, at = follow(self.doc, node, at, "a parameter")
        name, location = p.get("name"), p.get("in")
        if not isinstance(name, str) or not name:
            raise SpecError(at, "a parameter needs a name")
        if location not in ("path", "query", "header", "cookie"):
            raise SpecError(
                child(at, "in"), f"'in' must be path, query, header or cookie, not {location!r}"
            )
        if location == "cookie":
            return None
        if location == "header":
            if not _TOKEN.fullmatch(name):
                raise SpecError(child(at, "name"), f"{name!r} is not a valid header name")
            if name.lower() in IGNORED_HEADERS:
                return None
        as_json = False
        if "schema" in p:
            schema = self.inliner.schema(p["schema"], child(at, "schema"))
        elif isinstance(p.get("content"), dict) and p["content"]:
            media, media_node = next(iter(p["content"].items()))
            media_node = media_node if isinstance(media_node, dict) else {}
            schema = self.inliner.schema(
                media_node.get("schema", {}), child(at, "content", media, "schema")
            )
            as_json = True
        else:
            schema = {}
        schema = {} if schema is True else schema
        if isinstance(schema, dict):
            extra = {k: p[k] for k in ("description", "deprecated") if k in p and k not in schema}
            schema = {**schema, **extra} if extra else schema
        style = p.get("style")
        style = style if isinstance(style, str) else _DEFAULT_STYLE[location]
        explode = p.get("explode")
        explode = explode if isinstance(explode, bool) else style == "form"
        required = location == "path" or p.get("required") is True
        return Param(name, location, name, required, style, explode, as_json), schema

    def _body(
        self, op: JsonObj, at: str
    ) -> tuple[str, Any, tuple[JsonObj, list[str]] | None, bool] | str | None:
        """(media type, schema, its flattened properties and required ones, required) of the
        JSON request body; None without one; a reason to leave the operation out."""
        if "requestBody" not in op:
            return None
        body, body_at = follow(
            self.doc, op["requestBody"], child(at, "requestBody"), "a request body"
        )
        content = body.get("content")
        if not isinstance(content, dict):
            raise SpecError(child(body_at, "content"), "a request body needs content (a mapping)")
        required = body.get("required") is True
        for media, node in content.items():
            if _json_media(media):
                node = node if isinstance(node, dict) else {}
                schema = self.inliner.schema(
                    node.get("schema", {}), child(body_at, "content", media, "schema")
                )
                sent = "application/json" if media.strip().startswith("*/*") else media
                return sent, schema, _flat(schema), required
        if required:
            return f"its request body is not JSON ({', '.join(content) or 'no media type'})"
        return None

    def _server(self) -> str:
        servers = self.doc.get("servers")
        if not isinstance(servers, list) or not servers or not isinstance(servers[0], dict):
            return ""
        first = servers[0]
        url = first.get("url")
        if not isinstance(url, str):
            return ""
        variables = first.get("variables")
        variables = variables if isinstance(variables, dict) else {}

        def fill(match: re.Match[str]) -> str:
            var = variables.get(match[1])
            default = var.get("default") if isinstance(var, dict) else None
            return str(default) if default is not None else match[0]

        return _TEMPLATE.sub(fill, url)

    def _api_key(self) -> tuple[str, str] | None:
        components = self.doc.get("components")
        schemes = components.get("securitySchemes") if isinstance(components, dict) else None
        if not isinstance(schemes, dict):
            return None
        for name, node in schemes.items():
            at = child("#", "components", "securitySchemes", name)
            scheme, _ = follow(self.doc, node, at, "a security scheme")
            where, header = scheme.get("in"), scheme.get("name")
            if scheme.get("type") != "apiKey" or not isinstance(header, str):
                continue
            if where == "query" or (where == "header" and _TOKEN.fullmatch(header)):
                return where, header
        return None


def _json_media(media: str) -> bool:
    base = media.split(";", 1)[0].strip().lower()
    return base in ("application/json", "*/*") or base.endswith("+json")


def _flat(schema: Any) -> tuple[JsonObj, list[str]] | None:
    """The properties and required names of an object schema (``allOf`` parts merged, read-only
    properties left out), or None when the body is not one (an array, a ``oneOf``, a map)."""
    if not isinstance(schema, dict) or any(k in schema for k in ("oneOf", "anyOf", "not", "if")):
        return None
    if schema.get("type", "object") != "object":
        return None
    props: JsonObj = dict(schema.get("properties") or {})
    needed = [r for r in schema.get("required") or [] if isinstance(r, str)]
    for part in schema.get("allOf") or []:
        sub = _flat(part)
        if sub is None:
            return None
        props |= sub[0]
        needed += sub[1]
    props = {
        k: v for k, v in props.items() if not (isinstance(v, dict) and v.get("readOnly") is True)
    }
    if not props:
        return None
    return props, [r for r in dict.fromkeys(needed) if r in props]


def _tool(name: str, method: str, path: str, op: JsonObj, schema: JsonObj) -> JsonObj:
    summary = op.get("summary") if isinstance(op.get("summary"), str) else ""
    detail = op.get("description") if isinstance(op.get("description"), str) else ""
    parts = [t.strip() for t in (summary, detail) if t and t.strip()]
    if len(parts) == 2 and parts[0] == parts[1]:
        parts.pop()
    description = "\n\n".join(parts) or f"{method.upper()} {path}"
    if op.get("deprecated") is True:
        description = f"Deprecated. {description}"
    tool: JsonObj = {"name": name, "description": description, "inputSchema": schema}
    if summary and summary.strip():
        tool["title"] = summary.strip()
    if method == "get":
        tool["annotations"] = {"readOnlyHint": True}
    elif method in ("put", "delete"):
        tool["annotations"] = {"readOnlyHint": False, "idempotentHint": True}
    return tool
