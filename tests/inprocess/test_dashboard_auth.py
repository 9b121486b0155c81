"""Dashboard sessions in-process: login, sign-up, CSRF, the login limiter, cookies, logout.

The in-process twin of tests/e2e/test_dashboard_auth.py. ``client`` serves the default config
(sign-up closed, 10 failed logins a minute); ``site`` the same data folder with sign-up open
and a limit of 3. The browser walk-through stays in tests/e2e/test_dashboard_browser.py.
"""

from __future__ import annotations

import asyncio
import json
from http.cookies import SimpleCookie

import aiohttp
import pytest
from aiohttp import web

from nember_core.app.nember import Nember
from nember_core.app.server import create_app
from tests.harness import PASSWORD, write_config

from .conftest import EMAIL, OTHER_EMAIL, VALID_KEY

LIMIT = 3
CSRF_MISSING = {"error": "Missing or wrong CSRF token (header X-CSRF-Token)."}
WRONG = {"error": "Wrong email or password."}
LIMITED = {"error": "Too many failed logins; wait a minute and try again."}
EXPIRED = {"error": "Your session has expired; log in again."}
NO_AUTH = {"error": "Authenticate with the header 'Authorization: Bearer <API key>'."}


def _site_app(prepared, folder, **dashboard) -> web.Application:
    """The app on the prepared data folder, with these ``dashboard`` settings."""
    data_dir = Nember.load(str(prepared.config)).config.data_dir
    config = write_config(folder, data_dir=data_dir, dashboard=dashboard)
    return create_app(Nember.load(str(config)))


@pytest.fixture
async def site(aiohttp_client, prepared, tmp_path):
    """Sign-up open, and at most LIMIT failed logins a minute per email and per address."""
    return await aiohttp_client(_site_app(prepared, tmp_path, allow_signup=True,
                                          login_attempts_per_minute=LIMIT))


async def post_json(client, path: str, body, **kwargs) -> tuple[int, dict]:
    async with client.post(path, json=body, **kwargs) as response:
        return response.status, await response.json()


async def login(client, email: str = EMAIL, password: str = PASSWORD, **kwargs):
    """Status, JSON body and the Set-Cookie headers of ``POST /auth/login``."""
    async with client.post("/auth/login", json={"email": email, "password": password},
                           **kwargs) as response:
        return response.status, await response.json(), response.headers.getall("Set-Cookie", [])


async def get_json(client, path: str, **kwargs) -> tuple[int, dict]:
    async with client.get(path, **kwargs) as response:
        return response.status, await response.json()


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def session_token(client) -> str:
    return client.session.cookie_jar.filter_cookies(client.make_url("/"))["nember_session"].value


def csrf(token: str) -> dict:
    return {"X-CSRF-Token": token}


# --- login, the cookie, the session ------------------------------------------------------

async def test_login_sets_a_strict_http_only_cookie_and_gives_a_csrf_token(client, prepared):
    status, body, cookies = await login(client)
    assert status == 200 and set(body) == {"email", "csrf_token"}
    assert body["email"] == EMAIL
    assert len(body["csrf_token"]) == 64 and int(body["csrf_token"], 16) >= 0
    (header,) = cookies
    assert header.startswith("nember_session=")
    assert "HttpOnly" in header and "SameSite=Strict" in header
    assert "Secure" not in header  # plain http here
    morsel = SimpleCookie(header)["nember_session"]
    assert len(morsel.value) >= 40  # a random token, not the account
    assert (morsel["path"], morsel["max-age"], morsel["samesite"]) == ("/", "86400", "Strict")
    assert morsel["httponly"] is True
    # The page learns who is logged in, and the same CSRF token, from /auth/session.
    assert await get_json(client, "/auth/session") == (200, body)
    # The cookie authenticates reads of the account's own data, as its API key does.
    status, by_cookie = await get_json(client, "/api/keys")
    assert status == 200
    async with aiohttp.ClientSession() as plain:
        async with plain.get(client.make_url("/api/keys"),
                             headers=bearer(prepared.key)) as response:
            assert by_cookie == await response.json()
    assert [m["strat"] for m in (await get_json(client, "/api/models"))[1]["items"]] == [
        "example_strategy", "example_strategy"]


async def test_login_of_each_account_sees_only_its_own_data(client, site):
    assert (await login(site, OTHER_EMAIL))[0] == 200
    assert (await get_json(site, "/api/models"))[1]["items"] == []
    (their_key,) = (await get_json(site, "/api/keys"))[1]["items"]
    assert (await login(client))[0] == 200
    assert their_key["id"] not in {k["id"] for k in (await get_json(client, "/api/keys"))[1][
        "items"]}


async def test_every_change_through_the_session_needs_its_csrf_token(client, prepared):
    _, body, _ = await login(client)
    token = body["csrf_token"]
    keys = (await get_json(client, "/api/keys"))[1]["items"]
    default = keys[0]
    for headers in ({}, csrf("0" * 64), csrf(token.upper()), csrf("")):
        assert await post_json(client, "/api/keys", {"name": "x"}, headers=headers) == (
            403, CSRF_MISSING)
        async with client.delete(f"/api/keys/{default['id']}", headers=headers) as response:
            assert (response.status, await response.json()) == (403, CSRF_MISSING)
        form = aiohttp.FormData({"strat": "csrf"})
        form.add_field("data", b"a,b\n1,2\n", filename="x.csv")
        async with client.post("/api/models", data=form, headers=headers) as response:
            assert (response.status, await response.json()) == (403, CSRF_MISSING)
        async with client.delete("/api/connections/conn_x", headers=headers) as response:
            assert (response.status, await response.json()) == (403, CSRF_MISSING)
    # Nothing changed: no key made, the default key neither revoked nor refused.
    assert (await get_json(client, "/api/keys"))[1]["items"] == keys
    ws = await client.ws_connect("/ws")
    await ws.send_str(prepared.key)
    assert json.loads(await ws.receive_str(timeout=5)) == VALID_KEY
    await ws.close()
    # With the token, the same changes go through.
    status, new = await post_json(client, "/api/keys", {"name": "from-session"},
                                  headers=csrf(token))
    assert status == 201 and new["name"] == "from-session" and new["key"].startswith("nmb_")
    async with client.delete(f"/api/keys/{new['id']}", headers=csrf(token)) as response:
        assert response.status == 200 and (await response.json())["revoked_at"]


async def test_a_csrf_token_belongs_to_its_own_session(client, site):
    _, mine, _ = await login(client)
    _, theirs, _ = await login(site)  # the same account, another login
    assert mine["csrf_token"] != theirs["csrf_token"]
    assert await post_json(client, "/api/keys", {"name": "x"},
                           headers=csrf(theirs["csrf_token"])) == (403, CSRF_MISSING)
    status, _ = await post_json(site, "/api/keys", {"name": "x"},
                                headers=csrf(theirs["csrf_token"]))
    assert status == 201


async def test_logout_needs_the_token_then_ends_the_session_for_good(client):
    _, body, _ = await login(client)
    token = session_token(client)
    async with client.post("/auth/logout") as response:
        assert (response.status, await response.json()) == (403, CSRF_MISSING)
    assert (await get_json(client, "/auth/session"))[0] == 200  # still logged in
    async with client.post("/auth/logout", headers=csrf(body["csrf_token"])) as response:
        assert (response.status, await response.json()) == (200, {"logged_out": True})
        (cleared,) = response.headers.getall("Set-Cookie")
    morsel = SimpleCookie(cleared)["nember_session"]
    assert morsel.value in ("", '""') and morsel["max-age"] == "0" and morsel["path"] == "/"
    assert await get_json(client, "/auth/session") == (
        401, {"error": "Not logged in.", "allow_signup": False})
    assert await get_json(client, "/api/keys") == (401, NO_AUTH)
    # A copy of the cookie (stolen, or an old tab) is useless after the logout.
    replay = {"Cookie": f"nember_session={token}"}
    assert await get_json(client, "/api/keys", headers=replay) == (401, EXPIRED)
    assert await get_json(client, "/auth/session", headers=replay) == (
        401, {"error": "Not logged in.", "allow_signup": False})
    assert await post_json(client, "/api/keys", {"name": "x"},
                           headers={**replay, **csrf(body["csrf_token"])}) == (401, EXPIRED)


async def test_a_made_up_session_cookie_is_refused(client):
    forged = {"Cookie": "nember_session=" + "A" * 43}
    assert await get_json(client, "/api/keys", headers=forged) == (401, EXPIRED)


# --- failed logins and the limiter -------------------------------------------------------

async def test_wrong_password_and_unknown_email_look_the_same(client):
    status, body, cookies = await login(client, EMAIL, "wrong-password")
    assert (status, body, cookies) == (401, WRONG, [])
    assert (await login(client, "nobody@example.com", PASSWORD))[:2] == (401, WRONG)
    assert (await login(client, EMAIL.upper(), PASSWORD))[0] == 200  # emails ignore case


async def test_failed_logins_are_limited_per_email_and_per_address(site):
    for _ in range(LIMIT):
        assert (await login(site, "limited@example.com", "wrong-password"))[:2] == (401, WRONG)
    assert (await login(site, "limited@example.com", "wrong-password"))[:2] == (429, LIMITED)
    assert (await login(site, "LIMITED@example.com", "wrong-password"))[:2] == (429, LIMITED)
    # Another account behind the same address is not locked out by them.
    assert (await login(site, EMAIL, PASSWORD))[0] == 200
    # From another address, the limited email still is; other accounts log in.
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as elsewhere:
        async with elsewhere.post(site.make_url("/auth/login"), json={
                "email": "limited@example.com", "password": "wrong-password"}) as response:
            assert (response.status, await response.json()) == (429, LIMITED)
        async with elsewhere.post(site.make_url("/auth/login"),
                                  json={"email": EMAIL, "password": PASSWORD}) as response:
            assert response.status == 200 and (await response.json())["email"] == EMAIL


async def test_the_default_limit_is_ten_failed_logins(client):
    for _ in range(10):
        assert (await login(client, "ten@example.com", "wrong-password"))[:2] == (401, WRONG)
    assert (await login(client, "ten@example.com", "wrong-password"))[:2] == (429, LIMITED)


async def test_a_spray_from_one_address_is_stopped_and_success_does_not_reset_it(site):
    # From an address of its own: the data folder, and so the count per address, is shared
    # with the other tests.
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.3", 0))
    async with aiohttp.ClientSession(site.make_url("/"), connector=connector) as sprayer:
        emails = [f"victim{i}@example.com" for i in range(LIMIT * 10)]
        for email in emails[:-1]:
            assert (await login(sprayer, email, "guess-1"))[:2] == (401, WRONG)
        assert (await login(sprayer, OTHER_EMAIL, PASSWORD))[0] == 200  # its own account
        assert (await login(sprayer, emails[-1], "guess-1"))[:2] == (401, WRONG)
        # Ten times the limit from this address within the minute: the next one must wait.
        assert (await login(sprayer, "victim-next@example.com", "guess-1"))[:2] == (429, LIMITED)


async def test_failed_logins_count_on_every_server_sharing_the_stores(site, aiohttp_client,
                                                                      prepared, tmp_path):
    # Another server on the same stores, as ``--workers`` or a second node runs: the attempts
    # made on either count on both, even sent to both at once.
    other = await aiohttp_client(_site_app(prepared, tmp_path / "other", allow_signup=True,
                                           login_attempts_per_minute=LIMIT))
    results = await asyncio.gather(*(login(server, "split@example.com", f"guess-{i}")
                                     for i in range(10) for server in (site, other)))
    statuses = sorted(status for status, *_ in results)
    assert statuses == [401] * LIMIT + [429] * (20 - LIMIT)


async def test_attempts_sent_all_at_once_are_limited_too(site):
    results = await asyncio.gather(*(login(site, "rushed@example.com", f"guess-{i}")
                                     for i in range(40)))
    statuses = sorted(status for status, *_ in results)
    assert statuses == [401] * LIMIT + [429] * (40 - LIMIT)


async def test_login_needs_json_and_same_origin(client):
    async with client.post("/auth/login", data={"email": EMAIL, "password": PASSWORD}) as r:
        assert (r.status, await r.json()) == (415, {"error": "Send the email and password as "
                                                             "JSON."})
    status, body, cookies = await login(client, headers={"Origin": "https://evil.example"})
    assert (status, body, cookies) == (403, {"error": "Cross-site login refused."}, [])
    assert (await login(client, headers={"Origin": "null"}))[0] == 403
    shape = {"error": 'Send {"email": ..., "password": ...}.'}
    assert await post_json(client, "/auth/login", {"email": EMAIL}) == (400, shape)
    assert await post_json(client, "/auth/login", {"email": EMAIL, "password": 5}) == (400, shape)
    assert await post_json(client, "/auth/login", [EMAIL, PASSWORD]) == (400, shape)
    async with client.post("/auth/login", data="{", headers={
            "Content-Type": "application/json"}) as r:
        assert (r.status, await r.json()) == (400, shape)
    same_origin = {"Origin": str(client.make_url("")).rstrip("/")}
    assert (await login(client, headers=same_origin))[0] == 200


async def test_a_deeply_nested_login_body_is_a_400(client):
    async with client.post("/auth/login", data="[" * 100_000, headers={
            "Content-Type": "application/json"}) as r:
        assert (r.status, await r.json()) == (
            400, {"error": 'Send {"email": ..., "password": ...}.'})


# --- sign-up -----------------------------------------------------------------------------

async def test_signup_is_closed_by_default(client):
    status, body = await post_json(client, "/auth/signup", {"email": "n@example.com",
                                                           "password": "long enough"})
    assert (status, body) == (403, {"error": "Sign-up is closed on this server; ask its "
                                             "operator for an account."})
    assert await get_json(client, "/auth/session") == (
        401, {"error": "Not logged in.", "allow_signup": False})
    assert (await login(client, "n@example.com", "long enough"))[:2] == (401, WRONG)


async def test_signup_when_allowed(site, client):
    assert await get_json(site, "/auth/session") == (
        401, {"error": "Not logged in.", "allow_signup": True})
    async with site.post("/auth/signup", json={"email": " new@example.com ",
                                               "password": "long enough"}) as r:
        assert r.status == 201
        body = await r.json()
        (cookie,) = r.headers.getall("Set-Cookie")
    assert set(body) == {"email", "csrf_token"} and body["email"] == "new@example.com"
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert await get_json(site, "/auth/session") == (200, body)  # logged in at once
    assert await get_json(site, "/api/keys") == (200, {"items": []})
    assert await get_json(site, "/api/models") == (200, {"items": []})
    # The new account makes a key through its session, and a bot can use it.
    status, new = await post_json(site, "/api/keys", {"name": "bot"},
                                  headers=csrf(body["csrf_token"]))
    assert status == 201
    ws = await site.ws_connect("/ws")
    await ws.send_str(new["key"])
    assert json.loads(await ws.receive_str(timeout=5)) == VALID_KEY
    await ws.close()
    # Taken emails, short passwords and non-emails are refused, and make no account.
    taken = {"error": "An account for new@example.com already exists."}
    assert await post_json(site, "/auth/signup", {"email": "new@example.com",
                                                  "password": "another one"}) == (409, taken)
    status, body = await post_json(site, "/auth/signup", {"email": "NEW@example.com",
                                                          "password": "another one"})
    assert status == 409 and body["error"].endswith("already exists.")
    assert await post_json(site, "/auth/signup", {"email": "x@example.com",
                                                  "password": "short"}) == (
        422, {"error": "The password must have at least 8 characters."})
    assert await post_json(site, "/auth/signup", {"email": "not-an-email",
                                                  "password": "long enough"}) == (
        422, {"error": "'not-an-email' is not an email address."})
    async with site.post("/auth/signup", data={"email": "f@example.com",
                                               "password": "long enough"}) as r:
        assert r.status == 415
    assert (await login(client, "x@example.com", "short"))[:2] == (401, WRONG)
    assert (await login(client, "new@example.com", "another one"))[:2] == (401, WRONG)
    assert (await login(client, "new@example.com", "long enough"))[0] == 200


# --- the page ----------------------------------------------------------------------------

async def test_page_is_served_with_a_strict_content_security_policy(client):
    async with client.get("/") as r:
        assert r.status == 200 and r.content_type == "text/html"
        policy = r.headers["Content-Security-Policy"]
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        page = await r.text()
    assert "/static/app.js" in page and "http://" not in page and "https://" not in page
    async with client.get("/static/app.js") as r:
        assert r.status == 200


async def test_a_disabled_dashboard_leaves_the_api_on(aiohttp_client, prepared, tmp_path):
    off = await aiohttp_client(_site_app(prepared, tmp_path, enabled=False))
    async with off.get("/") as r:
        assert r.status == 404
    assert (await login(off))[:2] == (404, {"error": "No such API route."})
    assert (await get_json(off, "/api/keys", headers=bearer(prepared.key)))[0] == 200
