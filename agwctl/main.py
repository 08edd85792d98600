"""agwctl: the management CLI of agw, a client of the admin API (only `gateway migrate-store`,
which moves a stopped deployment's store, opens stores itself).

    agwctl [-o table|json] gateway [--admin-addr URL] [--admin-basic-auth USER:PASS]
           [--admin-header 'Name: value']... COMMAND ...

As with the Go agwctl's persistent flags, ``-o`` and the ``gateway`` connection options may also
be given after the subcommand (``agwctl gateway provider list -o json``).
"""

import os
import sys
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated

import typer

from agw.envfile import load_env_files
from agwctl import acp, agents, authz, bundle, chat, limits, mcp, metrics, resources, store
from agwctl.client import (
    DEFAULT_ADMIN_ADDR,
    AdminSettings,
    CliError,
    Ctl,
    parse_basic_auth,
    parse_header,
    password_file_auth,
)


class Output(StrEnum):
    table = "table"
    json = "json"


def create_app() -> typer.Typer:
    app = typer.Typer(
        name="agwctl",
        no_args_is_help=True,
        add_completion=False,
        rich_markup_mode=None,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    @app.callback()
    def root(
        ctx: typer.Context,
        output: Annotated[
            Output,
            typer.Option("-o", "--output", help="Output format of list commands and reports."),
        ] = Output.table,
    ) -> None:
        """Manage an agw gateway through its admin API.

        .env.local and .env in the current directory are loaded first (they never override
        variables already set). -o and the gateway connection options may also be given after
        the subcommand, as in: agwctl gateway provider list -o json.
        """
        ctx.obj = Ctl(output=output.value)

    gateway = typer.Typer(
        help="Talk to a gateway's admin API (and validate bundle files locally).",
        no_args_is_help=True,
        rich_markup_mode=None,
    )

    @gateway.callback()
    def gateway_options(
        ctx: typer.Context,
        admin_addr: Annotated[
            str,
            typer.Option(
                "--admin-addr",
                envvar="AGW_ADMIN_ADDR",
                metavar="URL",
                help="Admin API address.",
            ),
        ] = DEFAULT_ADMIN_ADDR,
        admin_basic_auth: Annotated[
            str | None,
            typer.Option(
                "--admin-basic-auth",
                envvar="AGW_ADMIN_BASIC_AUTH",
                metavar="USER:PASSWORD",
                help="Basic Auth credentials for the admin API (default: the password file "
                "AGW_ADMIN_PASSWORD_FILE, else ./data/admin-password for a local gateway).",
                show_default=False,
            ),
        ] = None,
        admin_header: Annotated[
            list[str] | None,
            typer.Option(
                "--admin-header",
                metavar="'NAME: VALUE'",
                help="Extra header on every admin request (repeatable; e.g. for proxy auth).",
                show_default=False,
            ),
        ] = None,
    ) -> None:
        ctl = ctx.find_object(Ctl) or Ctl()
        ctl.admin = AdminSettings(
            addr=admin_addr,
            basic_auth=parse_basic_auth(admin_basic_auth)
            if admin_basic_auth
            else password_file_auth(admin_addr),
            headers=tuple(parse_header(h) for h in admin_header or ()),
        )
        ctx.obj = ctl

    bundle.register(gateway)
    apps = resources.register(gateway)
    mcp.register(gateway, apps)
    acp.register(gateway, apps)
    agents.register(apps)
    limits.register(apps)
    metrics.register(gateway)
    authz.register(gateway)
    store.register(gateway)
    app.add_typer(gateway, name="gateway")
    chat.register(app)
    return app


_ROOT_OPTIONS = ("-o", "--output")
_GATEWAY_OPTIONS = ("--admin-addr", "--admin-basic-auth", "--admin-header")


def hoist_persistent(args: Sequence[str]) -> list[str]:
    """Move ``-o`` to the front and the ``gateway`` connection options right after
    ``gateway``, wherever they were given (cobra's persistent flags)."""
    root: list[str] = []
    gateway: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        name = arg.partition("=")[0]
        target = None
        if name in _ROOT_OPTIONS or (arg.startswith("-o") and not arg.startswith("--")):
            target = root
        elif name in _GATEWAY_OPTIONS:
            target = gateway
        if target is None:
            rest.append(arg)
        elif "=" in arg or arg not in (*_ROOT_OPTIONS, *_GATEWAY_OPTIONS):
            target.append(arg)  # --name=value or -oVALUE
        elif i + 1 < len(args):
            target.extend(args[i : i + 2])
            i += 1
        else:
            rest.append(arg)  # no value: let the parser say so
        i += 1
    if gateway and rest[:1] == ["gateway"]:
        rest[1:1] = gateway
    else:
        rest += gateway
    return root + rest


def main(argv: Sequence[str] | None = None) -> None:
    load_env_files()
    args = hoist_persistent(sys.argv[1:] if argv is None else argv)
    try:
        create_app()(args=args, prog_name="agwctl")
    except CliError as exc:
        sys.stderr.write(f"agwctl: {exc.message}\n")
        sys.exit(1)
    except Exception as exc:  # a bug, not a usage problem: still one line unless debugging
        if os.environ.get("AGWCTL_DEBUG"):
            raise
        sys.stderr.write(f"agwctl: internal error: {type(exc).__name__}: {exc}\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
