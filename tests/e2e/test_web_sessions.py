"""Browser sessions through the real server: the sign-in form's CSRF cookie, the session cookie, the CSRF
header on cookie-authenticated ``/v1`` calls, signing out, and escaping on the pages."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.e2e.conftest import (
    ServerProcess,
    form_fields,
    meta_csrf_token,
    register,
    set_cookies,
    unique_email,
)

PASSWORD = "web session password 1"


def _user(server: ServerProcess, *, name: str = "Web User") -> str:
    email = unique_email("web")
    with server.client() as http:
        register(http, email=email, password=PASSWORD, name=name)
    return email


def _sign_in(browser: httpx.Client, email: str) -> httpx.Response:
    page = browser.get("/login")
    fields = form_fields(page.text, "/login")
    return browser.post("/login", data={**fields, "email": email, "password": PASSWORD})


@contextmanager
def _signed_in_browser(server: ServerProcess, email: str) -> Iterator[httpx.Client]:
    with server.client() as browser:
        response = _sign_in(browser, email)
        assert response.status_code == 303, response.text
        yield browser


def _is_signed_in(browser: httpx.Client) -> bool:
    account = browser.get("/account")
    if account.status_code == 303:
        assert account.headers["location"].startswith("/login")
        return False
    assert account.status_code == 200, account.text
    return True


def test_login_page_sets_the_form_csrf_cookie(server: ServerProcess) -> None:
    with server.client() as browser:
        page = browser.get("/login")
    assert page.status_code == 200
    cookie = set_cookies(page)["prepaid_csrf"].lower()
    assert "httponly" in cookie
    assert "samesite=strict" in cookie
    token = form_fields(page.text, "/login")["csrf_token"]
    assert len(token) >= 16
    assert f"prepaid_csrf={token.lower()}" in cookie


@pytest.mark.parametrize("forgery", ["missing field", "wrong field", "no cookie"])
def test_login_without_the_matching_csrf_token_is_refused(server: ServerProcess, forgery: str) -> None:
    email = _user(server)
    with server.client() as browser:
        fields = form_fields(browser.get("/login").text, "/login")
        if forgery == "missing field":
            del fields["csrf_token"]
        elif forgery == "wrong field":
            fields["csrf_token"] = "not-the-cookie-value-at-all"
        else:
            browser.cookies.clear()
        refused = browser.post("/login", data={**fields, "email": email, "password": PASSWORD})
        assert refused.status_code == 403, refused.text
        assert "prepaid_session" not in set_cookies(refused)
        assert "prepaid_session" not in browser.cookies
        assert not _is_signed_in(browser)


def test_login_sets_an_httponly_lax_session_cookie_and_the_account_shows_the_user(
    server: ServerProcess,
) -> None:
    email = _user(server, name="Grace Hopper")
    with server.client() as browser:
        signed_in = _sign_in(browser, email)
        assert signed_in.status_code == 303
        assert signed_in.headers["location"] == "/account"
        cookie = set_cookies(signed_in)["prepaid_session"].lower()
        assert "httponly" in cookie
        assert "samesite=lax" in cookie
        assert "path=/" in cookie
        account = browser.get("/account")
    assert account.status_code == 200
    assert email in account.text
    assert "Grace Hopper" in account.text


def test_login_form_never_redirects_off_site(server: ServerProcess) -> None:
    email = _user(server)
    with server.client() as browser:
        fields = form_fields(browser.get("/login?next=https://evil.example/").text, "/login")
        assert fields["next"] == "/account"
        for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
            fields["next"] = target
            signed_in = browser.post("/login", data={**fields, "email": email, "password": PASSWORD})
            assert signed_in.status_code == 303
            assert signed_in.headers["location"] == "/account"


def test_wrong_password_on_the_login_form_sets_no_session(server: ServerProcess) -> None:
    email = _user(server)
    with server.client() as browser:
        fields = form_fields(browser.get("/login").text, "/login")
        refused = browser.post("/login", data={**fields, "email": email, "password": "not the password"})
        assert refused.status_code == 401
        assert "prepaid_session" not in set_cookies(refused)
        assert not _is_signed_in(browser)


def test_cookie_authenticated_api_calls_need_the_csrf_header(server: ServerProcess) -> None:
    email = _user(server)
    with _signed_in_browser(server, email) as browser:
        token = meta_csrf_token(browser.get("/account").text)
        key = {"name": "from the page", "scopes": ["balance:read"]}

        for headers in ({}, {"X-CSRF-Token": "not-the-session-token"}):
            read = browser.get("/v1/me", headers=headers)
            assert read.status_code == 403, read.text
            assert read.json()["error"]["code"] == "csrf_failed"
            write = browser.post("/v1/api_keys", json=key, headers=headers)
            assert write.status_code == 403, write.text
            assert write.json()["error"]["code"] == "csrf_failed"

        good = {"X-CSRF-Token": token}
        me = browser.get("/v1/me", headers=good)
        assert me.status_code == 200, me.text
        assert me.json()["email"] == email
        # The refused POSTs wrote nothing.
        assert browser.get("/v1/api_keys", headers=good).json()["data"] == []
        created = browser.post("/v1/api_keys", json=key, headers=good)
        assert created.status_code == 201, created.text
        listed = browser.get("/v1/api_keys", headers=good).json()["data"]
        assert [item["id"] for item in listed] == [created.json()["id"]]


def test_logout_needs_the_sessions_csrf_token(server: ServerProcess) -> None:
    email = _user(server)
    with _signed_in_browser(server, email) as browser:
        account = browser.get("/account").text
        session_cookie = browser.cookies["prepaid_session"]
        logout_fields = form_fields(account, "/logout")
        assert logout_fields["csrf_token"] == meta_csrf_token(account)

        # The pre-login form token (a valid double-submit pair) is not the session's token.
        login_form_token = browser.cookies["prepaid_csrf"]
        for wrong in ({"csrf_token": login_form_token}, {"csrf_token": "forged"}, {}):
            refused = browser.post("/logout", data=wrong)
            assert refused.status_code == 403, refused.text
            assert _is_signed_in(browser)

        out = browser.post("/logout", data=logout_fields)
        assert out.status_code == 303
        assert out.headers["location"] == "/login"
        assert "prepaid_session" not in browser.cookies
        assert not _is_signed_in(browser)

    # The old cookie is dead on the server, not only forgotten by the browser.
    with server.client(cookies={"prepaid_session": session_cookie}) as replay:
        assert not _is_signed_in(replay)
        me = replay.get("/v1/me", headers={"X-CSRF-Token": logout_fields["csrf_token"]})
        assert me.status_code == 401, me.text


def test_markup_in_a_user_name_renders_escaped(server: ServerProcess) -> None:
    name = "<script>alert(1)</script><svg onload=alert(2)>"
    email = _user(server, name=name)
    with _signed_in_browser(server, email) as browser:
        account = browser.get("/account")
    assert account.status_code == 200
    assert "<script>alert" not in account.text
    assert "<svg" not in account.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;svg onload=alert(2)&gt;" in account.text
    # And a second line of defence: no inline script would run anyway.
    policy = account.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy.split("script-src", 1)[1].split(";", 1)[0]
