"""Who is calling: an API key (``Authorization: Bearer <key>``) or a dashboard session."""

from __future__ import annotations

import attrs
import orjson
from aiohttp import web

from nember_core import rules

from . import sessions
from .context import services
from .errors import ApiError


@attrs.frozen
class Caller:
    account_id: str
    scope: str  # what it may do: an API key's scope; a dashboard login may do everything
    key_id: str | None = None  # when authenticated by an API key
    session: str | None = attrs.field(default=None, repr=False)  # when by the dashboard


async def caller(request: web.Request) -> Caller:
    """Who calls, allowed this route: reading (GET) needs the scope ``read``, anything else
    ``manage``; a ``predict`` key opens /ws and nothing here (PROTOCOL.md §3)."""
    found = await _identify(request)
    needed = "read" if request.method in sessions.SAFE_METHODS else "manage"
    if not rules.scope_allows(found.scope, needed):
        raise ApiError(403, f"This API key's scope is {found.scope!r}; this route needs "
                            f"{needed!r}.")
    return found


async def _identify(request: web.Request) -> Caller:
    service = services(request)
    header = request.headers.get("Authorization")
    if header is None and sessions.COOKIE in request.cookies:
        token = request.cookies[sessions.COOKIE]
        account = await service.accounts.session(token)
        if account is None:
            raise ApiError(401, "Your session has expired; log in again.")
        if request.method not in sessions.SAFE_METHODS and not sessions.csrf_ok(request, token):
            raise ApiError(403, "Missing or wrong CSRF token (header X-CSRF-Token).")
        return Caller(account_id=account.id, scope="manage", session=token)
    scheme, _, secret = (header or "").partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise ApiError(401, "Authenticate with the header 'Authorization: Bearer <API key>'.")
    key = await service.keys.authenticate(secret)
    if key is None:
        raise ApiError(401, "Invalid API key.")
    return Caller(account_id=key.account_id, scope=key.scope, key_id=key.id)


async def read_json(request: web.Request) -> dict:
    try:
        body = orjson.loads(await request.read())  # nesting too deep is an error, not a crash
    except orjson.JSONDecodeError:
        raise ApiError(400, "The request body must be a JSON object.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return body
