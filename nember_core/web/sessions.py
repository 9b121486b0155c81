"""Dashboard sessions: an HttpOnly cookie, a CSRF token derived from it, a login limiter.

The session token is random and stored hashed by the key store. The CSRF token is an HMAC of
the session token, so it needs no storage; every state-changing request authenticated by the
cookie must send it back in the ``X-CSRF-Token`` header (a cross-site page can't read it).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import deque

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


ADDRESS_FACTOR = 10  # an address may fail this many times an email's limit


class LoginLimiter:
    """At most ``limit`` failed logins a minute for an email, and ten times that from one
    address: enough to stop a guesser or a spray, without one user's typos locking out every
    account behind the same address.

    An attempt counts as failed from the moment it starts (``attempt``) until it succeeds:
    checking a password takes a while, and attempts made meanwhile must see it counted, or
    hundreds sent at once would all be checked.
    """

    def __init__(self, limit: int, window: float = 60.0):
        self.limit = limit
        self.window = window
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, who: str) -> deque[float]:
        stamps = self._failures.setdefault(who, deque())
        cutoff = time.monotonic() - self.window
        while stamps and stamps[0] < cutoff:
            stamps.popleft()
        return stamps

    def attempt(self, email: str, address: str) -> float | None:
        """Count an attempt; its stamp for ``succeeded``, or ``None``: refuse it (429)."""
        if (len(self._recent(f"email:{email.lower()}")) >= self.limit
                or len(self._recent(f"addr:{address}")) >= self.limit * ADDRESS_FACTOR):
            return None
        stamp = time.monotonic()
        self._recent(f"email:{email.lower()}").append(stamp)
        self._recent(f"addr:{address}").append(stamp)
        if len(self._failures) > 100_000:  # bounded memory under a spray of emails
            self._failures = {k: v for k, v in self._failures.items() if v}
        return stamp

    def succeeded(self, email: str, address: str, stamp: float) -> None:
        """That attempt was no failure (the others stay counted)."""
        for who in (f"email:{email.lower()}", f"addr:{address}"):
            stamps = self._failures.get(who)
            if stamps is not None and stamp in stamps:
                stamps.remove(stamp)
