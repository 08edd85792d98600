"""``agwctl chat`` and ``agwctl responses``: one-shot data-plane test clients (reference §2.3).

They talk to the gateway's data plane like an agent would: the key goes in both
``Authorization: Bearer`` and ``x-api-key``, streamed text is printed as it arrives, and a
``usage:`` line closes the answer.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Annotated, Any

import httpx
import typer

from agw.sse import SSESplitter
from agwctl.client import CliError

DEFAULT_PROMPT = "What is 2+2? Answer in one short sentence."

ApiOpt = Annotated[
    str,
    typer.Option("--api", envvar="AGW_API", help="Wire API: openai, anthropic or cc."),
]
BaseUrlOpt = Annotated[
    str,
    typer.Option(
        "--base-url",
        envvar="AGW_BASE_URL",
        help="Data-plane base URL; /v1 is appended when missing.",
    ),
]
KeyOpt = Annotated[
    str,
    typer.Option(
        "--api-key",
        envvar="AGW_API_KEY",
        help="Virtual key, sent as Authorization: Bearer and as x-api-key.",
    ),
]
ModelOpt = Annotated[
    str, typer.Option("--model", envvar="AGW_MODEL", help="Model name (optional).")
]
SystemOpt = Annotated[
    str, typer.Option("--system", envvar="AGW_SYSTEM_PROMPT", help="System prompt.")
]
StreamOpt = Annotated[bool, typer.Option("--stream", help="Stream the answer.")]
TimeoutOpt = Annotated[
    float,
    typer.Option("--timeout", envvar="AGW_TIMEOUT", help="Seconds to wait; 0 waits forever."),
]
PromptArg = Annotated[
    str | None,
    typer.Argument(envvar="AGW_PROMPT", help="The prompt.", show_default=False),
]


def _base(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def _headers(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}", "x-api-key": key, "content-type": "application/json"}


def _events(resp: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    splitter = SSESplitter()
    for chunk in resp.iter_bytes():
        for event in splitter.feed(chunk):
            if event.data == "[DONE]":
                return
            try:
                data = json.loads(event.data)
            except ValueError:
                continue
            if isinstance(data, dict):
                yield event.name or str(data.get("type", "")), data


@contextlib.contextmanager
def _post(
    url: str, body: dict[str, Any], key: str, timeout: float, stream: bool
) -> Iterator[httpx.Response]:
    try:
        with (
            httpx.Client(timeout=timeout or None, trust_env=False) as client,
            client.stream("POST", url, json=body, headers=_headers(key)) as resp,
        ):
            if resp.status_code >= 400:
                resp.read()
                raise CliError(f"API error {resp.status_code}: {resp.text.strip()}")
            yield resp
    except httpx.ConnectError as exc:
        raise CliError(f"cannot reach {url}: {exc}") from None
    except httpx.TimeoutException:
        raise CliError(f"no answer from {url} within {timeout:g}s") from None
    except httpx.HTTPError as exc:
        raise CliError(f"request to {url} failed: {exc}") from None


def _out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _usage_line(usage: dict[str, Any]) -> str:
    tin = usage.get("prompt_tokens", usage.get("input_tokens", 0))
    tout = usage.get("completion_tokens", usage.get("output_tokens", 0))
    total = usage.get("total_tokens") or (tin or 0) + (tout or 0)
    return f"usage: input_tokens={tin} output_tokens={tout} total_tokens={total}"


def chat(
    prompt: PromptArg = None,
    api: ApiOpt = "openai",
    base_url: BaseUrlOpt = "http://127.0.0.1:8080/v1",
    api_key: KeyOpt = "test-key",
    model: ModelOpt = "",
    system: SystemOpt = "",
    stream: StreamOpt = False,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", envvar="AGW_MAX_TOKENS", help="Answer length limit.")
    ] = 128,
    timeout: TimeoutOpt = 30,
) -> None:
    """Send one chat message through the gateway and print the answer."""
    if api not in ("openai", "anthropic", "cc"):
        raise CliError(f"--api must be openai, anthropic or cc (got {api!r})")
    text = prompt or DEFAULT_PROMPT
    body: dict[str, Any] = {"max_tokens": max_tokens, "stream": stream}
    if model:
        body["model"] = model
    if api == "openai":
        messages = [{"role": "system", "content": system}] if system else []
        body["messages"] = [*messages, {"role": "user", "content": text}]
        url = _base(base_url) + "/chat/completions"
        if stream:
            body["stream_options"] = {"include_usage": True}
    else:
        if system:
            body["system"] = system
        body["messages"] = [{"role": "user", "content": text}]
        url = _base(base_url) + "/messages"
    usage: dict[str, Any] = {}
    with _post(url, body, api_key, timeout, stream) as resp:
        if not stream:
            data = resp.json() if resp.read() else {}
            if api == "openai":
                _out(
                    str(
                        ((data.get("choices") or [{}])[0].get("message") or {}).get("content") or ""
                    )
                )
            else:
                _out(
                    "".join(
                        b.get("text", "") for b in data.get("content") or [] if isinstance(b, dict)
                    )
                )
            usage = data.get("usage") or {}
        else:
            for name, data in _events(resp):
                if api == "openai":
                    for choice in data.get("choices") or []:
                        _out(str((choice.get("delta") or {}).get("content") or ""))
                    usage = data.get("usage") or usage
                elif name == "content_block_delta":
                    _out(str((data.get("delta") or {}).get("text") or ""))
                elif name == "message_start":
                    usage = dict((data.get("message") or {}).get("usage") or {})
                elif name == "message_delta":
                    usage.update(data.get("usage") or {})
                elif name == "error":
                    raise CliError(f"stream error: {json.dumps(data.get('error'))}")
    _out("\n" + _usage_line(usage) + "\n")


def responses(
    prompt: PromptArg = None,
    base_url: BaseUrlOpt = "http://127.0.0.1:8080/v1",
    api_key: KeyOpt = "test-key",
    model: ModelOpt = "",
    system: SystemOpt = "",
    stream: StreamOpt = False,
    max_output_tokens: Annotated[
        int,
        typer.Option("--max-output-tokens", envvar="AGW_MAX_TOKENS", help="Answer length limit."),
    ] = 128,
    timeout: TimeoutOpt = 30,
) -> None:
    """Send one request to the OpenAI Responses API through the gateway and print the answer."""
    body: dict[str, Any] = {
        "input": [{"role": "user", "content": prompt or DEFAULT_PROMPT}],
        "max_output_tokens": max_output_tokens,
        "stream": stream,
    }
    if model:
        body["model"] = model
    if system:
        body["instructions"] = system
    usage: dict[str, Any] = {}
    with _post(_base(base_url) + "/responses", body, api_key, timeout, stream) as resp:
        if not stream:
            data = resp.json() if resp.read() else {}
            for item in data.get("output") or []:
                for part in item.get("content") or [] if isinstance(item, dict) else []:
                    if isinstance(part, dict) and part.get("type") == "output_text":
                        _out(str(part.get("text", "")))
            usage = data.get("usage") or {}
        else:
            for name, data in _events(resp):
                if name == "response.output_text.delta":
                    _out(str(data.get("delta", "")))
                elif name in ("response.completed", "response.incomplete"):
                    usage = (data.get("response") or {}).get("usage") or {}
                elif name in ("error", "response.failed"):
                    raise CliError(f"stream error: {json.dumps(data)[:300]}")
    _out("\n" + _usage_line(usage) + "\n")


def register(app: typer.Typer) -> None:
    app.command("chat")(chat)
    app.command("responses")(responses)
