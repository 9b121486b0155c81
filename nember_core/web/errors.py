"""JSON errors for the API: ``{"error": "..."}`` with the right status, never a traceback.

The service layer's errors are one clause each ("the window must be..."); here they become a
sentence with the status their kind calls for.
"""

from __future__ import annotations

import structlog
from aiohttp import web

from nember_core.errors import (
    AlreadyExists,
    Forbidden,
    InvalidData,
    NemberError,
    NotFound,
    StoreUnavailable,
    TooManyAttempts,
)

log = structlog.get_logger("nember.api")

STATUS = {NotFound: 404, AlreadyExists: 409, InvalidData: 422, Forbidden: 403,
          TooManyAttempts: 429}


class ApiError(Exception):
    """Raise with a status and a message; the middleware turns it into JSON."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status_code = status
        self.message = message


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def sentence(clause: str) -> str:
    clause = clause.strip()
    if not clause:
        return clause
    return clause[0].upper() + clause[1:] + ("" if clause.endswith((".", "?", "!")) else ".")


@web.middleware
async def error_middleware(request: web.Request, handler):
    if not request.path.startswith(("/api/", "/auth/")):
        return await handler(request)
    try:
        return await handler(request)
    except ApiError as exc:
        return error(exc.status_code, exc.message)
    except web.HTTPException as exc:  # aiohttp's own: 404 route, 405 method, 413 body...
        if exc.status_code < 400:
            raise
        message = {
            404: "No such API route.",
            405: f"Method {request.method} is not allowed here.",
            413: "The request body is too large.",
        }.get(exc.status_code, exc.reason)
        response = error(exc.status_code, message)
        if isinstance(exc, web.HTTPMethodNotAllowed):  # which methods are, as HTTP says
            response.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
        return response
    except StoreUnavailable as exc:  # the detail names the store's host: the log only
        log.error("api.store_unavailable", path=request.path, method=request.method,
                  error=str(exc)[:300])
        return error(503, "Service temporarily unavailable, try again later.")
    except NemberError as exc:
        status = next((code for kind, code in STATUS.items() if isinstance(exc, kind)), 400)
        return error(status, sentence(str(exc)))
    except Exception as exc:
        log.error("api.error", path=request.path, method=request.method, error=repr(exc))
        return error(500, "Internal server error.")
