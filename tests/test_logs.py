"""agw.logs's scrubber, one credential format at a time (a pure function, called directly;
tests/llm/test_llm_log_secrets.py sends the same through a real agwd and searches its log)."""

from __future__ import annotations

import io
import json
import logging

import pytest

from agw.logs import JsonFormatter, redact_url, scrub

# (what a log line may hold, the secret in it): made-up values in each format
SHAPED = [
    ("AIzaSyD4n0tAr3alK3yJustTheRightShape012", "AIzaSyD4n0tAr3alK3yJustTheRightShape012"),
    ("sk-ant-api03-abcDEF0123456789_-xyz", "sk-ant-api03-abcDEF0123456789_-xyz"),
    ("sk-ant-oat01-abcDEF0123456789", "sk-ant-oat01-abcDEF0123456789"),
    ("sk-proj-abcDEF0123456789_-xyz", "sk-proj-abcDEF0123456789_-xyz"),
    ("sk-svcacct-abcDEF0123456789", "sk-svcacct-abcDEF0123456789"),
    ("sk-0123456789abcdef", "sk-0123456789abcdef"),
    ("xai-abcDEF0123456789abcdef0123", "xai-abcDEF0123456789abcdef0123"),
    ("gsk_abcDEF0123456789abcdef0123", "gsk_abcDEF0123456789abcdef0123"),
    ("AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
    ("ASIAIOSFODNN7EXAMPLE", "ASIAIOSFODNN7EXAMPLE"),
    ("ghp_abcDEF0123456789abcdef0123456789abcd", "ghp_abcDEF0123456789abcdef0123456789abcd"),
    ("gho_abcDEF0123456789abcdef0123456789abcd", "gho_abcDEF0123456789abcdef0123456789abcd"),
    (
        "github_pat_11ABCDEFG0_abcdefghijklmnopqrstuvwxyz",
        "github_pat_11ABCDEFG0_abcdefghijklmnopqrstuvwxyz",
    ),
    ("hf_abcDEF0123456789abcdef0123456789", "hf_abcDEF0123456789abcdef0123456789"),
    ("vk-" + "aB3_-" * 9, "vk-" + "aB3_-" * 9),  # agw virtual key (43 base64url characters)
    ("acps-" + "0123456789abcdef" * 2, "acps-" + "0123456789abcdef" * 2),  # agw ACP session
    ("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhZ3cifQ.c2lnbmF0dXJlLXBhcnQ", "c2lnbmF0dXJlLXBhcnQ"),
    ("$2b$12$" + "a" * 53, "a" * 53),  # the admin password's bcrypt hash
]
CONTEXT = [
    ("Authorization: Bearer opaque.token-value_1", "opaque.token-value_1"),
    ("authorization: bearer opaque.token-value_1", "opaque.token-value_1"),
    ("Proxy-Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA=="),
    ('{"authorization": "Bearer opaque.token-value_1"}', "opaque.token-value_1"),
    ('{"Authorization": "rawtokenwithoutscheme"}', "rawtokenwithoutscheme"),
    ('{"x-goog-api-key": "opaque-goog-value"}', "opaque-goog-value"),
    ("{'x-goog-api-key': 'opaque-goog-value'}", "opaque-goog-value"),
    ('\\"x-api-key\\": \\"opaque-anthropic-value\\"', "opaque-anthropic-value"),
    ("x-api-key=opaque-value", "opaque-value"),
    ("api_key: opaque-value", "opaque-value"),
    ('"password": "hunter2hunter2"', "hunter2hunter2"),
    ("client_secret=opaque-client-secret", "opaque-client-secret"),
    ("aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCY"),
    ("Mcp-Session-Id: 0123456789abcdef0123456789abcdef", "0123456789abcdef0123456789abcdef"),
    ("X-Agw-Acp-Session: opaque-session", "opaque-session"),
    ("GET /v1beta/models/m:generateContent?alt=sse&key=opaque-query-key", "opaque-query-key"),
    ("https://host/x?access_token=opaque-query-token&y=1", "opaque-query-token"),
    ("proxy http://agw:s3cret-pass@proxy.internal:3128/", "s3cret-pass"),
    ("https://oauth2:tok-123@github.com/org/repo.git", "tok-123"),
    ("https://user:p@ss@host/x", "p@ss"),  # an unencoded "@" in the password
    ("https://tokenonly@host/x", "tokenonly"),
]


@pytest.mark.parametrize(("line", "secret"), SHAPED + CONTEXT)
def test_each_credential_format_is_redacted(line: str, secret: str) -> None:
    for text in (line, f"error: {line} (rejected)", json.dumps({"error": line})):
        out = scrub(text)
        assert secret not in out, out
        assert "<redacted>" in out


@pytest.mark.parametrize(
    "line",
    [
        "task-manager-something ask-questions-tool",  # "sk-" inside words
        "input_tokens=5 output_tokens=6 cached_tokens=1",
        "trace_id=0123456789abcdef0123456789abcdef",
        "upstream oa unreachable: Cannot connect to host 127.0.0.1:9",
        "http://127.0.0.1:8080/v1/chat/completions",
        "the model said: basically fine",
        "route_id=oa provider_id=an status=503",
    ],
)
def test_ordinary_text_is_left_alone(line: str) -> None:
    assert scrub(line) == line


def test_names_are_kept_and_values_redacted() -> None:
    assert scrub('{"x-goog-api-key": "v"}') == '{"x-goog-api-key": "<redacted>"}'
    assert scrub("http://u:p@h:1/v1") == "http://<redacted>@h:1/v1"
    assert scrub("?alt=sse&key=abc") == "?alt=sse&key=<redacted>"


def test_redact_url() -> None:
    assert redact_url("http://u:p@h:1/v1") == "http://<redacted>@h:1/v1"
    assert redact_url("https://api.openai.com/v1") == "https://api.openai.com/v1"


def test_the_formatter_scrubs_messages_extras_and_tracebacks() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.telemetry")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise ValueError("bad key AIzaSyD4n0tAr3alK3yJustTheRightShape012")
        except ValueError:
            logger.exception(
                "upstream_failed sk-proj-abcDEF0123456789",
                extra={"url": "http://agw:s3cret-pass@proxy:3128", "key": "xai-" + "a" * 24},
            )
    finally:
        logger.removeHandler(handler)
    line = out.getvalue()
    for secret in ("AIzaSyD4n0t", "sk-proj-abc", "s3cret-pass", "xai-aaaa"):
        assert secret not in line, line
    assert json.loads(line)["event"] == "upstream_failed <redacted>"
