"""What a postgres section of the config says, and the one-line errors of this plugin.

Nothing here needs asyncpg: the plugin loads (and ``nember plugins`` lists it) without the
``postgres`` extra; the error saying how to install it comes when a store is created.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs

from nember_core.plugin_api import NemberError

SCHEMES = ("postgresql", "postgres")


class PostgresStoreError(NemberError):
    """A postgres store cannot start (no asyncpg, no database, an outdated schema)."""


def redact(dsn: str) -> str:
    """The DSN without its password (in the netloc or the query): safe for logs and errors."""
    try:
        parts = urlsplit(dsn)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostinfo = netloc.rpartition("@")
            user, colon, _ = userinfo.partition(":")
            netloc = f"{user}{':***' if colon else ''}@{hostinfo}"
        query = urlencode([(k, "***" if k == "password" else v)
                           for k, v in parse_qsl(parts.query, keep_blank_values=True)],
                          safe="*")
        return urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:
        return "<an unreadable DSN>"


def _check_dsn(instance, attribute, value: str) -> None:
    try:
        parts = urlsplit(value)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in SCHEMES:
        raise ValueError(f"dsn: expected a postgresql:// URL, got {redact(value)!r}")


def _check_pool_size(instance, attribute, value: int) -> None:
    if value < 1:
        raise ValueError(f"pool_size: expected an integer >= 1, got {value}")


def _check_timeout(instance, attribute, value: float) -> None:
    if not value > 0:
        raise ValueError(f"timeout: expected a number of seconds > 0, got {value}")


@attrs.frozen
class PostgresOptions:
    dsn: str = attrs.field(validator=_check_dsn, metadata={
        "doc": "postgresql://USER@HOST:PORT/DATABASE; keep the password in PGPASSWORD or "
               "~/.pgpass rather than here"})
    pool_size: int = attrs.field(default=5, validator=_check_pool_size, metadata={
        "doc": "connections at most; the roles of a process naming the same dsn (and "
               "pool_size and timeout) share one pool"})
    timeout: float = attrs.field(default=5.0, validator=_check_timeout, metadata={
        "doc": "seconds each call may take (connecting, waiting for a connection, a "
               "statement), then it fails instead of hanging"})
    migrate: bool = attrs.field(default=True, metadata={
        "doc": "create or upgrade the schema at start; false: refuse to start on an older "
               "schema (run `nember db upgrade`)"})
