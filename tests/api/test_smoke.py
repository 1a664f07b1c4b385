from __future__ import annotations

import httpx

from tests.factories import make_user


async def test_registered_user_signs_in_and_reads_their_profile(client: httpx.AsyncClient) -> None:
    created = await client.post(
        "/v1/auth/register",
        json={"email": "Ada@Example.com", "password": "correct horse battery", "name": "Ada"},
    )
    assert created.status_code == 201, created.text
    assert created.json()["email"] == "ada@example.com"

    login = await client.post(
        "/v1/auth/login", json={"email": "ada@example.com", "password": "correct horse battery"}
    )
    assert login.status_code == 200, login.text
    token = login.json()["access_token"]

    me = await client.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200
    assert me.json()["id"] == created.json()["id"]
    assert me.json()["name"] == "Ada"


async def test_factory_user_has_a_working_token(app: object, client: httpx.AsyncClient) -> None:
    user = await make_user(app)
    me = await client.get("/v1/me", headers=user.headers)
    assert me.status_code == 200
    assert me.json()["email"] == user.email
