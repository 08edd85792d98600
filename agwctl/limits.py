"""``agwctl gateway limits status|reset``: what each limit has counted per subject, and
forgetting it (``GET /admin/limits``, ``POST /admin/limits/{id}/reset``). The group's
list/get/delete/enable/disable come from :mod:`agwctl.resources`.

No ``from __future__ import annotations`` here: typer reads the ``Annotated`` parameters.
"""

import sys
from typing import Annotated, Any

import typer

from agwctl import render
from agwctl.client import segment
from agwctl.resources import admin, show_call, state

PATH = "/admin/limits"
STATUS_HEADERS = ("LIMIT", "SUBJECT", "METER", "USED", "IN-FLIGHT", "CAP", "REMAINING", "RESETS-AT")


def status_rows(items: list[dict[str, Any]]) -> list[list[str]]:
    """One row per limit, subject and capped meter; a limit with no subject yet: one row."""
    rows: list[list[str]] = []
    for item in items:
        found = item.get("caps")
        caps: dict[str, Any] = found if isinstance(found, dict) else {}
        lid = str(item.get("id"))
        if item.get("disabled"):
            lid += " (disabled)"
        elif item.get("enforce") is False:
            lid += " (shadow)"
        subjects = [s for s in item.get("subjects") or [] if isinstance(s, dict)]
        if not subjects:
            for meter, cap in caps.items():
                rows.append([lid, "-", meter, "-", "-", render.cell(cap), "-", "-"])
            continue
        for subj in subjects:
            for meter, cap in caps.items():
                rows.append(
                    [
                        lid,
                        render.cell(subj.get("subject")),
                        meter,
                        render.cell(render.dig(subj, "used", meter)),
                        render.cell(render.dig(subj, "in_flight", meter)),
                        render.cell(cap),
                        render.cell(render.dig(subj, "remaining", meter)),
                        render.cell(subj.get("resets_at") or "never"),
                    ]
                )
    return rows


def _more(items: list[dict[str, Any]]) -> None:
    for item in items:
        shown = len(item.get("subjects") or [])
        total = item.get("subjects_total")
        if isinstance(total, int) and total > shown:
            sys.stderr.write(
                f"limit {item.get('id')}: {shown} of {total} subjects shown "
                "(--max-subjects for more)\n"
            )


def add_commands(app: typer.Typer) -> None:
    @app.command(
        "status",
        short_help="Each limit's use per subject (a table; -o json for JSON).",
        help="What each limit has used per subject, what requests in flight hold, what "
        "remains and when it resets (a table; -o json for the admin API's answer). The "
        "busiest subjects come first.",
    )
    def status(
        ctx: typer.Context,
        limit_id: Annotated[
            str | None, typer.Option("--limit-id", help="Only this limit.", show_default=False)
        ] = None,
        subject: Annotated[
            str | None,
            typer.Option(
                "--subject", help="Only this subject (a key id, user, ...).", show_default=False
            ),
        ] = None,
        max_subjects: Annotated[
            int,
            typer.Option("--max-subjects", min=1, max=1000, help="Subjects shown per limit."),
        ] = 100,
    ) -> None:
        params = {"limit": str(max_subjects)}
        if limit_id:
            params["limit_id"] = limit_id
        if subject:
            params["subject"] = subject
        with admin(ctx) as client:
            data = client.call("GET", PATH, params=params)
        items = [i for i in data.get("items") or [] if isinstance(i, dict)]
        if state(ctx).json:
            render.print_json(data)
            return
        render.print_table(STATUS_HEADERS, status_rows(items))
        _more(items)

    @app.command(
        "reset",
        short_help="Forget what a limit has used (every subject's, or one's).",
        help="Forget what a limit has used (every subject's, or one's), as if its window had "
        "just started; requests in flight keep what they hold.",
    )
    def reset(
        ctx: typer.Context,
        limit_id: Annotated[
            str, typer.Argument(metavar="ID", help="The limit id.", show_default=False)
        ],
        subject: Annotated[
            str | None,
            typer.Option("--subject", help="Only this subject's counter.", show_default=False),
        ] = None,
    ) -> None:
        path = f"{PATH}/{segment(limit_id)}/reset"
        if subject is None:
            show_call(ctx, "POST", path)
            return
        with admin(ctx) as client:
            render.print_json(client.call("POST", path, body={"subject": subject}))


def register(apps: dict[str, typer.Typer]) -> None:
    add_commands(apps["limits"])
