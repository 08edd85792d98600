"""``agwctl gateway validate|apply|export``: GatewayBundle files against the admin API.

``validate`` is local. ``apply`` validates locally first (nothing is sent when the file is
invalid), then hands the whole bundle to ``POST /admin/gateway/apply``, which plans and commits
it in one transaction (all or nothing). ``export`` writes the live configuration as a bundle.
"""

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from agwctl import render
from agwctl.client import CliError, error_of
from agwctl.resources import admin, state

if TYPE_CHECKING:
    from agw.config.bundle import Bundle
    from agw.errors import Problem

# agw.config (pydantic models) is imported where it is used: the other commands start faster.

FileOpt = Annotated[
    str,
    typer.Option(
        "-f",
        "--file",
        metavar="FILE",
        help="GatewayBundle YAML file ('-' for stdin).",
        show_default=False,
    ),
]


def read_text(file: str) -> str:
    if file == "-":
        return sys.stdin.read()
    try:
        return Path(file).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {file}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise CliError(f"cannot read {file}: not UTF-8 text ({exc.reason})") from None


def _problem_json(p: "Problem") -> dict[str, Any]:
    out: dict[str, Any] = {"path": p.path, "message": p.message}
    if p.line is not None:
        out["line"] = p.line
    return out


def load(ctx: typer.Context, file: str) -> "Bundle":
    """Parse and validate a bundle file; on problems, report them all and exit 1."""
    from agw.config.loader import load_bundle_text
    from agw.errors import ConfigInvalid, Problem

    text = read_text(file)
    try:
        return load_bundle_text(text, os.environ, partial=True)
    except ConfigInvalid as exc:
        problems = exc.problems or [Problem("", str(exc))]
        if state(ctx).json:
            problems_json = [_problem_json(p) for p in problems]
            render.print_json({"status": "error", "file": file, "problems": problems_json})
        n = len(problems)
        lines = [f"agwctl: {file}: invalid gateway bundle ({n} problem{'s' if n != 1 else ''}):"]
        lines += [f"  {p}" for p in problems]
        typer.echo("\n".join(lines), err=True)
        raise typer.Exit(1) from None


def validate(ctx: typer.Context, file: FileOpt) -> None:
    """Check a GatewayBundle file locally (no gateway needed)."""
    from agw.config.loader import bundle_counts

    bundle = load(ctx, file)
    if state(ctx).json:
        render.print_json({"status": "ok", "file": file, "counts": bundle_counts(bundle)})
    else:
        typer.echo(f"gateway bundle is valid: {file}")


def apply_payload(bundle: "Bundle") -> dict[str, Any]:
    """The bundle as JSON: the families the file names (and only those, so --prune leaves the
    others alone), each object fully normalised."""
    from agw.config import families

    out: dict[str, Any] = {"apiVersion": bundle.apiVersion, "kind": bundle.kind}
    for family in families.BUNDLE_FAMILIES:
        key = family.bundle_key
        if key is not None and key in bundle.model_fields_set:
            out[key] = [obj.model_dump(mode="json") for obj in getattr(bundle, key)]
    return out


def _summary(counts: dict[str, Any], *, prune: bool, dry_run: bool) -> str:
    line = "summary: " + " ".join(
        f"{name}={int(counts.get(name, 0))}" for name in ("create", "update", "skip", "error")
    )
    if prune:
        line += f" delete={int(counts.get('delete', 0))}"
    if dry_run:
        line += " (dry run)"
    return line


def apply(
    ctx: typer.Context,
    file: FileOpt,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Plan and report, change nothing.")
    ] = False,
    prune: Annotated[
        bool,
        typer.Option(
            "--prune",
            help="Also delete stored objects of the families present in the file that the "
            "file does not list (static objects are never deleted).",
        ),
    ] = False,
) -> None:
    """Create, update or skip every object of a GatewayBundle file, all or nothing."""
    bundle = load(ctx, file)
    body = {"bundle": apply_payload(bundle), "dry_run": dry_run, "prune": prune}
    path = "/admin/gateway/apply"
    with admin(ctx) as client:
        status, data = client.send("POST", path, body=body)
    if not (isinstance(data, dict) and isinstance(data.get("actions"), list)):
        raise CliError(f"POST {path}: {status} {error_of(data)}")
    actions = [a for a in data["actions"] if isinstance(a, dict)]
    raw_counts = data.get("counts")
    counts: dict[str, Any] = raw_counts if isinstance(raw_counts, dict) else {}
    ok = status < 400 and data.get("status") == "ok"
    if state(ctx).json:
        render.print_json(
            {
                "file": file,
                "status": "ok" if ok else "error",
                "dry_run": bool(data.get("dry_run", dry_run)),
                "actions": actions,
                "counts": counts,
            }
        )
    else:
        lines = [f"gateway apply: {file}"]
        for a in actions:
            line = f"  {a.get('action')} {a.get('kind')} {a.get('id')}"
            if a.get("error"):
                line += f": {a['error']}"
            lines.append(line)
        lines.append(_summary(counts, prune=prune, dry_run=dry_run))
        typer.echo("\n".join(lines))
    if not ok:
        errors = int(counts.get("error", 0))
        if errors:
            raise CliError(f"gateway apply finished with {errors} error(s)")
        raise CliError(f"gateway apply failed: {error_of(data)}")


def _bundle_order(data: dict[str, Any]) -> dict[str, Any]:
    """apiVersion, kind, then the families in apply order, then anything else as received."""
    from agw.config import families

    head = ["apiVersion", "kind", *(f.bundle_key for f in families.BUNDLE_FAMILIES)]
    ordered = {key: data[key] for key in head if key is not None and key in data}
    return ordered | {k: v for k, v in data.items() if k not in ordered}


def export(
    ctx: typer.Context,
    file: Annotated[
        str | None,
        typer.Option(
            "-f", "--file", metavar="FILE", help="Write the bundle here (default: stdout)."
        ),
    ] = None,
    include_secrets: Annotated[
        bool,
        typer.Option(
            "--include-secrets",
            help="Export secrets in clear. Without it they read <redacted>, and applying the "
            "file back keeps the stored values.",
        ),
    ] = False,
) -> None:
    """Write the gateway's configuration as a GatewayBundle YAML file."""
    from agw.config.loader import load_bundle_data
    from agw.errors import ConfigInvalid

    params = {"include_secrets": "true" if include_secrets else "false"}
    with admin(ctx) as client:
        data = client.call("GET", "/admin/gateway/export", params=params)
    try:
        load_bundle_data(data, partial=True)
    except ConfigInvalid as exc:
        typer.echo(f"agwctl: warning: the exported bundle does not validate: {exc}", err=True)
    from agw.config.loader import escape_env

    text = render.to_yaml(_bundle_order(escape_env(data)))
    if file is None or file == "-":
        sys.stdout.write(text)
        return
    try:
        Path(file).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot write {file}: {exc.strerror or exc}") from None
    if state(ctx).json:
        render.print_json({"status": "ok", "file": file})
    else:
        typer.echo(f"gateway bundle exported: {file}")


def register(gateway: typer.Typer) -> None:
    gateway.command("validate")(validate)
    gateway.command("apply")(apply)
    gateway.command("export")(export)
