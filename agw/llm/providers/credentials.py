"""Which key a provider call carries: managed ``api_key`` credentials by scope, selector and
priority (cooling ones skipped, :mod:`agw.llm.credential_health`), the provider's own key last."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from agw.config.llm import Credential
from agw.llm.credential_health import CredentialHealth
from agw.runtime.snapshot import Snapshot, credential_priority


@dataclass(frozen=True, slots=True)
class Key:
    value: str
    # api_key (managed credential) | static (the provider's own api_key) | none (no key at all)
    # | cooling (every managed credential is backing off; credential_id lists them)
    source: str
    credential_id: str = ""


class CredentialPicker:
    """Managed ``api_key`` credentials for a provider, by scope order, selector and priority;
    the provider's own ``api_key`` last. Round-robin state lives across requests."""

    def __init__(self) -> None:
        self._counters: dict[str, itertools.count[int]] = {}
        self._lock = threading.Lock()

    def keys(
        self,
        snapshot: Snapshot,
        provider_id: str,
        scope_order: list[str],
        selector: str,
        custom_scope: str = "",
        health: CredentialHealth | None = None,
    ) -> Iterator[Key]:
        """Keys to try in order. Credentials cooling down (``health``) are skipped; when only
        those remain and the provider has no key of its own, one ``cooling`` key says so."""
        provider = snapshot.providers[provider_id]
        if not snapshot.credentials:  # no managed credentials at all: the provider's own key
            yield Key(provider.api_key, "static") if provider.api_key else Key("", "none")
            return
        seen: set[str] = set()
        cooling: list[str] = []
        for scope_kind in scope_order:
            if scope_kind == "provider_id":
                scope = f"id:{provider_id}"
            elif scope_kind == "provider_type":
                scope = f"type:{provider.provider_type}"
            else:
                scope = custom_scope
            if not scope:
                continue
            tier: list[Credential] = [
                c for c in snapshot.credentials.get(scope, ()) if c.id not in seen
            ]
            if selector == "round_robin" and len(tier) > 1:
                best = credential_priority(tier[0])
                top = [c for c in tier if credential_priority(c) == best]
                with self._lock:
                    n = next(self._counters.setdefault(f"{provider_id}|{scope}", itertools.count()))
                start = n % len(top)
                tier = top[start:] + top[:start] + tier[len(top) :]
            for cred in tier:
                seen.add(cred.id)
                if health is not None and not health.available(cred.id):
                    cooling.append(cred.id)
                    continue
                yield Key(str(cred.attributes.get("api_key", "")), "api_key", cred.id)
        if provider.api_key:
            yield Key(provider.api_key, "static")
        elif cooling and len(cooling) == len(seen):
            yield Key("", "cooling", ",".join(cooling))
        elif not seen:
            yield Key("", "none")
