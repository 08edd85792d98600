"""The agent card through agw: every interface URL is the route's, the agent's security schemes
are replaced by the route's, its signatures are dropped, the legacy path serves the same card,
the extended card is rewritten too, and a card is fetched once per refresh interval."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from a2a.types.a2a_pb2 import GetExtendedAgentCardRequest
from google.protobuf.json_format import MessageToDict

from tests.a2a.conftest import A2aGateway
from tests.support.a2a import run_a2a_agent, sdk_client

CARD = "/.well-known/agent-card.json"


def urls(card: dict[str, Any]) -> set[str]:
    """Every endpoint URL a card names, in both versions' fields."""
    found = {i["url"] for i in card.get("supportedInterfaces", [])}
    found |= {i["url"] for i in card.get("additionalInterfaces", [])}
    if "url" in card:
        found.add(card["url"])
    return found


def test_the_card_points_at_the_route(gw: A2aGateway) -> None:
    with gw.data() as http:
        card = http.get(f"/a2a/open{CARD}").json()
        legacy = http.get("/a2a/open/.well-known/agent.json")
    assert urls(card) == {gw.url("/a2a/open")}
    assert {(i["protocolBinding"], i["protocolVersion"]) for i in card["supportedInterfaces"]} == {
        ("JSONRPC", "1.0"),
        ("HTTP+JSON", "1.0"),
        ("JSONRPC", "0.3"),
        ("HTTP+JSON", "0.3"),
    }
    assert card["preferredTransport"] == "JSONRPC"
    assert "signatures" not in card
    # an open route: the agent's own scheme is gone and none replaces it
    for key in ("securitySchemes", "securityRequirements", "security"):
        assert key not in card
    assert card["name"] == "fake agent" and card["skills"][0]["id"] == "echo"
    assert legacy.status_code == 200 and legacy.json() == card
    assert str(gw.agent.port) not in json.dumps(card)


def test_a_keyed_route_advertises_its_bearer_scheme_and_serves_the_card_without_a_key(
    gw: A2aGateway,
) -> None:
    with gw.data() as http:
        r = http.get(f"/a2a/keyed{CARD}")
        refused = http.post(
            "/a2a/keyed",
            json={"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "x"}},
        )
    assert r.status_code == 200
    card = r.json()
    assert set(card["securitySchemes"]) == {"agw"}
    scheme = card["securitySchemes"]["agw"]
    assert scheme["httpAuthSecurityScheme"]["scheme"] == "Bearer"  # 1.0's shape
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")  # 0.3's shape
    assert card["securityRequirements"] == [{"schemes": {"agw": {"list": []}}}]
    assert card["security"] == [{"agw": []}]
    assert "upstream_key" not in json.dumps(card)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"
    assert refused.json()["error"]["code"] == -32600 and refused.json()["id"] == 1


def test_the_extended_card_is_rewritten_too(gw: A2aGateway) -> None:
    async def case(binding: str, version: str) -> dict[str, Any]:
        async with sdk_client(gw.url("/a2a/keyed"), binding, version, key=gw.key) as client:
            card = await client.get_extended_agent_card(GetExtendedAgentCardRequest())
            found: dict[str, Any] = MessageToDict(card)
            return found

    for binding, version, method in (
        ("JSONRPC", "1.0", "GetExtendedAgentCard"),
        ("HTTP+JSON", "0.3", "agent/getAuthenticatedExtendedCard"),
    ):
        card = asyncio.run(asyncio.wait_for(case(binding, version), 20))
        assert {s["id"] for s in card["skills"]} == {"echo", "secret"}
        assert {i["url"] for i in card["supportedInterfaces"]} == {gw.url("/a2a/keyed")}
        assert "signatures" not in card
        rows = gw.rows("method = ?", (method,))
        assert rows[-1]["success"] == 1


def test_the_card_is_fetched_once_per_refresh_interval(gw: A2aGateway, tmp_path: Any) -> None:
    """The fixture's service keeps its card an hour: no fetch however many clients ask, on
    either of its routes. A service whose interval is 1 s fetches again after it."""

    def fetches() -> list[dict[str, Any]]:
        return [r for r in gw.agent.requests() if r["path"] == CARD]

    with gw.data() as http:
        assert http.get(f"/a2a/open{CARD}").status_code == 200  # fetched now or before
        before = len(fetches())
        for _ in range(3):
            assert http.get(f"/a2a/open{CARD}").status_code == 200
            assert http.get(f"/a2a/keyed{CARD}").status_code == 200  # the same service
    assert len(fetches()) == before
    assert fetches()[0]["headers"]["authorization"] == "Bearer up-secret-token"

    with run_a2a_agent(tmp_path) as agent, gw.agwd.client() as admin:
        service = {"id": "brief", "card_url": agent.card_url, "card_refresh_interval": "1s"}
        match = {"path_prefix": "/a2a/brief"}
        route = {"id": "a2a-brief", "service_id": "brief", "match_policy": match}
        assert admin.post("/admin/a2a/services", json=service).status_code == 201
        assert admin.post("/admin/a2a/routes", json=route).status_code == 201
        try:
            with gw.data() as http:
                assert http.get(f"/a2a/brief{CARD}").status_code == 200
                assert http.get(f"/a2a/brief{CARD}").status_code == 200
                time.sleep(1.1)
                assert http.get(f"/a2a/brief{CARD}").status_code == 200
            assert len([r for r in agent.requests() if r["path"] == CARD]) == 2
        finally:
            admin.delete("/admin/a2a/routes/a2a-brief")
            admin.delete("/admin/a2a/services/brief")


def test_an_agent_that_cannot_be_reached(gw: A2aGateway) -> None:
    with gw.data() as http:
        card = http.get(f"/a2a/down{CARD}")
        call = http.post(
            "/a2a/down",
            json={"jsonrpc": "2.0", "id": "a", "method": "SendMessage", "params": {}},
        )
        rest = http.get("/a2a/down/tasks/t1", headers={"a2a-version": "1.0"})
    assert card.status_code == 502
    error = card.json()["error"]
    assert (error["code"], error["status"]) == (502, "INTERNAL")
    assert error["details"][0]["reason"] == "CARD_UNAVAILABLE"
    assert "could not be reached" in error["message"]
    assert call.status_code == 502
    assert call.json()["id"] == "a" and call.json()["error"]["code"] == -32603
    assert rest.status_code == 502
    rows = gw.rows("route_id = 'a2a-down'", count=3)
    assert {r["error_type"] for r in rows} == {"card_unavailable"}


def test_a_forged_host_gets_no_card_even_on_a_keyed_route(gw: A2aGateway) -> None:
    """The card is made from the Host: an untrusted one must not name where agents send their
    credentials (a shared cache would keep it for everyone)."""
    with gw.data() as http:
        for prefix in ("/a2a/keyed", "/a2a/open"):
            r = http.get(f"{prefix}/.well-known/agent-card.json", headers={"host": "evil.example"})
            assert r.status_code == 421, r.text
            error = r.json()["error"]
            assert error["code"] == 421 and error["status"] == "FAILED_PRECONDITION"
            assert error["details"][0]["reason"] == "HOST_NOT_ALLOWED"
            assert "supportedInterfaces" not in r.text
        ok = http.get("/a2a/keyed/.well-known/agent-card.json")
    assert ok.status_code == 200
    assert all("127.0.0.1" in i["url"] for i in ok.json()["supportedInterfaces"])
