"""Logging as JSON lines, with secrets scrubbed from every line that leaves the process."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any, TextIO

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
# Credentials known by their shape. Each must start a word (so "task-manager" is no "sk-" key);
# prefixes are case-sensitive, as the providers issue them.
_KEYS = (
    r"vk-[A-Za-z0-9_\-]{16,}",  # agw virtual keys (agw/runtime/state.py)
    r"acps-[0-9a-f]{32}",  # agw's ACP session tokens (X-Agw-Acp-Session)
    r"sk-[A-Za-z0-9_\-]{8,}",  # OpenAI sk-, sk-proj-, sk-svcacct-; Anthropic sk-ant-; DeepSeek
    r"AIza[0-9A-Za-z_\-]{35}",  # Google API keys (Gemini)
    r"xai-[A-Za-z0-9_\-]{20,}",  # xAI
    r"gsk_[A-Za-z0-9]{20,}",  # Groq
    r"(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}",  # AWS access key ids
    r"gh[pousr]_[A-Za-z0-9]{30,}",  # GitHub tokens
    r"github_pat_[A-Za-z0-9_]{22,}",  # GitHub fine-grained tokens
    r"hf_[A-Za-z0-9]{30,}",  # Hugging Face
    r"eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",  # JWTs (OAuth tokens)
    r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}",  # bcrypt hashes (the admin password's)
)
# Credentials known by where they stand: kept is the name (group "keep"), redacted the value.
_NAMES = (
    r"authorization|proxy-authorization|x-api-key|x-goog-api-key|api[_\-]?key|"
    r"(?:access|refresh|id|session|auth)[_\-]?token|client[_\-]?secret|"
    r"aws[_\-]?secret[_\-]?access[_\-]?key|password|passwd|cookie|set-cookie|"
    r"mcp-session-id|x-agw-acp-session"
)
_SECRET = re.compile(
    # every alternative starts with one of these (the names in either case): positions that
    # cannot start a secret are passed over at once, which keeps a log line's scrub near 10 us
    r"(?=[vaAsSxXgheE$bBpPiIcCrRmM?&:])(?:"
    r"(?<![A-Za-z0-9])(?:" + "|".join(_KEYS) + ")"
    # Authorization values: "Bearer <token>", "Basic <base64>"
    r"|(?i:(?<![A-Za-z0-9])(?:bearer|basic)\s+)[A-Za-z0-9+/=._~\-]{8,}"
    # a header, JSON field or form field by name: "x-goog-api-key": "...", api_key=...
    r"|(?P<keep>(?i:(?<![A-Za-z0-9_\-])(?:" + _NAMES + r"))(?:\\*[\"'])?\s*[:=]\s*(?:\\*[\"'])?)"
    r"(?:[A-Za-z]+\s+)?[^\s\"'\\&,;]+"
    # a query parameter: Gemini's ?key=, ?access_token=
    r"|(?P<qkeep>[?&](?:key|api_key|token|access_token)=)[^\s\"'\\&#]+"
    # credentials in a URL: scheme://user:password@host (everything before the last "@")
    r"|(?P<ukeep>://)[^\s/?#\"'<>]*@"
    r")"
)
_REDACTED = "<redacted>"


def _replace(match: re.Match[str]) -> str:
    keep = match["keep"] or match["qkeep"]
    if keep:
        return keep + _REDACTED
    if match["ukeep"]:
        return "://" + _REDACTED + "@"
    return _REDACTED


def scrub(text: str) -> str:
    """``text`` with every credential it shows replaced by ``<redacted>`` (docs/security.md)."""
    return _SECRET.sub(_replace, text)


def redact_url(url: str) -> str:
    """``url`` without the user and password it may carry (``http://<redacted>@host/...``)."""
    return _SECRET.sub(_replace, url) if "@" in url or "key=" in url else url


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
