"""The caller's principal on what a request leaves behind: its usage row (``user_id``,
``org_id``, filled by ``Request.usage_head`` for the three planes' events), its access-log line
and its span (``user.id``, ``agw.org_id``), and a real store round trip. Never the token.

The end-to-end proof (a JWT through agwd, the SDK, the metrics API and agwctl) is in
tests/auth/test_user_attribution.py.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from agw.auth.principal import ANONYMOUS, Principal
from agw.clock import now_ms
from agw.request import Request, TraceContext
from agw.runtime.snapshot import CompiledRoute, Snapshot
from agw.store.db import Database
from agw.tracing import TraceExporter
from agw.types import Message
from agw.usage.accesslog import AccessLog, line_of
from agw.usage.events import (
    TEXT_LIMITS,
    AcpUsageEvent,
    LlmUsageEvent,
    McpUsageEvent,
    UsageEvent,
)
from agw.usage.recorder import UsageRecorder
from tests.support.usage import rows, wait_until

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbmEifQ.c2lnbmF0dXJlLW5vdC1mb3ItbG9ncw"
ANA = Principal(
    "jwt",
    user="ana@example.com",
    org="org-acme",
    groups=("eng",),
    claims={"sub": "ana", "email": "ana@example.com"},
    provider_id="corp",
    token=TOKEN,
)


async def _receive() -> Message:
    return {"type": "http.disconnect"}


async def _send(message: Message) -> None:
    raise AssertionError("nothing is sent in these tests")


def request(principal: Principal | None, kind: str = "llm") -> Request:
    route = CompiledRoute(
        id=f"{kind}-route",
        kind=kind,
        protocol="openai",
        host="",
        path_prefix=f"/{kind}",
        methods=frozenset(),
        disabled=False,
        require_virtual_key=False,
        config=None,
        jwt_provider_ids=("corp",),
    )
    return Request(
        scope={"type": "http", "path": f"/{kind}/v1/x"},
        receive=_receive,
        send=_send,
        snapshot=Snapshot(),
        route=route,
        path="/v1/x",
        method="POST",
        headers={"authorization": f"Bearer {TOKEN}"},
        trace=TraceContext.from_headers({}),
        principal=principal,
    )


def events_of(principal: Principal | None) -> list[UsageEvent]:
    """One event per plane, built the way the planes build them."""
    started = now_ms() - 5
    llm = request(principal, "llm")
    mcp = request(principal, "mcp")
    acp = request(principal, "acp")
    return [
        LlmUsageEvent(**llm.usage_head(started, 200), upstream_model="gpt-4o", input_tokens=3),
        McpUsageEvent(**mcp.usage_head(started, 200), method="tools/call", tool_name="add"),
        AcpUsageEvent(**acp.usage_head(started, 403, "forbidden"), operation="turn"),
    ]


def no_token(value: object) -> None:
    text = json.dumps(value, default=str)
    assert TOKEN not in text and "eyJ" not in text


def test_usage_head_records_the_principals_user_and_org_on_every_plane() -> None:
    for event in events_of(ANA):
        assert (event.user_id, event.org_id) == ("ana@example.com", "org-acme")  # type: ignore[attr-defined]
        assert event.virtual_key_id is None
        row = dict(zip(event.columns(), event.row(), strict=True))
        assert (row["user_id"], row["org_id"]) == ("ana@example.com", "org-acme")
        no_token(row)
    keyed = Principal("virtual_key", key_id="team-a")
    for principal in (None, ANONYMOUS, keyed):
        for event in events_of(principal):
            assert (event.user_id, event.org_id) == (None, None)  # type: ignore[attr-defined]
    assert events_of(keyed)[0].virtual_key_id == "team-a"
    both = Principal("jwt", key_id="team-a", user="bo@example.com", org=None)
    event = events_of(both)[0]
    assert (event.virtual_key_id, event.user_id, event.org_id) == ("team-a", "bo@example.com", None)  # type: ignore[attr-defined]


def test_the_access_log_line_names_the_user_and_org_never_the_token(tmp_path: Path) -> None:
    llm, mcp, acp = events_of(ANA)
    line = line_of(llm)
    keys = list(line)
    assert keys.index("span_id") < keys.index("user_id") < keys.index("org_id")
    assert keys.index("org_id") < keys.index("route_id")  # the documented order
    assert (line["user_id"], line["org_id"]) == ("ana@example.com", "org-acme")
    assert line_of(acp)["user_id"] == "ana@example.com"
    unnamed = line_of(events_of(Principal("virtual_key", key_id="team-a"))[1])
    assert "user_id" not in unnamed and "org_id" not in unnamed  # absent fields are left out

    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    for event in (llm, mcp, acp):
        log(event)
    log.close()
    written = [json.loads(text) for text in path.read_text().splitlines()]
    assert [(w["kind"], w["user_id"], w["org_id"]) for w in written] == [
        (kind, "ana@example.com", "org-acme") for kind in ("llm", "mcp", "acp")
    ]
    assert TOKEN not in path.read_text()


def test_spans_carry_user_id_and_the_org() -> None:
    exporter = TraceExporter("http://127.0.0.1:9", schedule_delay_ms=60_000)
    try:
        spans = [exporter.span_of(event) for event in events_of(ANA)]
        plain = exporter.span_of(events_of(Principal("virtual_key", key_id="k"))[0])
    finally:
        exporter.close(timeout=2)
    for span in spans:
        attrs: dict[str, Any] = dict(span.attributes or {})
        assert attrs["user.id"] == "ana@example.com"
        assert attrs["agw.org_id"] == "org-acme"
        no_token(attrs)
    attrs = dict(plain.attributes or {})
    assert "user.id" not in attrs and "agw.org_id" not in attrs


def test_user_and_org_are_bounded_like_every_text_value() -> None:
    long = Principal("jwt", user="u" * 5000, org="o\ud800rg")
    event = events_of(long)[0]
    event.bound()
    assert event.user_id == "u" * TEXT_LIMITS["user_id"]  # type: ignore[attr-defined]
    assert event.org_id == "o?rg"  # type: ignore[attr-defined]


def test_the_recorder_writes_user_and_org_to_each_usage_table(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"

    async def run() -> None:
        db = await Database.open(path)
        recorder = UsageRecorder(db)
        recorder.start()
        try:
            for event in events_of(ANA):
                assert recorder.emit(event)
            await wait_until(lambda: recorder.written_events == 3)
        finally:
            await recorder.close()
            await db.close()

    asyncio.run(run())
    for table in ("llm_usage_events", "mcp_usage_events", "acp_usage_events"):
        (row,) = rows(path, table)
        assert (row["user_id"], row["org_id"]) == ("ana@example.com", "org-acme"), table
        no_token(row)
