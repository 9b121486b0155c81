"""Dashboard sessions over HTTP: login, sign-up, CSRF, rate limiting, cookies, logout."""

from __future__ import annotations

import aiohttp
import pytest
from yarl import URL

from tests.harness import PASSWORD, write_config

pytestmark = pytest.mark.e2e  # real nember processes: `pytest -m e2e`


@pytest.fixture(scope="module")
def site(trained, tmp_path_factory, module_servers):
    folder = tmp_path_factory.mktemp("site")
    config = write_config(folder, data_dir=trained.data_dir,
                          dashboard={"allow_signup": True, "login_attempts_per_minute": 3})
    server = module_servers(config)
    return f"http://127.0.0.1:{server.port}"


def browser_like() -> aiohttp.ClientSession:
    # aiohttp keeps no cookies for bare IP hosts unless told to; a browser does.
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def login(session, base, email="trader@example.com", password=PASSWORD):
    async with session.post(f"{base}/auth/login", json={"email": email,
                                                         "password": password}) as r:
        return r.status, await r.json(), r.headers.getall("Set-Cookie", [])


async def test_login_sets_a_strict_http_only_cookie_and_gives_a_csrf_token(site):
    async with browser_like() as session:
        status, body, cookies = await login(session, site)
        assert status == 200 and body["email"] == "trader@example.com"
        assert len(body["csrf_token"]) == 64
        cookie = cookies[0]
        assert cookie.startswith("nember_session=")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        assert "Secure" not in cookie  # plain http here; the TLS test checks Secure
        async with session.get(f"{site}/api/keys") as r:
            assert r.status == 200  # the cookie authenticates reads
        async with session.post(f"{site}/api/keys", json={"name": "x"}) as r:
            assert r.status == 403
            assert (await r.json())["error"] == "Missing or wrong CSRF token (header X-CSRF-Token)."
        async with session.post(f"{site}/api/keys", json={"name": "x"},
                                headers={"X-CSRF-Token": "0" * 64}) as r:
            assert r.status == 403
        async with session.post(f"{site}/api/keys", json={"name": "from-session"},
                                headers={"X-CSRF-Token": body["csrf_token"]}) as r:
            assert r.status == 201
        async with session.post(f"{site}/auth/logout",
                                headers={"X-CSRF-Token": body["csrf_token"]}) as r:
            assert r.status == 200
        async with session.get(f"{site}/api/keys") as r:
            assert r.status == 401


async def test_stolen_cookie_after_logout_is_useless(site):
    async with browser_like() as session:
        _, body, _ = await login(session, site)
        token = session.cookie_jar.filter_cookies(URL(site))["nember_session"].value
        async with session.post(f"{site}/auth/logout",
                                headers={"X-CSRF-Token": body["csrf_token"]}):
            pass
    async with aiohttp.ClientSession(cookies={"nember_session": token}) as replay:
        async with replay.get(f"{site}/api/keys") as r:
            assert r.status == 401
            assert (await r.json())["error"] == "Your session has expired; log in again."


async def test_wrong_password_then_rate_limited(site):
    async with browser_like() as session:
        for _ in range(3):
            status, body, _ = await login(session, site, "limited@example.com", "wrong-password")
            assert (status, body) == (401, {"error": "Wrong email or password."})
        status, body, _ = await login(session, site, "limited@example.com", "wrong-password")
        assert status == 429 and "Too many failed logins" in body["error"]


async def test_login_needs_json_and_same_origin(site):
    async with browser_like() as session:
        async with session.post(f"{site}/auth/login",
                                data={"email": "a", "password": "b"}) as r:
            assert r.status == 415
        async with session.post(f"{site}/auth/login", json={"email": "a", "password": "b"},
                                headers={"Origin": "https://evil.example"}) as r:
            assert r.status == 403


async def test_signup_when_allowed(site):
    async with browser_like() as session:
        async with session.post(f"{site}/auth/signup",
                                json={"email": "new@example.com", "password": "long enough"}) as r:
            assert r.status == 201 and (await r.json())["email"] == "new@example.com"
        async with session.get(f"{site}/api/keys") as r:
            assert r.status == 200 and (await r.json())["items"] == []
        async with session.post(f"{site}/auth/signup",
                                json={"email": "new@example.com", "password": "long enough"}) as r:
            assert r.status == 409
        async with session.post(f"{site}/auth/signup",
                                json={"email": "x@example.com", "password": "short"}) as r:
            assert r.status == 422 and "at least 8 characters" in (await r.json())["error"]


async def test_signup_is_closed_by_default(server):
    async with browser_like() as session:
        async with session.post(f"http://127.0.0.1:{server.port}/auth/signup",
                                json={"email": "n@example.com", "password": "long enough"}) as r:
            assert r.status == 403
        async with session.get(f"http://127.0.0.1:{server.port}/auth/session") as r:
            assert r.status == 401 and (await r.json())["allow_signup"] is False


async def test_page_is_served_with_a_strict_content_security_policy(site):
    async with browser_like() as session:
        async with session.get(f"{site}/") as r:
            assert r.status == 200
            assert "default-src 'self'" in r.headers["Content-Security-Policy"]
            assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
            page = await r.text()
        assert "/static/app.js" in page and "http://" not in page and "https://" not in page
        async with session.get(f"{site}/static/app.js") as r:
            assert r.status == 200
