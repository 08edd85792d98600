"""Fetching the identity providers' public JSON documents (JWK sets, OIDC and OAuth metadata)
through the gateway's HTTP client: bounded in time and size, no redirects, a JSON object or a
``ValueError`` that says what was wrong (kept for the log and the caller's 401)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

FETCH_TIMEOUT_S = 5.0
MAX_DOCUMENT_BYTES = 1 << 20


async def get_json(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)
    async with session.get(url, timeout=timeout, allow_redirects=False) as resp:
        if resp.status != 200:
            raise ValueError(f"GET {url}: HTTP {resp.status}")
        raw = bytearray()
        async for chunk in resp.content.iter_chunked(1 << 16):
            raw += chunk
            if len(raw) > MAX_DOCUMENT_BYTES:
                raise ValueError(f"GET {url}: answer over {MAX_DOCUMENT_BYTES} bytes")
    document = json.loads(raw)
    if not isinstance(document, dict):
        raise ValueError(f"GET {url}: not a JSON object")
    return document
