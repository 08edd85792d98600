"""``.env.local`` then ``.env``: KEY=VALUE lines loaded into the environment without overriding
what is already set (as godotenv does for the Go commands)."""

from __future__ import annotations

import os
from pathlib import Path


def parse_env_file(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
            if raw.strip().split("=", 1)[1].strip().startswith('"'):
                value = value.replace("\\n", "\n").replace('\\"', '"')
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key] = value
    return values


def load_env_files(directory: Path | None = None) -> list[Path]:
    loaded = []
    base = directory or Path.cwd()
    for name in (".env.local", ".env"):
        path = base / name
        if path.is_file():
            for key, value in parse_env_file(path.read_text()).items():
                os.environ.setdefault(key, value)
            loaded.append(path)
    return loaded
