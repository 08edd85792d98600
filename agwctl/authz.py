"""``agwctl gateway auth explain``: which principal a credential is, and what a route's
authorization rules say about it, without a request upstream (``POST /admin/auth/explain``).

No ``from __future__ import annotations`` here: typer reads the ``Annotated`` parameters.
"""

import sys
from typing import Annotated, Any

import typer

from agwctl import render
from agwctl.client import CliError
from agwctl.resources import admin, state

EXPLAIN = "/admin/auth/explain"


def _secret(value: str | None, what: str) -> str | None:
    """A credential from the command line, or from standard input when given as ``-`` (so it
    stays out of the process list and the shell history)."""
    if value != "-":
        return value
    text = sys.stdin.readline().strip()
    if not text:
        raise CliError(f"no {what} on standard input")
    return text


def _principal_text(principal: dict[str, Any]) -> str:
    parts = [str(principal.get("kind", ""))]
    for name in ("user", "org", "key_id", "provider_id"):
        if principal.get(name):
            parts.append(f"{name}={principal[name]}")
    if principal.get("groups"):
        parts.append("groups=" + ",".join(str(g) for g in principal["groups"]))
    return " ".join(parts)


def _decision_text(decision: dict[str, Any], authentication: dict[str, Any]) -> str:
    if not authentication.get("ok", True):
        return (
            f"refused by the identity step: {authentication.get('status')} "
            f"{authentication.get('code')}: {authentication.get('message')}"
        )
    verdict = "allowed" if decision.get("allowed") else "denied"
    if decision.get("rule"):
        verdict += f" by {decision['rule']}"
    if decision.get("error"):
        verdict += f" (evaluation error: {decision['error']})"
    elif not decision.get("allowed") and not decision.get("rule"):
        verdict += " (no allow rule matched)"
    if decision.get("stage") == "none":
        verdict += " (the route has no rules)"
    return verdict


def print_explanation(data: dict[str, Any]) -> None:
    sys.stdout.write(f"route:     {data.get('route_id')} ({data.get('kind')})\n")
    sys.stdout.write(f"principal: {_principal_text(data.get('principal') or {})}\n")
    rules = data.get("rules") or []
    if rules:
        rows = [
            [
                str(r.get("rule")),
                str(r.get("result")),
                str(r.get("expression")),
                r.get("error") or "",
            ]
            for r in rules
        ]
        render.print_table(["RULE", "RESULT", "EXPRESSION", "ERROR"], rows)
    decision = data.get("decision") or {}
    authentication = data.get("authentication") or {}
    sys.stdout.write(f"decision:  {_decision_text(decision, authentication)}\n")


def auth_app() -> typer.Typer:
    app = typer.Typer(
        help="Authentication and authorization of data-plane callers.",
        no_args_is_help=True,
        rich_markup_mode=None,
    )

    @app.command(
        "explain",
        help="Show the principal a credential is and which of a route's authorization rules "
        "match it, without sending a request upstream.\n\nGive --token (a JWT) or --key (a "
        "virtual key), or both for a route that requires a key beside a JWT; '-' reads it from "
        "standard input. --model (LLM routes) or --tool (MCP routes) say what the request "
        "would be for.",
    )
    def explain(
        ctx: typer.Context,
        route: Annotated[str, typer.Option("--route", help="The route id.", show_default=False)],
        token: Annotated[
            str | None, typer.Option("--token", help="A bearer JWT ('-': read from stdin).")
        ] = None,
        key: Annotated[
            str | None, typer.Option("--key", help="A virtual key ('-': read from stdin).")
        ] = None,
        model: Annotated[
            str | None, typer.Option("--model", help="The model an LLM request would ask for.")
        ] = None,
        tool: Annotated[
            str | None, typer.Option("--tool", help="The tool an MCP request would call.")
        ] = None,
        service: Annotated[
            str | None,
            typer.Option("--service", help="The MCP service of --tool (a multiplexed route)."),
        ] = None,
        method: Annotated[
            str | None,
            typer.Option("--method", help="The MCP or ACP method (e.g. session/new)."),
        ] = None,
    ) -> None:
        if model is not None and tool is not None:
            raise CliError("give --model or --tool, not both")
        body: dict[str, Any] = {"route_id": route}
        extra = {
            "token": _secret(token, "token"),
            "key": _secret(key, "key"),
            "model": model,
            "tool": tool,
            "service": service,
            "method": method,
        }
        body |= {k: v for k, v in extra.items() if v is not None}
        with admin(ctx) as client:
            data = client.call("POST", EXPLAIN, body=body)
        if state(ctx).json:
            render.print_json(data)
        else:
            print_explanation(data)

    return app


def register(gateway: typer.Typer) -> None:
    gateway.add_typer(auth_app(), name="auth")
