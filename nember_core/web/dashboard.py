"""The dashboard's routes: the page and its assets at ``/``, and login at ``/auth/``.

Everything else the page does goes through the REST API with the session cookie.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import orjson
import structlog
from aiohttp import web

from . import sessions
from .context import CONTEXT, services
from .errors import ApiError

log = structlog.get_logger("nember.dashboard")

STATIC = Path(__file__).parent / "static"


@attrs.frozen
class Credentials:
    email: str
    password: str


async def _credentials(request: web.Request) -> Credentials:
    # JSON only: a cross-site HTML form can't send it, so login needs no CSRF token of its own.
    if request.content_type != "application/json":
        raise ApiError(415, "Send the email and password as JSON.")
    origin = request.headers.get("Origin")
    if origin and origin.split("://", 1)[-1] != request.host:
        raise ApiError(403, "Cross-site login refused.")
    try:
        body = orjson.loads(await request.read())  # nesting too deep is an error, not a crash
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict) or not all(
        isinstance(body.get(k), str) for k in ("email", "password")
    ):
        raise ApiError(400, "Send {\"email\": ..., \"password\": ...}.")
    return Credentials(body["email"].strip(), body["password"])


async def _start_session(request: web.Request, account, status: int = 200) -> web.Response:
    accounts = services(request).accounts
    token = await accounts.start_session(account)
    response = web.json_response(
        {"email": account.email, "csrf_token": sessions.csrf_token(token)}, status=status
    )
    sessions.set_cookie(response, request, token, accounts.session_hours)
    return response


async def login(request: web.Request) -> web.Response:
    given = await _credentials(request)
    account = await services(request).accounts.log_in(
        given.email, given.password, request.remote or ""
    )
    if account is None:
        log.info("login.failed", remote=request.remote)
        raise ApiError(401, "Wrong email or password.")
    log.info("login", account_id=account.id, remote=request.remote)
    return await _start_session(request, account)


async def signup(request: web.Request) -> web.Response:
    if not request.app[CONTEXT].config.dashboard.allow_signup:
        raise ApiError(403, "Sign-up is closed on this server; ask its operator for an account.")
    given = await _credentials(request)
    account = await services(request).accounts.create(given.email, given.password)
    log.info("signup", account_id=account.id, remote=request.remote)
    return await _start_session(request, account, status=201)


async def session(request: web.Request) -> web.Response:
    """Who is logged in (and the CSRF token the page needs), or 401."""
    token = request.cookies.get(sessions.COOKIE)
    account = await services(request).accounts.session(token) if token else None
    if not token or not account:
        return web.json_response(
            {"error": "Not logged in.",
             "allow_signup": request.app[CONTEXT].config.dashboard.allow_signup},
            status=401,
        )
    return web.json_response({"email": account.email, "csrf_token": sessions.csrf_token(token)})


async def logout(request: web.Request) -> web.Response:
    token = request.cookies.get(sessions.COOKIE)
    if token:
        if not sessions.csrf_ok(request, token):
            raise ApiError(403, "Missing or wrong CSRF token (header X-CSRF-Token).")
        await services(request).accounts.end_session(token)
    response = web.json_response({"logged_out": True})
    sessions.clear_cookie(response)
    return response


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers=SECURITY_HEADERS)


SECURITY_HEADERS = {
    # Everything is served from here; nothing is loaded from elsewhere, nothing may frame us.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def add_routes(app: web.Application) -> None:
    app.router.add_post("/auth/login", login)
    app.router.add_post("/auth/signup", signup)
    app.router.add_post("/auth/logout", logout)
    app.router.add_get("/auth/session", session)
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC, append_version=False)
