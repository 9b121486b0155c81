"""Accounts, API keys, dashboard sessions and login attempts in PostgreSQL, for every node.

Secrets are stored only as hashes: API keys and session tokens as SHA-256, passwords through
scrypt (run in a thread: it is slow on purpose). Expiry and login windows use the database's
clock, the one clock every node shares.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterable, Mapping
from datetime import timedelta

import asyncpg

from nember_core.plugin_api import (
    VISIBLE_PREFIX_LENGTH,
    Account,
    AlreadyExists,
    ApiKey,
    NewApiKey,
    NotFound,
    StoreUnavailable,
    Together,
    check_password,
    hash_password,
    key_hash,
    new_api_key,
    new_id,
    utcnow,
)

from .db import Database
from .migrations import SchemaState, SchemaStore

COMPONENT = "keys"
MIGRATIONS = [
    # 1
    """
    CREATE TABLE nember_accounts (
        id text PRIMARY KEY,
        email text NOT NULL,
        password_hash text NOT NULL,
        created_at timestamptz NOT NULL
    );
    -- One account per email, whatever its case (as the SQLite store's COLLATE NOCASE).
    CREATE UNIQUE INDEX nember_accounts_email ON nember_accounts (lower(email));
    CREATE TABLE nember_api_keys (
        id text PRIMARY KEY,
        account_id text NOT NULL REFERENCES nember_accounts (id),
        name text NOT NULL,
        prefix text NOT NULL,
        key_hash text NOT NULL UNIQUE,
        scope text NOT NULL,
        created_at timestamptz NOT NULL,
        revoked_at timestamptz
    );
    CREATE INDEX nember_api_keys_account ON nember_api_keys (account_id, created_at);
    CREATE TABLE nember_sessions (
        token_hash text PRIMARY KEY,
        account_id text NOT NULL REFERENCES nember_accounts (id),
        created_at timestamptz NOT NULL,
        expires_at timestamptz NOT NULL
    );
    CREATE INDEX nember_sessions_expires ON nember_sessions (expires_at);
    CREATE TABLE nember_login_attempts (
        attempt text NOT NULL,
        subject text NOT NULL,
        at timestamptz NOT NULL
    );
    CREATE INDEX nember_login_attempts_subject ON nember_login_attempts (subject, at);
    CREATE INDEX nember_login_attempts_attempt ON nember_login_attempts (attempt);
    CREATE INDEX nember_login_attempts_at ON nember_login_attempts (at);
    """,
]

# pg_advisory_xact_lock(LOGIN_LOCKS, hashtext(subject)): the two-key lock space, apart from
# the schema lock's. Two subjects that share a hash only wait for each other.
LOGIN_LOCKS = 0x6E6D6272
# Expired rows deleted per write, skipping rows another transaction holds: clean-up never
# waits for, nor deadlocks with, another node's.
PURGE_BATCH = 1000

_KEY_COLUMNS = "id, account_id, name, prefix, created_at, revoked_at, scope"


def _outcome_read(done: asyncio.Future) -> None:
    """Marks a future's error as seen: asyncio would log one that nobody retrieved (a caller
    that gave up on its look-up, timed out or cancelled)."""
    if not done.cancelled():
        done.exception()


def _key(row: asyncpg.Record) -> ApiKey:
    return ApiKey(id=row["id"], account_id=row["account_id"], name=row["name"],
                  prefix=row["prefix"], created_at=row["created_at"],
                  revoked_at=row["revoked_at"], scope=row["scope"])


def _account(row: asyncpg.Record) -> Account:
    return Account(id=row["id"], email=row["email"], created_at=row["created_at"])


async def purge(conn: asyncpg.Connection, table: str, key: str, condition: str,
                *args) -> None:
    """Delete up to PURGE_BATCH rows of ``table`` matching ``condition``, skipping locked
    ones (inside the caller's transaction)."""
    await conn.execute(
        f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} WHERE {condition} "
        f"LIMIT {PURGE_BATCH} FOR UPDATE SKIP LOCKED)", *args)


class PostgresKeyStore(SchemaStore, component=COMPONENT, migrations=MIGRATIONS):
    def __init__(self, db: Database, schema: SchemaState):
        super().__init__(db, schema)
        self._look_up = Together(self._look_up_now)  # accepts that come together

    async def create_account(self, email: str, password: str) -> Account:
        email = email.strip()
        password_hash = await asyncio.to_thread(hash_password, password)
        account = Account(id=new_id("acct"), email=email, created_at=utcnow())
        try:
            await self._db.execute(
                "INSERT INTO nember_accounts (id, email, password_hash, created_at) "
                "VALUES ($1, $2, $3, $4)",
                account.id, email, password_hash, account.created_at)
        except asyncpg.UniqueViolationError:
            raise AlreadyExists(f"an account for {email} already exists") from None
        return account

    async def account_by_email(self, email: str) -> Account | None:
        row = await self._db.fetchrow(
            "SELECT id, email, created_at FROM nember_accounts WHERE lower(email) = lower($1)",
            email.strip())
        return _account(row) if row else None

    async def check_password(self, email: str, password: str) -> Account | None:
        row = await self._db.fetchrow(
            "SELECT id, email, created_at, password_hash FROM nember_accounts "
            "WHERE lower(email) = lower($1)", email.strip())
        if row is None:
            return None
        ok = await asyncio.to_thread(check_password, password, row["password_hash"])
        return _account(row) if ok else None

    async def list_accounts(self) -> list[Account]:
        rows = await self._db.fetch(
            "SELECT id, email, created_at FROM nember_accounts ORDER BY created_at, id")
        return [_account(row) for row in rows]

    async def set_password(self, account_id: str, password: str) -> None:
        password_hash = await asyncio.to_thread(hash_password, password)
        status = await self._db.execute(
            "UPDATE nember_accounts SET password_hash = $2 WHERE id = $1",
            account_id, password_hash)
        if status == "UPDATE 0":
            raise NotFound(f"no account with id {account_id}")

    async def delete_sessions(self, account_id: str) -> int:
        async with self._db.transaction() as conn:
            ended = await conn.fetchval(
                "SELECT count(*) FROM nember_sessions WHERE account_id = $1 "
                "AND expires_at > now()", account_id)
            await conn.execute("DELETE FROM nember_sessions WHERE account_id = $1", account_id)
        return ended

    async def create_key(self, account_id: str, name: str, scope: str) -> NewApiKey:
        secret = new_api_key()
        key = ApiKey(id=new_id("key"), account_id=account_id, name=name,
                     prefix=secret[:VISIBLE_PREFIX_LENGTH], created_at=utcnow(), scope=scope)
        await self._db.execute(
            "INSERT INTO nember_api_keys (id, account_id, name, prefix, key_hash, scope, "
            "created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            key.id, account_id, name, key.prefix, key_hash(secret), scope, key.created_at)
        return NewApiKey(key=key, secret=secret)

    async def list_keys(self, account_id: str) -> list[ApiKey]:
        rows = await self._db.fetch(
            f"SELECT {_KEY_COLUMNS} FROM nember_api_keys WHERE account_id = $1 "
            "ORDER BY created_at, id", account_id)
        return [_key(row) for row in rows]

    async def find_key(self, id_or_secret: str) -> ApiKey | None:
        row = await self._db.fetchrow(
            f"SELECT {_KEY_COLUMNS} FROM nember_api_keys WHERE id = $1 OR key_hash = $2 "
            "LIMIT 1", id_or_secret, key_hash(id_or_secret))
        return _key(row) if row else None

    async def authenticate(self, secret: str) -> ApiKey | None:
        # A caller that joins while a batch runs waits for it, then for its own: bounded by
        # the store's timeout all the same (the batch itself runs on, for its other callers).
        looked_up = self._look_up.submit(key_hash(secret))
        looked_up.add_done_callback(_outcome_read)  # its caller may have given up on it
        try:
            return await asyncio.wait_for(asyncio.shield(looked_up), self._db.timeout)
        except asyncio.TimeoutError:
            raise StoreUnavailable(f"postgres: no key look-up within {self._db.timeout:g} s "
                                   "(timeout)") from None

    async def _look_up_now(self, hashes: list[str]) -> list[ApiKey | None]:
        """A storm's keys in one query (a fleet of bots shares a few keys)."""
        rows = await self._db.fetch(
            f"SELECT {_KEY_COLUMNS}, key_hash FROM nember_api_keys "
            "WHERE key_hash = ANY($1::text[]) AND revoked_at IS NULL", list(set(hashes)))
        found = {row["key_hash"]: _key(row) for row in rows}
        return [found.get(hashed) for hashed in hashes]

    async def revoke_key(self, key_id: str) -> ApiKey:
        # One statement: revoked once (the first time stays), and the key as it is now.
        row = await self._db.fetchrow(
            "UPDATE nember_api_keys SET revoked_at = coalesce(revoked_at, $2) WHERE id = $1 "
            f"RETURNING {_KEY_COLUMNS}", key_id, utcnow())
        if row is None:
            raise NotFound(f"no API key with id {key_id}")
        return _key(row)

    async def create_session(self, account_id: str, lifetime_seconds: float) -> str:
        token = secrets.token_urlsafe(32)
        async with self._db.transaction() as conn:
            await purge(conn, "nember_sessions", "token_hash", "expires_at < now()")
            await conn.execute(
                "INSERT INTO nember_sessions (token_hash, account_id, created_at, expires_at) "
                "VALUES ($1, $2, now(), now() + make_interval(secs => $3))",
                key_hash(token), account_id, float(lifetime_seconds))
        return token

    async def session_account(self, token: str) -> Account | None:
        row = await self._db.fetchrow(
            "SELECT a.id, a.email, a.created_at FROM nember_sessions s "
            "JOIN nember_accounts a ON a.id = s.account_id "
            "WHERE s.token_hash = $1 AND s.expires_at > now()", key_hash(token))
        return _account(row) if row else None

    async def delete_session(self, token: str) -> None:
        await self._db.execute(
            "DELETE FROM nember_sessions WHERE token_hash = $1", key_hash(token))

    async def revoked_among(self, key_ids: Iterable[str]) -> set[str]:
        ids = list(set(key_ids))
        if not ids:
            return set()
        rows = await self._db.fetch(
            "SELECT id FROM nember_api_keys WHERE revoked_at IS NOT NULL "
            "AND id = ANY($1::text[])", ids)
        return {row["id"] for row in rows}

    async def count_login_attempt(
        self, limits: Mapping[str, int], window_seconds: float
    ) -> str | None:
        attempt = new_id("login")
        subjects = sorted(limits)
        async with self._db.transaction() as conn:
            # Each subject's count and insert happen under its lock, which every node's
            # attempt on that subject waits for; taken in one order, so two attempts never
            # hold one each and wait for the other.
            for subject in subjects:
                await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))",
                                   LOGIN_LOCKS, subject)
            now = await conn.fetchval("SELECT clock_timestamp()")  # after the wait
            since = now - timedelta(seconds=window_seconds)
            await purge(conn, "nember_login_attempts", "ctid", "at < $1", since)
            counts = dict(await conn.fetch(
                "SELECT subject, count(*) FROM nember_login_attempts "
                "WHERE subject = ANY($1::text[]) AND at >= $2 GROUP BY subject",
                subjects, since))
            if any(counts.get(subject, 0) >= limit for subject, limit in limits.items()):
                return None
            await conn.execute(
                "INSERT INTO nember_login_attempts (attempt, subject, at) "
                "SELECT $1, subject, $3 FROM unnest($2::text[]) AS subject",
                attempt, subjects, now)
        return attempt

    async def forget_login_attempt(self, attempt_id: str) -> None:
        await self._db.execute(
            "DELETE FROM nember_login_attempts WHERE attempt = $1", attempt_id)
