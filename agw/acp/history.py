"""Reading an agent's sessions through a transient process: ``session/list`` (filtered to a
cwd by the gateway, symlinks resolved on both sides) and ``session/load`` replayed into a
transcript. Used by the route side (``<route>/sessions``, ``.../transcript``) and the admin API.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from agw.acp.connection import AcpError
from agw.acp.events import Transcript
from agw.acp.runtime import AcpRuntime
from agw.config.acp import AcpService
from agw.types import JsonObj

SESSION_CALL_TIMEOUT_S = 30.0  # session/list and session/load on a transient process
TRANSCRIPT_QUIET_S = 0.25  # replayed updates may trail the session/load result
TRANSCRIPT_CAP_S = 2.0


def session_list(result: Any, cwd: str) -> JsonObj:
    """The answer of ``session/list`` as ``{sessions, next_cursor?}``, keeping the sessions in
    ``cwd`` (both sides compared with symlinks resolved). :class:`AcpError` when malformed."""
    if not isinstance(result, dict) or not isinstance(result.get("sessions") or [], list):
        raise AcpError("acp session/list returned an invalid result")
    want = os.path.realpath(cwd)
    sessions: list[JsonObj] = []
    for item in result.get("sessions") or []:
        sid = item.get("sessionId") if isinstance(item, dict) else None
        scwd = item.get("cwd") if isinstance(item, dict) else None
        if not isinstance(sid, str) or not sid or not isinstance(scwd, str) or not scwd:
            raise AcpError("acp session/list returned a session without sessionId or cwd")
        assert isinstance(item, dict)
        if os.path.realpath(scwd) != want:
            continue
        entry: JsonObj = {"session_id": sid, "cwd": scwd}
        for src, dst in (("title", "title"), ("updatedAt", "updated_at"), ("_meta", "_meta")):
            if item.get(src) not in (None, "", {}):
                entry[dst] = item[src]
        sessions.append(entry)
    out: JsonObj = {"sessions": sessions}
    cursor = result.get("nextCursor")
    if isinstance(cursor, str) and cursor:
        out["next_cursor"] = cursor
    return out


async def list_sessions(runtime: AcpRuntime, service: AcpService, cwd: str, cursor: str) -> JsonObj:
    """``session/list`` on a transient agent (given only ``cursor``), filtered to ``cwd``.
    :class:`AcpError` (502) when the agent does not advertise it or fails."""
    async with runtime.transient(service, cwd) as conn:
        caps = conn.agent_capabilities
        session_caps = caps.get("sessionCapabilities")
        listed = isinstance(session_caps, dict) and session_caps.get("list") is not None
        if not (listed or caps.get("listSessions")):
            raise AcpError("acp agent does not advertise session/list")
        result = await conn.request(
            "session/list", {"cursor": cursor} if cursor else {}, timeout=SESSION_CALL_TIMEOUT_S
        )
    return session_list(result, cwd)


async def load_transcript(
    runtime: AcpRuntime, service: AcpService, session_id: str, cwd: str
) -> JsonObj:
    """``session/load`` on a transient agent: ``{session_id, messages:[{role, text}]}`` from the
    replayed chunks (consecutive chunks of one role joined). :class:`AcpError` (502) when the
    agent does not advertise ``loadSession`` or fails."""
    transcript = Transcript(session_id)
    async with runtime.transient(service, cwd) as conn:
        if not conn.agent_capabilities.get("loadSession"):
            raise AcpError("acp agent does not advertise session/load")
        unsubscribe = conn.subscribe(transcript.on_update)
        try:
            await conn.request(
                "session/load",
                {"sessionId": session_id, "cwd": cwd, "mcpServers": []},
                timeout=SESSION_CALL_TIMEOUT_S,
            )
            await _settle(transcript)
        finally:
            unsubscribe()
    return {"session_id": session_id, "messages": transcript.messages}


async def _settle(transcript: Transcript) -> None:
    """Wait until the replay has been quiet for a moment (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TRANSCRIPT_CAP_S
    seen = -1
    while seen != transcript.updates and loop.time() < deadline:
        seen = transcript.updates
        await asyncio.sleep(TRANSCRIPT_QUIET_S)
