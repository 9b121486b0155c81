"""Who is calling: the account of the API key in ``Authorization: Bearer <key>``."""

from __future__ import annotations

from aiohttp import web

from .. import credentials
from ..records import ApiKey
from .context import API
from .errors import ApiError


async def caller(request: web.Request) -> ApiKey:
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise ApiError(401, "Authenticate with the header 'Authorization: Bearer <API key>'.")
    key = None
    if len(secret) <= credentials.MAX_KEY_LENGTH:
        key = await request.app[API].services.key_store.authenticate(secret)
    if key is None:
        raise ApiError(401, "Invalid API key.")
    return key


async def read_json(request: web.Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "The request body must be a JSON object.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return body
