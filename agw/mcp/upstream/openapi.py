"""The OpenAPI upstream: a REST API's operations served as MCP tools (docs/openapi-mcp.md).

:class:`OpenApiUpstream` is an MCP server the gateway plays itself: ``ensure_ready`` reads the
spec once (a file, or a GET of its URL with no credentials, within ``SPEC_LIMIT`` and
``HANDSHAKE_TIMEOUT_S``), builds the tools (:mod:`agw.config.openapi_tools`, in a thread) and
answers as an initialize result would, with the ``tools`` capability only. A spec that cannot be
read or is broken fails the start with an :class:`UpstreamError` naming the place; the next use
tries again.

Methods: ``tools/list`` (every tool, one page), ``tools/call`` (one HTTP request through
:mod:`agw.mcp.upstream.openapi_call`, bounded by the call's timeout, its answer by
``ANSWER_LIMIT``), ``ping``; any other is ``-32601`` (method not found), as for an MCP server
without the capability. The service's ``auth`` goes on every call (``api_key`` where the spec's
first apiKey scheme says, else ``Authorization: Bearer``; ``basic``), or the caller's own JWT
with ``forward_client_token``; nothing else of the caller's. It sends no notifications and no
server-to-client requests, and keeps no session: the pool shares one per service
(:mod:`agw.mcp.pool`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import quote, urlsplit

from agw.clock import now_ms
from agw.config.families import mask_url
from agw.config.mcp import McpService
from agw.config.openapi import SPEC_LIMIT, SpecError
from agw.config.openapi_tools import (
    Operation,
    Spec,
    base_of,
    load_spec_file,
    read_spec,
    select,
)
from agw.mcp.httpclient import BodyTooLarge, HttpClient, HttpClientError, Unreachable
from agw.mcp.jsonrpc import INVALID_PARAMS, METHOD_NOT_FOUND, RequestId, RpcError
from agw.mcp.protocol import UPSTREAM_PROTOCOL_VERSION
from agw.mcp.upstream.base import (
    DEFAULT_CALL_TIMEOUT_S,
    HANDSHAKE_TIMEOUT_S,
    Listener,
    OnMessage,
    Upstream,
    UpstreamError,
    auth_headers,
    ready_within,
    retrieve,
)
from agw.mcp.upstream.openapi_call import ArgumentError, http_request, tool_result
from agw.request import current_client_token, current_trace, traceparent
from agw.types import JsonObj
from agw.version import VERSION

log = logging.getLogger(__name__)

ANSWER_LIMIT = 8 * 1024 * 1024  # bytes of one REST answer a tool result carries
CONNECT_TIMEOUT_S = 10.0
ACCEPT = "application/json, */*;q=0.5"
SPEC_ACCEPT = "application/json, application/yaml;q=0.9, */*;q=0.5"


class OpenApiUpstream(Upstream):
    """One OpenAPI service as an MCP server (see the module docstring)."""

    def __init__(self, service: McpService, listener: Listener | None = None) -> None:
        super().__init__(service, listener)
        self.created_at_ms = now_ms()
        self._loading: asyncio.Task[JsonObj] | None = None
        self._tools: list[JsonObj] = []
        self._operations: dict[str, Operation] = {}
        self._http: HttpClient | None = None
        self._prefix = ""  # the base URL's path
        self._query = ""  # and its query
        self._auth: dict[str, str] = {}
        self._auth_query = ""
        self._closed = False

    # ------------------------------------------------------------------------------ Upstream

    async def ensure_ready(self) -> JsonObj:
        if self.state == "ready" and self.init_result is not None:
            return self.init_result
        if self._closed:
            raise UpstreamError(f"mcp service {self.service.id} is closed")
        task = self._loading
        if task is None or task.done():
            task = self._loading = asyncio.create_task(self._load())
            task.add_done_callback(retrieve)
        return await asyncio.shield(task)

    async def request(
        self,
        method: str,
        params: JsonObj | None = None,
        *,
        on_message: OnMessage | None = None,
        timeout: float | None = DEFAULT_CALL_TIMEOUT_S,  # noqa: ASYNC109
    ) -> Any:
        if self.state != "ready":
            await ready_within(self, timeout)
        self.last_used_at_ms = now_ms()
        if method == "tools/list":
            return {"tools": list(self._tools)}
        if method == "tools/call":
            return await self._call(params or {}, timeout)
        if method == "ping":
            return {}
        raise RpcError(METHOD_NOT_FOUND, f"Method not found: {method}")

    async def notify(self, method: str, params: JsonObj | None = None) -> None:
        """Nothing to tell: a call is cancelled by cancelling its task."""

    async def reply(
        self, request_id: RequestId, result: Any = None, error: JsonObj | None = None
    ) -> None:
        """Never asked anything: nothing to answer."""

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.state = "closed"
        if self._loading is not None:
            self._loading.cancel()
        if self._http is not None:
            await self._http.close()

    # ----------------------------------------------------------------------------- loading

    async def _load(self) -> JsonObj:
        self.state = "connecting"
        try:
            init = await self._start()
        except BaseException as exc:
            self.state = "closed" if self._closed else "error"
            self.last_error = str(exc) if isinstance(exc, UpstreamError) else repr(exc)
            raise
        self.state = "ready"
        self.last_error = None
        return init

    async def _start(self) -> JsonObj:
        service = self.service
        where = mask_url(service.spec)
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                spec = await self._read()
            operations = select(spec, service.include, service.exclude)
            base = base_of(spec, service.base_url, service.spec if service.spec_is_url else "")
            http = HttpClient(base, connect_timeout=CONNECT_TIMEOUT_S)
        except TimeoutError:
            raise UpstreamError(
                f"mcp service {service.id}: spec {where} not read within {HANDSHAKE_TIMEOUT_S:g}s"
            ) from None
        except ValueError as exc:  # SpecError, an unknown include/exclude, a bad base URL
            raise UpstreamError(f"mcp service {service.id}: spec {where}: {exc}") from None
        parts = urlsplit(base)
        self._prefix, self._query = parts.path.rstrip("/"), parts.query
        self._operations = {op.name: op for op in operations}
        self._tools = [op.tool for op in operations]
        self._auth, self._auth_query = _credentials(service, spec)
        if self._closed:
            await http.close()
            raise UpstreamError(f"mcp service {service.id} is closed")
        self._http = http
        if spec.skipped:
            log.info(
                "openapi_operations_skipped",
                extra={"service_id": service.id, "skipped": list(spec.skipped[:20])},
            )
        log.info(
            "mcp_upstream_ready",
            extra={"service_id": service.id, "transport": "openapi", "tools": len(self._tools)},
        )
        self.protocol_version = UPSTREAM_PROTOCOL_VERSION
        self.init_result = {
            "protocolVersion": UPSTREAM_PROTOCOL_VERSION,
            "capabilities": {"tools": {}},
            "serverInfo": {"name": spec.title or service.name, "version": spec.version or "0"},
        }
        return self.init_result

    async def _read(self) -> Spec:
        """The spec, read and built (the building in a thread: a large spec takes a while)."""
        service = self.service
        if not service.spec_is_url:
            return await asyncio.to_thread(load_spec_file, service.spec)
        client = HttpClient(service.spec, connect_timeout=CONNECT_TIMEOUT_S, limit=1)
        try:
            headers = {"accept": SPEC_ACCEPT, "user-agent": f"agw/{VERSION}"}
            resp = await client.request("GET", headers)
            try:
                if resp.status != 200:
                    raise UpstreamError(
                        f"mcp service {service.id}: spec {mask_url(service.spec)} answered"
                        f" HTTP {resp.status}",
                        status=resp.status,
                    )
                data = await resp.read(SPEC_LIMIT)
            finally:
                resp.release()
        except BodyTooLarge:
            raise SpecError("", f"the spec is over the {SPEC_LIMIT // 2**20} MiB limit") from None
        except HttpClientError as exc:
            raise UpstreamError(
                f"mcp service {service.id}: spec {mask_url(service.spec)} unreachable: {exc}"
            ) from None
        finally:
            await client.close()
        return await asyncio.to_thread(read_spec, data)

    # ------------------------------------------------------------------------------- calls

    async def _call(self, params: JsonObj, timeout: float | None) -> JsonObj:  # noqa: ASYNC109
        name = params.get("name")
        op = self._operations.get(name) if isinstance(name, str) else None
        if op is None:
            raise RpcError(INVALID_PARAMS, f"Unknown tool: {name}")
        args = params.get("arguments") or {}
        if not isinstance(args, dict):
            raise RpcError(INVALID_PARAMS, "arguments must be an object")
        try:
            req = http_request(op, args, self._prefix, self._query)
        except ArgumentError as exc:
            return {"content": [{"type": "text", "text": str(exc)}], "isError": True}
        headers = {"accept": ACCEPT, "user-agent": f"agw/{VERSION}", **req.headers, **self._auth}
        target = req.target
        if self._auth_query:
            target += ("&" if "?" in target else "?") + self._auth_query
        trace = current_trace.get()
        if trace is not None:
            headers["traceparent"] = traceparent(trace)
        if self.service.forward_client_token:  # the caller's own JWT, when it asked for that
            token = current_client_token.get()
            if token:
                headers["authorization"] = f"Bearer {token}"
        http = self._http
        assert http is not None
        sid = self.service.id
        try:
            async with asyncio.timeout(timeout):
                resp = await http.request(req.method, headers, req.body, target)
                try:
                    data = await resp.read(ANSWER_LIMIT)
                except BodyTooLarge:
                    return _too_large(resp.status)
                finally:
                    resp.release()
        except TimeoutError:
            raise UpstreamError(
                f"mcp service {sid} did not answer {op.name} within {timeout:g}s"
            ) from None
        except Unreachable as exc:
            raise UpstreamError(f"mcp service {sid} unreachable: {exc}") from None
        except HttpClientError as exc:
            if self._closed:
                raise UpstreamError(f"mcp service {sid} is closed") from None
            raise UpstreamError(f"mcp service {sid} connection failed: {exc}") from None
        return tool_result(resp.status, resp.headers, data)


def _too_large(status: int) -> JsonObj:
    limit = ANSWER_LIMIT // 2**20
    text = f"HTTP {status}: the answer is over the {limit} MiB limit (not shown)"
    return {"content": [{"type": "text", "text": text}], "isError": True}


def _credentials(service: McpService, spec: Spec) -> tuple[dict[str, str], str]:
    """The headers, or the query parameter, that carry the service's ``auth``."""
    auth = service.auth
    if auth.type == "api_key" and auth.api_key and spec.api_key is not None:
        where, name = spec.api_key
        if where == "header":
            return {name.lower(): auth.api_key}, ""
        return {}, f"{quote(name, safe='')}={quote(auth.api_key, safe='')}"
    return auth_headers(service), ""
