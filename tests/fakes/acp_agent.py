"""A fake ACP agent built on the official SDK (``agent-client-protocol``), run as a real process.

    python tests/fakes/acp_agent.py --state DIR [--no-load] [--no-list] [--no-http-mcp]
        [--page-size N] [--hang-initialize] [--exit-on-start CODE] [--spawn-child]

It speaks ACP v1 over stdio (the SDK's ``run_agent``). Sessions are kept as JSON files in
``--state DIR`` (default ``$FAKE_ACP_STATE`` or ``./.fake-acp-state``) so that another process of
the agent can ``session/load`` them (replaying the history as ``user_message_chunk`` /
``agent_message_chunk`` / ``agent_thought_chunk``) and ``session/list`` them (with ``cwd``,
``title`` = the first prompt, ``updatedAt``; ``--page-size N`` pages with ``nextCursor``).

Capabilities: ``loadSession`` (unless ``--no-load``), ``sessionCapabilities.list`` (unless
``--no-list``), ``mcpCapabilities.http`` and ``sse`` (unless ``--no-http-mcp``). Every session
has two select config options, ``model`` (``fake-small`` | ``fake-large``) and ``mode``
(``ask`` | ``code``), returned by ``session/new`` / ``session/load``; ``session/set_config_option``
with another id or value is a JSON-RPC error (-32602).

The first word of the prompt text picks what the turn does; the answer text goes out as
``agent_message_chunk`` updates, one per word (each word followed by a space), unless said
otherwise; every turn ends with ``stopReason: end_turn`` unless said otherwise.

==================  ================================================================================
prompt              turn
==================  ================================================================================
(anything else)     ``echo: <input>``
``think X``         ``agent_thought_chunk`` with ``X``, then ``echo: <input>``
``plan``            a ``plan`` update (two entries), then ``echo: plan``
``tool [T]``        ``tool_call`` ``t1`` (title T, default ``demo tool``, pending), then
                    ``session/request_permission`` with options ``ok`` (allow_once) and ``no``
                    (reject_once), then ``tool_call_update`` (completed when ``ok`` was selected,
                    else failed), then one chunk ``permission=<outcome as compact JSON>``
``mcp``             one chunk: the session's ``mcpServers`` as received (compact JSON list)
``env [NAMES...]``  one chunk: ``{"env": {name: value or null}, "argv": [...], "cwd": ...}``;
                    default names OPENAI_BASE_URL OPENAI_API_KEY ANTHROPIC_BASE_URL
                    ANTHROPIC_API_KEY OPENCODE_CONFIG_CONTENT AGW_ACP_SESSION_TOKEN
``config``          one chunk: the session's config values as JSON ``{"model":..,"mode":..}``
``llm [TEXT]``      POST ``$OPENAI_BASE_URL/chat/completions`` (``Authorization: Bearer
                    $OPENAI_API_KEY``, ``X-Agw-Acp-Session`` from the ``agw`` MCP server's headers
                    or ``$AGW_ACP_SESSION_TOKEN``; model = the ``model`` config value), one chunk
                    ``llm: <answer text>`` or ``llm error: <status> <body>``
``crash``           one chunk ``crashing``, a stderr line ``fake agent: crash requested``, exit 3
``slow N [S]``      N chunks ``tick<i>`` S seconds apart (default 0.5); ``session/cancel`` stops
                    it: ``stopReason: cancelled``
``usage``           a ``usage_update`` (used 42, size 1000), then ``echo: usage``; the prompt
                    result carries ``usage`` {totalTokens 10, inputTokens 7, outputTokens 3}
``meta``            ``available_commands_update``, ``session_info_update`` (title ``fake title``),
                    ``current_mode_update`` (``code``), ``config_option_update``, ``usage_update``,
                    then ``echo: meta``
``tail``            chunk ``before``, the result, then chunks ``after1`` / ``after2`` 100 ms and
                    200 ms after the result (for tail draining)
``fsread PATH``     ``fs/read_text_file`` → one chunk with the content, or ``fs error: <code>
                    <message>``
``fswrite PATH T``  ``fs/write_text_file`` with T (the rest of the input) → ``written`` or ``fs
                    error: <code> <message>``
``term``            ``terminal/create`` (``echo hi``) → ``terminal error: <code> <message>`` (or
                    ``terminal: <id>`` if a client ever served it)
``big N``           one chunk of N bytes (``x`` repeated)
``flood N [SIZE]``  N chunks of SIZE bytes each (default 1024; ``f`` repeated) as fast as the
                    pipe takes them (a client that does not read must not make the gateway
                    buffer them), then ``echo: flood``
``asks N``          N ``session/request_permission`` requests at once (tool calls ``a0``...), then
                    one chunk ``{"answered": <answers>, "refused": <JSON-RPC errors>}``
``stderr T``        writes T on stderr, then ``echo: <input>``
==================  ================================================================================

Every process of the fake leaves an empty file ``<state>/pids/<pid>`` when it starts (tests use
it to check that no process group survives).

Other flags: ``--hang-initialize`` (``initialize`` never answers), ``--exit-on-start CODE``
(writes ``fake agent: exit on start`` on stderr and exits before reading anything),
``--spawn-child`` (starts a ``sleep``-ing child at start, in the agent's own process group: what
an npm wrapper leaves behind when only the direct child is killed; its pid is written to stderr
as ``child <pid>``). Unknown arguments (codex-style ``-c key=value``) are accepted and ignored;
``env`` reports them in ``argv``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
from acp import (
    Agent,
    InitializeResponse,
    LoadSessionResponse,
    NewSessionResponse,
    PromptResponse,
    RequestError,
    SetSessionConfigOptionResponse,
    plan_entry,
    run_agent,
    start_tool_call,
    text_block,
    update_agent_message,
    update_agent_thought_text,
    update_plan,
    update_tool_call,
    update_user_message_text,
)
from acp.helpers import update_available_commands, update_current_mode
from acp.schema import (
    AgentCapabilities,
    AvailableCommand,
    ConfigOptionUpdate,
    Implementation,
    ListSessionsResponse,
    McpCapabilities,
    PermissionOption,
    SessionCapabilities,
    SessionConfigOptionSelect,
    SessionConfigSelectOption,
    SessionInfo,
    SessionInfoUpdate,
    SessionListCapabilities,
    ToolCallUpdate,
    Usage,
    UsageUpdate,
)

CONFIG_VALUES = {"model": ["fake-small", "fake-large"], "mode": ["ask", "code"]}
DEFAULT_ENV_NAMES = (
    "OPENAI_BASE_URL",
    "OPENAI_API_KEY",
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_API_KEY",
    "OPENCODE_CONFIG_CONTENT",
    "AGW_ACP_SESSION_TOKEN",
)


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


class Session:
    def __init__(self, sid: str, cwd: str, state_dir: Path) -> None:
        self.id = sid
        self.cwd = cwd
        self.path = state_dir / f"{sid}.json"
        self.history: list[list[str]] = []  # [role, text]: user | agent | thought
        self.title = ""
        self.updated_at = now_iso()
        self.config = {"model": "fake-small", "mode": "ask"}
        self.mcp_servers: list[dict[str, Any]] = []
        self.cancelled = asyncio.Event()

    def save(self) -> None:
        self.updated_at = now_iso()
        data = {
            "sessionId": self.id,
            "cwd": self.cwd,
            "title": self.title,
            "updatedAt": self.updated_at,
            "history": self.history,
            "config": self.config,
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.path)

    @classmethod
    def load(cls, path: Path) -> Session:
        data = json.loads(path.read_text())
        session = cls(data["sessionId"], data["cwd"], path.parent)
        session.history = data.get("history", [])
        session.title = data.get("title", "")
        session.updated_at = data.get("updatedAt", now_iso())
        session.config.update(data.get("config", {}))
        return session

    def config_options(self) -> list[SessionConfigOptionSelect]:
        return [
            SessionConfigOptionSelect(
                id=cid,
                name=cid.title(),
                category=cid,
                type="select",
                current_value=self.config[cid],
                options=[SessionConfigSelectOption(value=v, name=v) for v in values],
            )
            for cid, values in CONFIG_VALUES.items()
        ]


class FakeAgent(Agent):
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.state = Path(args.state)
        self.state.mkdir(parents=True, exist_ok=True)
        self.sessions: dict[str, Session] = {}
        self.client_caps: dict[str, Any] = {}
        self.tasks: set[asyncio.Task[Any]] = set()

    def on_connect(self, conn: Any) -> None:
        self.conn = conn

    # ------------------------------------------------------------------------------ lifecycle

    async def initialize(
        self,
        protocol_version: int,
        client_capabilities: Any = None,
        client_info: Any = None,
        **kw: Any,
    ) -> InitializeResponse:
        if self.args.hang_initialize:
            await asyncio.Event().wait()
        if client_capabilities is not None:
            self.client_caps = client_capabilities.model_dump(by_alias=True, exclude_none=True)
        http = not self.args.no_http_mcp
        return InitializeResponse(
            protocol_version=protocol_version,
            agent_capabilities=AgentCapabilities(
                load_session=not self.args.no_load,
                mcp_capabilities=McpCapabilities(http=http, sse=http),
                session_capabilities=SessionCapabilities(
                    list=None if self.args.no_list else SessionListCapabilities()
                ),
            ),
            agent_info=Implementation(name="fake-acp-agent", version="1.0"),
        )

    async def new_session(
        self, cwd: str, additional_directories: Any = None, mcp_servers: Any = None, **kw: Any
    ) -> NewSessionResponse:
        session = Session("sess-" + uuid.uuid4().hex[:16], cwd, self.state)
        session.mcp_servers = dump_servers(mcp_servers)
        self.sessions[session.id] = session
        session.save()
        return NewSessionResponse(session_id=session.id, config_options=session.config_options())

    async def load_session(
        self,
        cwd: str,
        session_id: str,
        mcp_servers: Any = None,
        additional_directories: Any = None,
        **kw: Any,
    ) -> LoadSessionResponse:
        if self.args.no_load:
            raise RequestError.method_not_found("session/load")
        path = self.state / f"{session_id}.json"
        if not path.exists():
            raise RequestError.resource_not_found(session_id)
        session = Session.load(path)
        session.cwd = cwd
        session.mcp_servers = dump_servers(mcp_servers)
        self.sessions[session.id] = session
        for role, text in session.history:
            if role == "user":
                update: Any = update_user_message_text(text)
            elif role == "thought":
                update = update_agent_thought_text(text)
            else:
                update = update_agent_message(text_block(text))
            await self.conn.session_update(session.id, update)
        return LoadSessionResponse(config_options=session.config_options())

    async def list_sessions(
        self, cwd: str | None = None, cursor: str | None = None, **kw: Any
    ) -> ListSessionsResponse:
        if self.args.no_list:
            raise RequestError.method_not_found("session/list")
        found = []
        for path in sorted(self.state.glob("*.json")):
            with contextlib.suppress(ValueError, KeyError, OSError):
                found.append(Session.load(path))
        found.sort(key=lambda s: s.id)
        start = int(cursor) if cursor else 0
        size = self.args.page_size or len(found) or 1
        page = found[start : start + size]
        more = start + size < len(found)
        return ListSessionsResponse(
            sessions=[
                SessionInfo(
                    session_id=s.id, cwd=s.cwd, title=s.title or None, updated_at=s.updated_at
                )
                for s in page
            ],
            next_cursor=str(start + size) if more else None,
        )

    async def set_config_option(
        self, config_id: str, session_id: str, value: str | bool, **kw: Any
    ) -> SetSessionConfigOptionResponse:
        session = self._session(session_id)
        if config_id not in CONFIG_VALUES:
            raise RequestError.invalid_params({"message": f"unknown config option {config_id}"})
        if value not in CONFIG_VALUES[config_id]:
            raise RequestError.invalid_params(
                {"message": f"invalid value {value!r} for config option {config_id}"}
            )
        session.config[config_id] = str(value)
        session.save()
        return SetSessionConfigOptionResponse(config_options=session.config_options())

    async def cancel(self, session_id: str, **kw: Any) -> None:
        session = self.sessions.get(session_id)
        if session is not None:
            session.cancelled.set()

    def _session(self, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None:
            raise RequestError.resource_not_found(session_id)
        return session

    # ----------------------------------------------------------------------------------- turn

    async def say(self, session: Session, text: str, *, split: bool = True) -> None:
        session.history.append(["agent", text])
        parts = [w + " " for w in text.split(" ")] if split else [text]
        for part in parts:
            await self.conn.session_update(session.id, update_agent_message(text_block(part)))

    async def prompt(self, session_id: str, prompt: list[Any], **kw: Any) -> PromptResponse:
        session = self._session(session_id)
        session.cancelled.clear()
        text = " ".join(getattr(b, "text", "") for b in prompt if getattr(b, "text", None))
        session.history.append(["user", text])
        if not session.title:
            session.title = text[:40]
        words = text.split()
        command, rest = (words[0], text.split(None, 1)[1:]) if words else ("", [])
        arg = rest[0] if rest else ""
        stop = "end_turn"
        usage = None
        try:
            stop, usage = await self.run_command(session, command, arg, text)
        finally:
            session.save()
        return PromptResponse(stop_reason=stop, usage=usage)

    async def run_command(
        self, session: Session, command: str, arg: str, text: str
    ) -> tuple[str, Usage | None]:
        sid = session.id
        if command == "think":
            session.history.append(["thought", arg])
            await self.conn.session_update(sid, update_agent_thought_text(arg))
        elif command == "plan":
            entries = [
                plan_entry("look around", priority="high", status="completed"),
                plan_entry("answer", priority="medium", status="in_progress"),
            ]
            await self.conn.session_update(sid, update_plan(entries))
        elif command == "tool":
            return await self.tool(session, arg or "demo tool"), None
        elif command == "mcp":
            await self.say(session, compact(session.mcp_servers), split=False)
            return "end_turn", None
        elif command == "env":
            names = arg.split() or list(DEFAULT_ENV_NAMES)
            report = {
                "env": {n: os.environ.get(n) for n in names},
                "argv": sys.argv[1:],
                "cwd": os.getcwd(),
            }
            await self.say(session, compact(report), split=False)
            return "end_turn", None
        elif command == "config":
            await self.say(session, compact(session.config), split=False)
            return "end_turn", None
        elif command == "llm":
            await self.say(session, await self.llm(session, arg or "hello"), split=False)
            return "end_turn", None
        elif command == "crash":
            await self.say(session, "crashing")
            session.save()
            await asyncio.sleep(0.1)  # let the chunk leave
            sys.stderr.write("fake agent: crash requested\n")
            sys.stderr.flush()
            os._exit(3)
        elif command == "slow":
            parts = arg.split()
            count = int(parts[0]) if parts else 3
            every = float(parts[1]) if len(parts) > 1 else 0.5
            for i in range(count):
                if session.cancelled.is_set():
                    return "cancelled", None
                await self.say(session, f"tick{i}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(session.cancelled.wait(), every)
            if session.cancelled.is_set():
                return "cancelled", None
            return "end_turn", None
        elif command == "usage":
            await self.conn.session_update(
                sid, UsageUpdate(session_update="usage_update", used=42, size=1000)
            )
            await self.say(session, f"echo: {text}")
            return "end_turn", Usage(total_tokens=10, input_tokens=7, output_tokens=3)
        elif command == "meta":
            await self.conn.session_update(
                sid,
                update_available_commands(
                    [AvailableCommand(name="review", description="review the code")]
                ),
            )
            await self.conn.session_update(
                sid,
                SessionInfoUpdate(
                    session_update="session_info_update", title="fake title", updated_at=now_iso()
                ),
            )
            session.config["mode"] = "code"
            await self.conn.session_update(sid, update_current_mode("code"))
            await self.conn.session_update(
                sid,
                ConfigOptionUpdate(
                    session_update="config_option_update", config_options=session.config_options()
                ),
            )
            await self.conn.session_update(
                sid, UsageUpdate(session_update="usage_update", used=7, size=1000)
            )
        elif command == "tail":
            await self.say(session, "before")
            self.later(self.tail(session))
            return "end_turn", None
        elif command == "fsread":
            try:
                got = await self.conn.read_text_file(session_id=sid, path=arg)
                answer = got.content
            except Exception as exc:
                answer = f"fs error: {getattr(exc, 'code', '?')} {exc}"
            await self.say(session, answer, split=False)
            return "end_turn", None
        elif command == "fswrite":
            path, _, content = arg.partition(" ")
            try:
                await self.conn.write_text_file(session_id=sid, path=path, content=content)
                answer = "written"
            except Exception as exc:
                answer = f"fs error: {getattr(exc, 'code', '?')} {exc}"
            await self.say(session, answer, split=False)
            return "end_turn", None
        elif command == "term":
            try:
                term = await self.conn.create_terminal(session_id=sid, command="echo", args=["hi"])
                answer = f"terminal: {term.terminal_id}"
            except Exception as exc:
                answer = f"terminal error: {getattr(exc, 'code', '?')} {exc}"
            await self.say(session, answer, split=False)
            return "end_turn", None
        elif command == "big":
            await self.conn.session_update(sid, update_agent_message(text_block("x" * int(arg))))
            return "end_turn", None
        elif command == "flood":
            parts = arg.split()
            count = int(parts[0]) if parts else 1000
            size = int(parts[1]) if len(parts) > 1 else 1024
            update = update_agent_message(text_block("f" * size))
            for _ in range(count):
                if session.cancelled.is_set():
                    return "cancelled", None
                await self.conn.session_update(sid, update)
        elif command == "asks":
            outcomes = await asyncio.gather(
                *(self.ask(sid, f"a{i}") for i in range(int(arg or "100")))
            )
            tally = {"answered": outcomes.count(True), "refused": outcomes.count(False)}
            await self.say(session, compact(tally), split=False)
            return "end_turn", None
        elif command == "stderr":
            sys.stderr.write(arg + "\n")
            sys.stderr.flush()
        await self.say(session, f"echo: {text}")
        return "end_turn", None

    async def tool(self, session: Session, title: str) -> str:
        sid = session.id
        await self.conn.session_update(
            sid,
            start_tool_call("t1", title, kind="execute", status="pending", raw_input={"x": 1}),
        )
        perm = await self.conn.request_permission(
            session_id=sid,
            tool_call=ToolCallUpdate(tool_call_id="t1", title=title),
            options=[
                PermissionOption(option_id="ok", name="Allow", kind="allow_once"),
                PermissionOption(option_id="no", name="Reject", kind="reject_once"),
            ],
        )
        outcome = perm.outcome.model_dump(by_alias=True, exclude_none=True)
        allowed = outcome.get("outcome") == "selected" and outcome.get("optionId") == "ok"
        await self.conn.session_update(
            sid, update_tool_call("t1", status="completed" if allowed else "failed")
        )
        await self.say(session, "permission=" + compact(outcome), split=False)
        if session.cancelled.is_set():
            return "cancelled"
        return "end_turn"

    async def ask(self, sid: str, tool_call_id: str) -> bool:
        """One permission request: True when answered, False when refused with an error."""
        try:
            await self.conn.request_permission(
                session_id=sid,
                tool_call=ToolCallUpdate(tool_call_id=tool_call_id, title="ask"),
                options=[PermissionOption(option_id="ok", name="Allow", kind="allow_once")],
            )
        except Exception:
            return False
        return True

    async def llm(self, session: Session, text: str) -> str:
        base = os.environ.get("OPENAI_BASE_URL", "").rstrip("/")
        if not base:
            return "llm error: no OPENAI_BASE_URL"
        token = os.environ.get("AGW_ACP_SESSION_TOKEN", "")
        for server in session.mcp_servers:
            if server.get("name") == "agw":
                for header in server.get("headers", []):
                    if header.get("name", "").lower() == "x-agw-acp-session":
                        token = header.get("value", "")
        headers = {"Authorization": f"Bearer {os.environ.get('OPENAI_API_KEY', '')}"}
        if token:
            headers["X-Agw-Acp-Session"] = token
        body = {
            "model": session.config["model"],
            "messages": [{"role": "user", "content": text}],
        }
        async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
            try:
                r = await client.post(f"{base}/chat/completions", json=body, headers=headers)
            except httpx.HTTPError as exc:
                return f"llm error: 0 {exc!r}"
        if r.status_code != 200:
            return f"llm error: {r.status_code} {r.text[:300]}"
        return "llm: " + str(r.json()["choices"][0]["message"]["content"])

    async def tail(self, session: Session) -> None:
        for i in (1, 2):
            await asyncio.sleep(0.1)
            await self.say(session, f"after{i}")
        session.save()

    def later(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


def dump_servers(servers: Any) -> list[dict[str, Any]]:
    return [s.model_dump(by_alias=True, exclude_none=True) for s in (servers or [])]


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--state", default=os.environ.get("FAKE_ACP_STATE", ".fake-acp-state"))
    parser.add_argument("--no-load", action="store_true")
    parser.add_argument("--no-list", action="store_true")
    parser.add_argument("--no-http-mcp", action="store_true")
    parser.add_argument("--page-size", type=int, default=0)
    parser.add_argument("--hang-initialize", action="store_true")
    parser.add_argument("--exit-on-start", type=int, default=None)
    parser.add_argument("--spawn-child", action="store_true")
    args, _unknown = parser.parse_known_args()  # codex-style -c args pass through
    pids = Path(args.state) / "pids"
    pids.mkdir(parents=True, exist_ok=True)
    (pids / str(os.getpid())).touch()
    if args.exit_on_start is not None:
        sys.stderr.write("fake agent: exit on start\n")
        sys.stderr.flush()
        sys.exit(args.exit_on_start)
    if args.spawn_child:
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(300)"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        sys.stderr.write(f"child {child.pid}\n")
        sys.stderr.flush()
    asyncio.run(run_agent(FakeAgent(args)))  # type: ignore[abstract]


if __name__ == "__main__":
    main()
