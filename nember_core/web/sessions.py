"""Dashboard sessions: an HttpOnly cookie and a CSRF token derived from it.

The session token is random and stored hashed by the key store. The CSRF token is an HMAC of
the session token, so it needs no storage; every state-changing request authenticated by the
cookie must send it back in the ``X-CSRF-Token`` header (a cross-site page can't read it).
"""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web

COOKIE = "nember_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def csrf_token(session_token: str) -> str:
    return hmac.new(session_token.encode(), b"nember-csrf", hashlib.sha256).hexdigest()


def csrf_ok(request: web.Request, session_token: str) -> bool:
    sent = request.headers.get(CSRF_HEADER, "")
    return hmac.compare_digest(sent.encode(), csrf_token(session_token).encode())


def set_cookie(response: web.StreamResponse, request: web.Request, token: str,
               hours: float) -> None:
    response.set_cookie(
        COOKIE, token, max_age=int(hours * 3600), httponly=True, samesite="Strict",
        secure=request.secure, path="/",
    )


def clear_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE, path="/")
