"""The installed agw version, read once: the CLI prints it, and upstream requests (user agent, MCP
and ACP client info) and trace resources carry it."""

from __future__ import annotations

from importlib import metadata


def _installed() -> str:
    try:
        return metadata.version("agw")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0"


VERSION = _installed()
