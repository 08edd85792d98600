"""Logging as JSON lines, with secrets scrubbed from every line that leaves the process."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any, TextIO

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
_SECRET = re.compile(
    r"(vk-[A-Za-z0-9_\-]{16,})|(sk-[A-Za-z0-9_\-]{8,})|((?:Basic|Bearer)\s+[A-Za-z0-9+/=._\-]{8,})"
    r"|(\$2[aby]\$\d\d\$[./A-Za-z0-9]{53})",
    re.IGNORECASE,
)


def scrub(text: str) -> str:
    return _SECRET.sub("<redacted>", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return scrub(json.dumps(out, default=str))


def setup_logging(level: str = "info", stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiosqlite logs every statement with its parameters (whole objects, secrets included) at
    # debug; httpx and httpcore log the readiness probe's own requests.
    for noisy in ("aiosqlite", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
