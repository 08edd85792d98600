"""agw.config.openapi and agw.config.openapi_tools: OpenAPI specs read into MCP tools, on the
official Petstore 3.0 spec, a 3.1 spec whose schemas reach each other through deep $refs, and
broken specs (each a clear error naming its place), as config validation reports them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from agw.config import families as f
from agw.config.base import FROM_STORE
from agw.config.loader import load_bundle_text
from agw.config.mcp import McpService
from agw.config.openapi import SpecError
from agw.config.openapi_tools import Operation, Spec, base_of, load_spec_file, read_spec, select
from agw.errors import ConfigInvalid

DATA = Path(__file__).resolve().parent.parent / "data" / "openapi"
PETSTORE = DATA / "petstore.yaml"
DEEP = DATA / "deep-refs.yaml"


def ops(spec: Spec) -> dict[str, Operation]:
    return {op.name: op for op in spec.operations}


def schema_of(spec: Spec, name: str) -> dict[str, Any]:
    found: dict[str, Any] = ops(spec)[name].tool["inputSchema"]
    return found


def spec_text(paths: dict[str, Any], **extra: Any) -> bytes:
    doc = {"openapi": "3.0.3", "info": {"title": "t", "version": "1"}, "paths": paths, **extra}
    return json.dumps(doc).encode()


def op(**fields: Any) -> dict[str, Any]:
    return {"responses": {"200": {"description": "ok"}}, **fields}


# ------------------------------------------------------------------------------- petstore


def test_petstore_operations_become_tools() -> None:
    spec = load_spec_file(str(PETSTORE))
    assert (spec.title, spec.version) == ("Swagger Petstore", "1.0.0")
    assert [o.name for o in spec.operations] == ["listPets", "createPets", "showPetById"]
    assert base_of(spec, "") == "http://petstore.swagger.io/v1"
    assert base_of(spec, "http://127.0.0.1:9/v1") == "http://127.0.0.1:9/v1"
    listing = ops(spec)["listPets"]
    assert listing.tool == {
        "name": "listPets",
        "title": "List all pets",
        "description": "List all pets",
        "inputSchema": {
            "type": "object",
            "properties": {
                "limit": {
                    "type": "integer",
                    "format": "int32",
                    "description": "How many items to return at one time (max 100)",
                }
            },
            "additionalProperties": False,
        },
        "annotations": {"readOnlyHint": True},
    }
    assert (listing.method, listing.path, listing.body) == ("GET", "/pets", None)
    assert listing.params[0].location == "query" and not listing.params[0].required
    show = ops(spec)["showPetById"]
    assert show.required == ("petId",)
    assert show.tool["inputSchema"]["properties"]["petId"] == {
        "type": "string",
        "description": "The id of the pet to retrieve",
    }
    create = ops(spec)["createPets"]
    assert create.method == "POST" and create.tool["inputSchema"]["properties"] == {}
    assert "annotations" not in create.tool


def test_include_and_exclude() -> None:
    spec = load_spec_file(str(PETSTORE))
    assert [o.name for o in select(spec, ["listPets", "showPetById"], [])] == [
        "listPets",
        "showPetById",
    ]
    assert [o.name for o in select(spec, [], ["createPets"])] == ["listPets", "showPetById"]
    with pytest.raises(ValueError, match=r"exclude\[1\]: no operation 'nope' in the spec"):
        select(spec, [], ["listPets", "nope"])


# ------------------------------------------------------------------------------ deep refs


def test_deep_refs_are_inlined() -> None:
    spec = load_spec_file(str(DEEP))
    assert base_of(spec, "") == "https://eu.shop.example/v2"  # the server variable's default
    assert spec.skipped == ("POST /uploads: its request body is not JSON (multipart/form-data)",)
    order = schema_of(spec, "placeOrder")
    # the body (components/requestBodies -> schemas/Order, an allOf of two parts) is flattened;
    # the read-only id is left out
    assert list(order["properties"]) == ["customer", "lines"]
    assert order["required"] == ["customer", "lines"]
    customer = order["properties"]["customer"]
    country = customer["properties"]["address"]["properties"]["country"]
    # a pointer deep into another schema (#/components/schemas/Line/properties/sku)
    assert country["properties"]["code"] == {"type": "string", "pattern": "^[A-Z]{3}-[0-9]+$"}
    line = order["properties"]["lines"]["items"]
    assert line["properties"]["qty"] == {"type": "integer", "minimum": 1}
    # a $ref's sibling description wins over the target's
    assert line["properties"]["note"] == {"type": "string", "description": "A note on this line"}
    assert "$ref" not in json.dumps(order)
    body = ops(spec)["placeOrder"].body
    assert body is not None and body.flat and body.media_type == "application/json"

    listing = schema_of(spec, "listOrders")
    # a parameter that is a $ref to a $ref, its schema a $ref too
    assert listing["properties"]["page"] == {
        "type": "integer",
        "minimum": 1,
        "description": "Which page",
    }
    assert listing["properties"]["filter"]["properties"]["status"]["enum"] == ["open", "shipped"]
    assert ops(spec)["listOrders"].params[1].style == "deepObject"

    line_op = ops(spec)["getOrderLine"]  # a path-level parameter first
    assert [(p.name, p.location) for p in line_op.params] == [
        ("order_id", "path"),
        ("line_no", "path"),
    ]
    assert line_op.tool["inputSchema"]["properties"]["order_id"]["format"] == "uuid"


def test_recursive_schemas_stop_at_a_stub() -> None:
    spec = load_spec_file(str(DEEP))
    category = schema_of(spec, "patchCategory")
    stub = {
        "type": "object",
        "description": "Category (not expanded here: recursive or nested too deep)",
    }
    assert category["properties"]["parent"] == stub
    assert category["properties"]["children"]["items"] == stub
    # an escaped pointer (#/components/schemas/Weird~1Name~0x)
    assert category["properties"]["id"] == {"type": "string", "minLength": 3}
    body = ops(spec)["patchCategory"].body
    assert body is not None and body.media_type == "application/merge-patch+json"


def test_openapi_30_schemas_become_json_schema() -> None:
    schema = {
        "type": "object",
        "properties": {
            "n": {"type": "integer", "minimum": 0, "exclusiveMinimum": True, "nullable": True},
            "s": {"type": "string", "example": "abc", "xml": {"name": "x"}},
        },
    }
    body = {"required": True, "content": {"application/json": {"schema": schema}}}
    spec = read_spec(spec_text({"/x": {"post": op(operationId="x", requestBody=body)}}))
    props = schema_of(spec, "x")["properties"]
    assert props["n"] == {"type": ["integer", "null"], "exclusiveMinimum": 0}
    assert props["s"] == {"type": "string", "examples": ["abc"]}


# ------------------------------------------------------------------------ names, collisions


def test_tool_names_are_valid_unique_and_short() -> None:
    long_id = "a" * 80
    paths = {
        "/one/{id}": {"get": op(), "post": op(operationId="weird op/id!")},
        "/two": {"get": op(operationId=long_id), "put": op(operationId=long_id)},
        "/three": {"get": op(operationId="dup"), "post": op(operationId="dup")},
        "/four": {"options": op(), "head": op()},
    }
    spec = read_spec(spec_text(paths))
    names = [o.name for o in spec.operations]
    assert names == ["get_one_id", "weird_op_id", "a" * 64, "a" * 62 + "_2", "dup", "dup_2"]
    assert all(len(n) <= 64 for n in names)
    assert spec.skipped == (
        "HEAD /four: head is not offered",
        "OPTIONS /four: options is not offered",
    )
    # a template variable no parameter declares is a required string argument
    assert ops(spec)["get_one_id"].tool["inputSchema"]["required"] == ["id"]


def test_parameter_and_body_collisions() -> None:
    body = {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["id"],
                    "properties": {"id": {"type": "string"}, "page[size]": {"type": "integer"}},
                }
            }
        },
    }
    params = [
        {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}},
        {"name": "id", "in": "query", "schema": {"type": "boolean"}},
        {"name": "X-Id", "in": "header", "required": True, "schema": {"type": "string"}},
        {"name": "Authorization", "in": "header", "schema": {"type": "string"}},
        {"name": "session", "in": "cookie", "schema": {"type": "string"}},
    ]
    spec = read_spec(
        spec_text(
            {"/items/{id}": {"put": op(operationId="put", parameters=params, requestBody=body)}}
        )
    )
    put = ops(spec)["put"]
    schema = put.tool["inputSchema"]
    # the body keeps its names; a parameter whose name is taken gets __<in>
    assert list(schema["properties"]) == ["id", "page_size", "id__path", "id__query", "X-Id"]
    assert schema["properties"]["id__path"] == {"type": "integer"}
    assert schema["required"] == ["id", "id__path", "X-Id"]
    assert [(p.name, p.location, p.arg) for p in put.params] == [
        ("id", "path", "id__path"),
        ("id", "query", "id__query"),
        ("X-Id", "header", "X-Id"),
    ]
    assert put.body is not None and put.body.fields == (("id", "id"), ("page_size", "page[size]"))


def test_a_body_that_is_not_an_object_is_one_argument() -> None:
    body = {"content": {"application/json": {"schema": {"type": "array", "items": {}}}}}
    spec = read_spec(spec_text({"/x": {"post": op(operationId="x", requestBody=body)}}))
    x = ops(spec)["x"]
    assert x.tool["inputSchema"]["properties"] == {"body": {"type": "array", "items": {}}}
    assert x.required == () and x.body is not None and not x.body.flat


# ----------------------------------------------------------------------------- broken specs

CYCLE = {"A": {"$ref": "#/components/schemas/B"}, "B": {"$ref": "#/components/schemas/A"}}
GET_A = {
    "/a": {
        "get": op(
            parameters=[{"name": "q", "in": "query", "schema": {"$ref": "#/components/schemas/A"}}]
        )
    }
}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"- just\n- a list\n", "#: the spec must be a mapping, not a list"),
        (b"openapi: 3.0.0\ninfo: {title: t}\n", "#: no paths: the spec has no operations"),
        (b"openapi: 3.0.0\npaths: [1]\n", "#/paths: paths must be a mapping, not a list"),
        (b'swagger: "2.0"\npaths: {}\n', "#/swagger: Swagger 2.0 is not supported"),
        (b"openapi: 4.0.0\npaths: {}\n", "#/openapi: OpenAPI 4.0.0 is not supported"),
        (b"title: x\n", "#: not an OpenAPI document: no openapi version"),
        (
            b"openapi: 3.0.0\npaths:\n  /a:\n    get: {responses: {}\n",
            "invalid YAML at line 5, column 1:",
        ),
        (
            b"openapi: 3.0.0\nopenapi: 3.1.0\n",
            "invalid YAML at line 2, column 1: found duplicate key",
        ),
        (b'{"openapi": "3.0.0", "paths": {', "invalid JSON:"),
        (
            b"a: &a [*a]\n",
            "#/a/0/0/0/0/0/0/0/...: nested deeper than 200 levels (a YAML alias inside itself?)",
        ),
        (b"\xff\xfe", "the spec is not UTF-8"),
        (
            spec_text({"/a": {"get": op(parameters=[{"$ref": "#/components/parameters/Nope"}])}}),
            "#/paths/~1a/get/parameters/0/$ref: $ref '#/components/parameters/Nope' does not"
            " resolve: nothing at #/components",
        ),
        (
            spec_text(GET_A, components={"schemas": CYCLE}),
            "#/components/schemas/B/$ref: $ref cycle: #/components/schemas/A ->"
            " #/components/schemas/B -> #/components/schemas/A",
        ),
        (
            spec_text({"/a": {"get": op(parameters=[{"$ref": "other.yaml#/P"}])}}),
            "#/paths/~1a/get/parameters/0/$ref: $ref 'other.yaml#/P' is not local",
        ),
        (
            spec_text({"/a": {"get": op(parameters=[{"name": "q", "in": "body"}])}}),
            "#/paths/~1a/get/parameters/0/in: 'in' must be path, query, header or cookie",
        ),
        (spec_text({"a": {"get": op()}}), "#/paths/a: a path must start with '/'"),
    ],
    ids=[
        "not-a-mapping",
        "missing-paths",
        "paths-not-a-mapping",
        "swagger-2",
        "openapi-4",
        "not-openapi",
        "bad-yaml",
        "duplicate-key",
        "bad-json",
        "alias-loop",
        "not-utf8",
        "unresolvable-ref",
        "ref-cycle",
        "external-ref",
        "bad-parameter",
        "bad-path",
    ],
)
def test_broken_specs_name_the_place(data: bytes, message: str) -> None:
    with pytest.raises(SpecError) as info:
        read_spec(data)
    assert str(info.value).startswith(message), str(info.value)


def test_a_spec_without_a_usable_server_needs_base_url() -> None:
    spec = read_spec(spec_text({"/a": {"get": op()}}, servers=[{"url": "/v1"}]))
    with pytest.raises(SpecError, match=r"#/servers/0/url: '/v1' is not an absolute http\(s\) URL"):
        base_of(spec, "")
    assert base_of(spec, "", "http://127.0.0.1:5/spec/openapi.json") == "http://127.0.0.1:5/v1"
    with pytest.raises(SpecError, match="#/servers: the spec names no server: set base_url"):
        base_of(read_spec(spec_text({"/a": {"get": op()}})), "")


# -------------------------------------------------------------------- as config validates it


def service(spec: str, **extra: Any) -> dict[str, Any]:
    return {"id": "api", "name": "api", "transport": "openapi", "spec": spec, **extra}


def test_a_broken_local_spec_fails_validation_naming_the_place(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_bytes(
        spec_text({"/a": {"post": op(requestBody={"$ref": "#/components/requestBodies/Gone"})}})
    )
    bundle = json.dumps(
        {
            "apiVersion": "gateway.agw/v1alpha1",
            "kind": "GatewayBundle",
            "mcpServices": [service(str(PETSTORE)), service(str(broken), id="bad", name="bad")],
        }
    )
    with pytest.raises(ConfigInvalid) as info:
        load_bundle_text(bundle)
    [problem] = info.value.problems
    assert problem.path == "mcpServices[1]"
    assert problem.message == (
        f"spec {broken}: #/paths/~1a/post/requestBody/$ref: $ref"
        " '#/components/requestBodies/Gone' does not resolve: nothing at #/components"
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"spec": ""}, "openapi transport requires spec"),
        ({"spec": "ftp://x/openapi.json"}, "spec must be a file path or an http(s) URL"),
        ({"spec": "/no/such/spec.yaml"}, "spec /no/such/spec.yaml: cannot read the spec"),
        ({"base_url": "file:///x"}, "base_url must be http(s)"),
        ({"include": ["listPets", "nope"]}, "include[1]: no operation 'nope' in the spec"),
        ({"transport": "stdio", "command": "x"}, "spec, base_url, include and exclude are for"),
    ],
)
def test_service_fields_are_checked(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        McpService.model_validate(service(str(PETSTORE)) | fields)


def test_a_stored_service_loads_even_when_its_file_is_gone(tmp_path: Path) -> None:
    """Read back from the store, a spec file is not read: a file removed since is the
    service's start failure, never a store that cannot load."""
    gone = str(tmp_path / "gone.yaml")
    loaded = McpService.model_validate(service(gone), context=FROM_STORE)
    assert loaded.spec == gone
    with pytest.raises(ValueError, match="cannot read the spec"):
        McpService.model_validate(service(gone))


def test_a_file_spec_without_a_server_needs_base_url(tmp_path: Path) -> None:
    path = tmp_path / "noserver.json"
    path.write_bytes(spec_text({"/a": {"get": op()}}))
    with pytest.raises(ValueError, match="#/servers: the spec names no server: set base_url"):
        McpService.model_validate(service(str(path)))
    McpService.model_validate(service(str(path), base_url="http://127.0.0.1:1/api"))


def test_spec_and_base_url_credentials_are_secrets() -> None:
    svc = McpService.model_validate(
        service(
            "https://specs.example/openapi.json?token=s3cret",
            base_url="https://user:pa55@api.example/v1",
            auth={"type": "bearer", "api_key": "sk-x"},
        )
    )
    shown = f.redact(f.MCP_SERVICE, svc.model_dump())
    assert shown["spec"] == "https://specs.example/openapi.json?token=<redacted>"
    assert shown["base_url"] == "https://user:<redacted>@api.example/v1"
    assert shown["auth"]["api_key"] == "<redacted>"
