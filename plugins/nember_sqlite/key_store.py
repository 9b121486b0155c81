"""Accounts and API keys in SQLite. Keys are stored as SHA-256 hashes, passwords via scrypt."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from pathlib import Path

from nember_core.plugin_api import (
    VISIBLE_PREFIX_LENGTH,
    Account,
    AlreadyExists,
    ApiKey,
    NewApiKey,
    NotFound,
    Together,
    check_password,
    hash_password,
    key_hash,
    new_api_key,
    new_id,
    utcnow,
)

from .db import Database, chunks, marks

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE COLLATE NOCASE,
    password_hash TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE INDEX IF NOT EXISTS api_keys_account ON api_keys(account_id);
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
"""

MIGRATIONS = [
    # 1: key scopes. Keys made before them keep every right they had.
    "ALTER TABLE api_keys ADD COLUMN scope TEXT NOT NULL DEFAULT 'manage'",
    # 2: login attempts, counted here so that every server process sees every one.
    """CREATE TABLE login_attempts (
        attempt TEXT NOT NULL,
        subject TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX login_attempts_subject ON login_attempts(subject, at);
    CREATE INDEX login_attempts_at ON login_attempts(at)""",
]

_KEY_COLUMNS = "id, account_id, name, prefix, created_at, revoked_at, scope"


def _time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _key(row) -> ApiKey:
    return ApiKey(
        id=row[0],
        account_id=row[1],
        name=row[2],
        prefix=row[3],
        created_at=_time(row[4]),
        revoked_at=_time(row[5]),
        scope=row[6],
    )


class SqliteKeyStore:
    def __init__(self, db: Database):
        self._db = db
        self._look_up = Together(self._look_up_now)  # accepts that come together

    @classmethod
    async def open(cls, path: Path) -> SqliteKeyStore:
        return cls(await Database.open(path, SCHEMA, migrations=MIGRATIONS))

    async def ping(self) -> None:
        await self._db.ping()

    async def close(self) -> None:
        await self._db.close()

    async def create_account(self, email: str, password: str) -> Account:
        email = email.strip()
        # scrypt is deliberately slow: keep it off the event loop.
        password_hash = await asyncio.to_thread(hash_password, password)
        account = Account(id=new_id("acct"), email=email, created_at=utcnow())
        try:
            await self._db.write(
                "INSERT INTO accounts (id, email, password_hash, created_at) VALUES (?, ?, ?, ?)",
                (account.id, email, password_hash, account.created_at.isoformat()),
            )
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"an account for {email} already exists") from None
        return account

    async def account_by_email(self, email: str) -> Account | None:
        rows = await self._db.read(
            "SELECT id, email, created_at FROM accounts WHERE email = ?", (email.strip(),)
        )
        return Account(rows[0][0], rows[0][1], _time(rows[0][2])) if rows else None

    async def check_password(self, email: str, password: str) -> Account | None:
        rows = await self._db.read(
            "SELECT id, email, created_at, password_hash FROM accounts WHERE email = ?",
            (email.strip(),),
        )
        if not rows:
            return None
        (row,) = rows
        ok = await asyncio.to_thread(check_password, password, row[3])
        return Account(row[0], row[1], _time(row[2])) if ok else None

    async def list_accounts(self) -> list[Account]:
        rows = await self._db.read(
            "SELECT id, email, created_at FROM accounts ORDER BY created_at, id")
        return [Account(row[0], row[1], _time(row[2])) for row in rows]

    async def set_password(self, account_id: str, password: str) -> None:
        password_hash = await asyncio.to_thread(hash_password, password)
        changed = await self._db.write(
            "UPDATE accounts SET password_hash = ? WHERE id = ? RETURNING id",
            (password_hash, account_id))
        if not changed:
            raise NotFound(f"no account with id {account_id}")

    async def delete_sessions(self, account_id: str) -> int:
        def delete(db: sqlite3.Connection) -> int:
            ended = db.execute("DELETE FROM sessions WHERE account_id = ? AND expires_at > ?",
                               (account_id, utcnow().isoformat())).rowcount
            db.execute("DELETE FROM sessions WHERE account_id = ?", (account_id,))
            return ended
        return await self._db.transaction(delete)

    async def create_key(self, account_id: str, name: str, scope: str) -> NewApiKey:
        secret = new_api_key()
        key = ApiKey(
            id=new_id("key"),
            account_id=account_id,
            name=name,
            prefix=secret[:VISIBLE_PREFIX_LENGTH],
            created_at=utcnow(),
            scope=scope,
        )
        await self._db.write(
            "INSERT INTO api_keys (id, account_id, name, prefix, key_hash, created_at, scope) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (key.id, account_id, name, key.prefix, key_hash(secret), key.created_at.isoformat(),
             scope),
        )
        return NewApiKey(key=key, secret=secret)

    async def list_keys(self, account_id: str) -> list[ApiKey]:
        rows = await self._db.read(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE account_id = ? ORDER BY created_at",
            (account_id,),
        )
        return [_key(row) for row in rows]

    async def find_key(self, id_or_secret: str) -> ApiKey | None:
        rows = await self._db.read(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = ? OR key_hash = ?",
            (id_or_secret, key_hash(id_or_secret)),
        )
        return _key(rows[0]) if rows else None

    async def authenticate(self, secret: str) -> ApiKey | None:
        return await self._look_up(key_hash(secret))

    async def _look_up_now(self, hashes: list[str]) -> list[ApiKey | None]:
        """A storm's keys in one query (a fleet of bots shares a few keys)."""
        found: dict[str, ApiKey] = {}
        for chunk in chunks(list(set(hashes))):
            rows = await self._db.read(
                f"SELECT {_KEY_COLUMNS}, key_hash FROM api_keys "
                f"WHERE key_hash IN ({marks(len(chunk))}) AND revoked_at IS NULL",
                chunk,
            )
            found.update((row[-1], _key(row)) for row in rows)
        return [found.get(hashed) for hashed in hashes]

    async def revoke_key(self, key_id: str) -> ApiKey:
        await self._db.write(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (utcnow().isoformat(), key_id),
        )
        key = await self.find_key(key_id)
        if key is None:
            raise NotFound(f"no API key with id {key_id}")
        return key

    async def create_session(self, account_id: str, lifetime_seconds: float) -> str:
        token = secrets.token_urlsafe(32)
        now = utcnow()
        row = (key_hash(token), account_id, now.isoformat(),
               (now + timedelta(seconds=lifetime_seconds)).isoformat())

        def create(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM sessions WHERE expires_at < ?", (now.isoformat(),))
            db.execute("INSERT INTO sessions VALUES (?, ?, ?, ?)", row)
        await self._db.transaction(create)
        return token

    async def session_account(self, token: str) -> Account | None:
        rows = await self._db.read(
            "SELECT a.id, a.email, a.created_at FROM sessions s JOIN accounts a "
            "ON a.id = s.account_id WHERE s.token_hash = ? AND s.expires_at > ?",
            (key_hash(token), utcnow().isoformat()),
        )
        return Account(rows[0][0], rows[0][1], _time(rows[0][2])) if rows else None

    async def delete_session(self, token: str) -> None:
        await self._db.write("DELETE FROM sessions WHERE token_hash = ?", (key_hash(token),))

    async def revoked_among(self, key_ids: Iterable[str]) -> set[str]:
        ids = list(set(key_ids))
        revoked: set[str] = set()
        for start in range(0, len(ids), 500):  # stay under SQLite's parameter limit
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = await self._db.read(
                f"SELECT id FROM api_keys WHERE revoked_at IS NOT NULL AND id IN ({marks})",
                chunk,
            )
            revoked.update(row[0] for row in rows)
        return revoked

    async def count_login_attempt(
        self, limits: Mapping[str, int], window_seconds: float
    ) -> str | None:
        now = time.time()
        attempt = new_id("login")
        # One write transaction: the counts and the insert see no other attempt in between.
        def count(db: sqlite3.Connection) -> str | None:
            db.execute("DELETE FROM login_attempts WHERE at < ?", (now - window_seconds,))
            for subject, limit in limits.items():
                (counted,) = db.execute(
                    "SELECT COUNT(*) FROM login_attempts WHERE subject = ?", (subject,)
                ).fetchone()
                if counted >= limit:
                    return None
            db.executemany(
                "INSERT INTO login_attempts (attempt, subject, at) VALUES (?, ?, ?)",
                [(attempt, subject, now) for subject in limits],
            )
            return attempt
        return await self._db.transaction(count)

    async def forget_login_attempt(self, attempt_id: str) -> None:
        await self._db.write("DELETE FROM login_attempts WHERE attempt = ?", (attempt_id,))
