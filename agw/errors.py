"""The one error tree of agw.

Every error the gateway raises on purpose is an :class:`AgwError`. Each class fixes the HTTP
status it maps to and a stable snake_case ``code``; the admin API renders them as
``{"error": message, "code": code}`` and the data plane in the caller's own dialect.

    AgwError                      500 internal_error
    +-- InvalidRequest            400 invalid_request
    |   +-- ConfigInvalid         400 config_invalid      (carries every problem found)
    +-- Unauthorized              401 unauthorized
    +-- Forbidden                 403 forbidden
    +-- NotFound                  404 not_found
    +-- Conflict                  409 conflict
    |   +-- ReadOnly              409 read_only           (static objects)
    +-- PayloadTooLarge           413 payload_too_large
    +-- UpstreamFailed            502 upstream_failed     (a provider call made for the admin)
    +-- StoreError                500 store_error
        +-- SchemaTooNew          500 schema_too_new
        +-- StoreUnavailable      503 store_unavailable  (the file was deleted, replaced or
                                                          became read-only under agwd)

    Refusal                       any status, any code   the data plane says no: the one carrier
                                                         every step of the request pipeline raises
                                                         or returns; each plane renders it in its
                                                         caller's dialect (docs/errors.md)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class AgwError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(AgwError):
    status = 400
    code = "invalid_request"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a configuration, with where it is."""

    path: str
    message: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = self.path or "<root>"
        if self.line is not None:
            where += f" (line {self.line}"
            where += f", column {self.column})" if self.column is not None else ")"
        return f"{where}: {self.message}"


class ConfigInvalid(InvalidRequest):
    code = "config_invalid"

    def __init__(self, problems: Sequence[Problem], what: str = "gateway bundle") -> None:
        self.problems = list(problems)
        n = len(self.problems)
        noun = "error" if n == 1 else "errors"
        body = "; ".join(str(p) for p in self.problems)
        super().__init__(f"{what} validation failed ({n} {noun}): {body}")


class Unauthorized(AgwError):
    status = 401
    code = "unauthorized"


class Forbidden(AgwError):
    status = 403
    code = "forbidden"


class NotFound(AgwError):
    status = 404
    code = "not_found"


class Conflict(AgwError):
    status = 409
    code = "conflict"


class ReadOnly(Conflict):
    code = "read_only"


class PayloadTooLarge(AgwError):
    status = 413
    code = "payload_too_large"


class UpstreamFailed(AgwError):
    status = 502
    code = "upstream_failed"


class StoreError(AgwError):
    code = "store_error"


class SchemaTooNew(StoreError):
    code = "schema_too_new"


class StoreUnavailable(StoreError):
    status = 503
    code = "store_unavailable"


class Refusal(Exception):
    """The gateway says no to a data-plane request: the edge (Host, Origin, trace headers), the
    identity step (virtual key), policy (a disabled route, the depth gate) or a plane itself (a
    body too large, no model matches). ``code`` is the stable error type recorded on the usage
    row; ``headers`` go on the answer (``Retry-After`` comes from ``retry_after``). A plane's
    ``render`` turns it into an OpenAI or Anthropic error object, a JSON-RPC error or an ACP
    error event; it is never rendered by the dispatcher. ``detail`` is what the plane that
    raised it renders it with when status and message are not enough (MCP: the JSON-RPC
    error, with its code)."""

    __slots__ = ("code", "detail", "headers", "message", "retry_after", "status")

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Sequence[tuple[bytes, bytes]] = (),
        retry_after: int | None = None,
        detail: object = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = list(headers)
        self.retry_after = retry_after
        self.detail = detail

    def answer_headers(self) -> list[tuple[bytes, bytes]]:
        """The headers this refusal adds to its answer (``Retry-After`` included)."""
        if self.retry_after is None:
            return self.headers
        return [*self.headers, (b"retry-after", str(self.retry_after).encode())]

    def __repr__(self) -> str:
        return f"Refusal({self.status}, {self.code!r}, {self.message!r})"
