"""An A2A route that takes the caller's JWT (issue 14's identity step, shared by every plane):
the token admits the message, the row names the user, the token never reaches the agent, and a
bad token is refused in JSON-RPC before anything goes upstream."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.a2a.conftest import A2aGateway
from tests.support.jwt import TokenMinter

V1 = {"a2a-version": "1.0"}
PREFIX = "/a2a/jwt"


@pytest.fixture(scope="module")
def minter(gw: A2aGateway) -> Iterator[TokenMinter]:
    minter = TokenMinter("ES256", issuer="https://a2a-idp.test.example")
    with gw.agwd.client() as admin:
        r = admin.post("/admin/jwt_providers", json=minter.provider("a2a-idp"))
        assert r.status_code == 201, r.text
        r = admin.post(
            "/admin/a2a/routes",
            json={"id": "a2a-jwt", "service_id": "planner", "match_policy": {"path_prefix": PREFIX},
                  "auth_policy": {"jwt_provider_ids": ["a2a-idp"]}},
        )  # fmt: skip
        assert r.status_code == 201, r.text
    try:
        yield minter
    finally:
        with gw.agwd.client() as admin:
            admin.delete("/admin/a2a/routes/a2a-jwt")
            admin.delete("/admin/jwt_providers/a2a-idp")


def send(context: str, n: int) -> dict[str, object]:
    return {
        "jsonrpc": "2.0",
        "id": n,
        "method": "SendMessage",
        "params": {
            "message": {
                "messageId": f"m-jwt-{uuid.uuid4()}",
                "role": "ROLE_USER",
                "contextId": context,
                "parts": [{"text": "hello from a JWT"}],
            }
        },
    }


def test_a_jwt_admits_a_message_and_names_the_user(gw: A2aGateway, minter: TokenMinter) -> None:
    token = minter.token("ana", email="ana@example.com", org_id="acme")
    context = f"ctx-jwt-{uuid.uuid4()}"
    with gw.data() as http:
        r = http.post(
            PREFIX, json=send(context, 1), headers={"authorization": f"Bearer {token}", **V1}
        )
    assert r.status_code == 200, r.text
    assert r.json()["result"]["task"]["contextId"] == context
    (row,) = gw.rows("session_id = ?", (context,))
    assert row["user_id"] == "ana@example.com" and row["org_id"] == "acme"
    assert row["route_id"] == "a2a-jwt" and row["status_code"] == 200
    seen = [h for req in gw.agent.requests() for h in req["headers"].values()]
    assert not any(token in str(value) for value in seen)  # the caller's token stays here


def test_a_bad_jwt_is_refused_before_the_agent(gw: A2aGateway, minter: TokenMinter) -> None:
    other = TokenMinter("ES256", issuer="https://a2a-idp.test.example")  # not the trusted key
    before = len(gw.agent.requests())
    with gw.data() as http:
        forged = http.post(
            PREFIX,
            json=send("ctx-forged", 7),
            headers={"authorization": f"Bearer {other.token()}", **V1},
        )
        missing = http.post(PREFIX, json=send("ctx-none", 8), headers=V1)
    for r, msg_id in ((forged, 7), (missing, 8)):
        assert r.status_code == 401, r.text
        assert r.json()["id"] == msg_id and r.json()["error"]["code"] == -32600
        assert r.headers["www-authenticate"].lower().startswith("bearer")
    assert len(gw.agent.requests()) == before
