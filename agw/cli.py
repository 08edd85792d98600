"""agw: the gateway runtime's command line (``hash-password``, ``validate``, ``version``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from agw.auth.admin_basic import hash_password
from agw.config.loader import load_bundle_text
from agw.envfile import load_env_files
from agw.errors import ConfigInvalid
from agw.version import VERSION

app = typer.Typer(
    add_completion=False,
    rich_markup_mode=None,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.command("hash-password")
def hash_password_cmd(
    plaintext: Annotated[
        str | None,
        typer.Option(
            help="the password to hash; other users can read a command line (ps, /proc), so "
            "prefer the prompt or stdin",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Print the bcrypt hash of a password, for agwd --admin-basic-auth-hash user:HASH.

    The password is asked for (hidden, twice) on a terminal, or read from the first line of
    stdin otherwise: echo "$PW" | agw hash-password. Give agwd the result through the
    environment (AGW_ADMIN_BASIC_AUTH_HASH=user:HASH) rather than on its command line.
    """
    if plaintext is None:
        if sys.stdin.isatty():
            plaintext = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
        else:
            plaintext = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    if not plaintext:
        typer.echo("agw: password must not be empty", err=True)
        raise typer.Exit(1)
    typer.echo(hash_password(plaintext))


@app.command()
def validate(
    config: Annotated[Path, typer.Option("--config", "-c", help="GatewayBundle YAML file")],
) -> None:
    """Validate a GatewayBundle file (structure, env references, cross references)."""
    try:
        load_bundle_text(config.read_text())
    except OSError as exc:
        typer.echo(f"agw: cannot read {config}: {exc.strerror}", err=True)
        raise typer.Exit(1) from None
    except ConfigInvalid as exc:
        typer.echo(f"agw: {config}: {exc.message}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"valid configuration: {config}")


@app.command()
def version() -> None:
    """Print the agw version."""
    typer.echo(f"agw {VERSION}")


def main() -> None:
    load_env_files()
    app(prog_name="agw")


if __name__ == "__main__":
    main()
